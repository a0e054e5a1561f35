-- All runs, newest first, with the run each one is compared with by default.
-- Parameters: none.
SELECT run_id, deployment, dataset, model, config, status, started_at, ended_at,
       n_images, n_ok, n_error, shards_computed, shards_total, previous_run_id
FROM runs
ORDER BY started_at DESC, run_id;
