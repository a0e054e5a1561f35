-- A run's prediction set: one row per image x method that the run's numbers are over.
-- Answers: "which rows does run R stand for?"
-- Parameters: none for the view; run_predictions_of(run_ids) takes a list of run ids
--   (NULL = every run), e.g. FROM run_predictions_of(['<run id>']).
--
-- Why a join and not a filter on predictions.run_id: a resumed run reuses the shards
-- an earlier (crashed) run of the same config committed, and a rerun of an unchanged
-- config reuses all of them. So a COMPLETED run stands for every row of its (dataset,
-- model, config) partition. A run that is still running, failed or was interrupted
-- stands only for what it had: the rows it computed itself plus the shards that were
-- already committed when it started (runs.reused_shards), never for rows that a later
-- run added to the same partition. computed_by names the run that computed each row.
-- correct is false (never NULL) for error rows; status is the row's, run_status the run's.
--
-- Why a table macro under the view: a filter on run_id written over the view (or over a
-- view built on it) reaches the runs side of the join only when DuckDB can push it through
-- every aggregate and join in between, which it cannot for an IN (subquery) or a run pair
-- from another view; then every partition of every run is read and thrown away (17 s over
-- 10M rows in 50 runs). run_predictions_of filters the runs first, so only the chosen runs'
-- partitions are read (DuckDB prunes the other files from the join keys): the views that
-- compare or export a few runs call it with their run ids.
CREATE OR REPLACE MACRO run_predictions_of(run_ids) AS TABLE
SELECT r.run_id,
       r.deployment,
       r.status AS run_status,
       r.started_at AS run_started_at,
       p.dataset,
       p.model,
       p.config,
       p.run_id AS computed_by,
       p.* EXCLUDE (run_id, dataset, model, config),
       coalesce(p.status = 'ok' AND p.pred = p.label, false) AS correct
FROM (SELECT * FROM run_records WHERE run_ids IS NULL OR list_contains(run_ids, run_id)) AS r
JOIN predictions AS p
  ON p.dataset = r.dataset AND p.model = r.model AND p.config = r.config
 AND (r.status = 'completed'
      OR p.run_id = r.run_id
      OR list_contains(coalesce(r.reused_shards, []), p.shard));

CREATE OR REPLACE VIEW run_predictions AS FROM run_predictions_of(NULL);

-- A run's counts: one row per (run, computing run, shard, method, label, pred) group of the run's
-- prediction set, with n rows, n_ok, n_correct (ok and pred = label), n_correct5 (ok and label in
-- top5); computed_by and shard are NULL on rows summed over a whole partition. What the aggregate
-- views read: summed over any grouping, the same counts as over run_predictions_of's rows.
-- Parameters: run_rollups_of(run_ids): a list of run ids (NULL = every run).
--
-- Which files (see prediction_rollups in 10_sources.sql): a completed run stands for its whole
-- partition, so it reads the partition's summed counts (one all-* file) when they cover its parts
-- now; otherwise, and for a run that is not completed (its own parts plus the shards it reused,
-- the same rule as run_predictions_of), the parts' rollups, or the rows of a part without one.
-- The file lists are picked before reading, so DuckDB opens only the chosen files.
CREATE OR REPLACE MACRO run_rollups_of(run_ids) AS TABLE
WITH chosen AS (
    SELECT *,
           'dataset=' || dataset || '/model=' || model || '/config=' || config AS partition,
           'dataset=' || dataset || '/model=' || model || '/config=' || config
               IN (SELECT partition FROM partition_rollup_files) AS summed
    FROM run_records
    WHERE run_ids IS NULL OR list_contains(run_ids, run_id)
),
whole_files AS (
    SELECT file FROM partition_rollup_files
    WHERE partition IN (SELECT partition FROM chosen WHERE status = 'completed')
),
part_files AS (
    SELECT * FROM prediction_part_files
    WHERE partition IN (SELECT partition FROM chosen WHERE status IS DISTINCT FROM 'completed' OR NOT summed)
),
counts AS (
    SELECT dataset, model, config, CAST(NULL AS VARCHAR) AS run_id, CAST(NULL AS INTEGER) AS shard, true AS whole,
           method, label, class_name, pred, pred_name, n, n_ok, n_correct, n_correct5
    FROM read_parquet('${root}/rollups/*/*/*/all-*.parquet',
                      hive_partitioning = true, hive_types_autocast = false, filename = true)
    WHERE filename IN (SELECT file FROM whole_files)
    UNION ALL
    SELECT dataset, model, config, run_id, shard, false AS whole,
           method, label, class_name, pred, pred_name, n, n_ok, n_correct, n_correct5
    FROM read_parquet('${root}/rollups/*/*/*/part-*.parquet',
                      hive_partitioning = true, hive_types_autocast = false, filename = true)
    WHERE filename IN (SELECT rollup_file FROM part_files)
    UNION ALL
    SELECT dataset, model, config, run_id, shard, false AS whole, method, label,
           any_value(class_name) AS class_name,
           pred,
           any_value(pred_name) AS pred_name,
           count(*) AS n,
           count(*) FILTER (WHERE status = 'ok') AS n_ok,
           count(*) FILTER (WHERE status = 'ok' AND pred = label) AS n_correct,
           count(*) FILTER (WHERE status = 'ok' AND coalesce(list_contains(top5, label), false)) AS n_correct5
    FROM read_parquet('${root}/predictions/*/*/*/part-*.parquet',
                      hive_partitioning = true, hive_types_autocast = false, filename = true)
    WHERE filename IN (SELECT file FROM part_files WHERE rollup_file IS NULL)
    GROUP BY dataset, model, config, run_id, shard, method, label, pred
)
SELECT r.run_id,
       r.deployment,
       r.status AS run_status,
       r.started_at AS run_started_at,
       p.dataset,
       p.model,
       p.config,
       p.run_id AS computed_by,
       p.* EXCLUDE (run_id, dataset, model, config, whole)
FROM chosen AS r
JOIN counts AS p
  ON p.dataset = r.dataset AND p.model = r.model AND p.config = r.config
 AND CASE WHEN r.status = 'completed' AND r.summed THEN p.whole
          WHEN r.status = 'completed' THEN NOT p.whole
          ELSE NOT p.whole AND (p.run_id = r.run_id OR list_contains(coalesce(r.reused_shards, []), p.shard))
     END;
