-- Failed images per run and status (an image counts once, whatever the number of methods).
-- Parameters: run_id (optional DuckDB variable; unset = all runs).
SELECT run_id, dataset, model, status,
       count(DISTINCT image_id) AS n_images,
       min(error) AS example_error
FROM errors_of(CASE WHEN getvariable('run_id') IS NULL THEN NULL ELSE [CAST(getvariable('run_id') AS VARCHAR)] END)
GROUP BY run_id, dataset, model, status
ORDER BY run_id, n_images DESC, status;
