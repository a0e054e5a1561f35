-- Error rows: images that could not be classified (status <> 'ok'), per run x method.
-- Answers: which images failed, why, in which shard, and which run computed the row.
-- Parameters: none (sql/queries/errors.sql takes run_id; error_counts.sql summarises).
-- An image that failed at sharding has one such row per method.
CREATE OR REPLACE VIEW errors AS
SELECT run_id, deployment, dataset, model, config, shard, image_id, method,
       label, class_name, status, error, computed_by
FROM run_predictions
WHERE status <> 'ok';
