-- All runs, newest first, with the run each one is compared with by default.
-- status is running / completed / failed, or interrupted for a run whose process died.
-- Parameters: none.
SELECT run_id, status, dataset, model, n_images, n_error, shards_computed, shards_reused, shards_total,
       deployment, config, started_at, ended_at, n_ok, previous_run_id, flow_run_id
FROM runs
ORDER BY started_at DESC, run_id;
