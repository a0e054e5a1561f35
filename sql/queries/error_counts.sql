-- Failed images per run and status (an image counts once, whatever the number of methods).
-- Parameters: run_id (optional DuckDB variable; unset = all runs).
SELECT run_id, dataset, model, status,
       count(DISTINCT image_id) AS n_images,
       min(error) AS example_error
FROM errors
WHERE getvariable('run_id') IS NULL OR run_id = getvariable('run_id')
GROUP BY run_id, dataset, model, status
ORDER BY run_id, n_images DESC, status;
