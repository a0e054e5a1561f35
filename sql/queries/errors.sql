-- Error rows (images that could not be classified), one per image x method.
-- Parameters: run_id (optional DuckDB variable; unset = all runs).
-- Read through errors_of (the parts' error rows files; see sql/views/33_errors.sql), only the chosen run's.
SELECT run_id, dataset, model, shard, image_id, method, status, error, computed_by
FROM errors_of(CASE WHEN getvariable('run_id') IS NULL THEN NULL ELSE [CAST(getvariable('run_id') AS VARCHAR)] END)
ORDER BY run_id, shard, image_id, method;
