-- Error rows (images that could not be classified), one per image x method.
-- Parameters: run_id (optional DuckDB variable; unset = all runs).
SELECT run_id, dataset, model, shard, image_id, method, status, error, computed_by
FROM errors
WHERE getvariable('run_id') IS NULL OR run_id = getvariable('run_id')
ORDER BY run_id, shard, image_id, method;
