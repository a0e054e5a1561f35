-- All runs, newest first, with the run each one is compared with by default.
-- status is queued / starting / running / completed / failed, or interrupted for a run whose process died;
-- shards_done / n_images / n_error are counted from the committed parts the run stands for (what
-- abs-eval status prints; see sql/views/21_runs.sql).
-- Parameters: none.
SELECT run_id, status, dataset, model, shards_done, shards_total, n_images, n_error, shards_computed, shards_reused,
       deployment, config, started_at, ended_at, heartbeat_at, n_ok, previous_run_id, flow_run_id
FROM runs
ORDER BY started_at DESC, run_id;
