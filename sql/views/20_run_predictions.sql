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
FROM (SELECT * FROM runs WHERE run_ids IS NULL OR list_contains(run_ids, run_id)) AS r
JOIN predictions AS p
  ON p.dataset = r.dataset AND p.model = r.model AND p.config = r.config
 AND (r.status = 'completed'
      OR p.run_id = r.run_id
      OR list_contains(coalesce(r.reused_shards, []), p.shard));

CREATE OR REPLACE VIEW run_predictions AS FROM run_predictions_of(NULL);
