-- The views over the Parquet files of a storage root; everything else builds on these.
-- Answers: what has been committed (predictions, run records, cached DINO attention).
-- Parameters: ${root} -- the storage root, substituted by tasks/catalog.py (an
--   absolute path, a registered fsspec URL such as memory:///abs, or '.' when the
--   shell is started in the root). Nothing else in sql/ names a path.
--
-- Why these globs: committed part files live exactly three partition levels deep
-- and are named part-*.parquet; writers stage files under <root>/_tmp/ and move
-- them into place, so a half-written file never matches. hive_types_autocast is off
-- because a config hash such as 0123 must stay the string '0123'.
--
-- Why predictions is read by position (no union_by_name): that option makes DuckDB open
-- the footer of every part file at every query, 0.75 s over 2,500 files (50 ImageNet
-- runs), which alone is most of what a per-run query costs. Every part is written with
-- one schema (tasks/store/tables.py PREDICTION_SCHEMA); when a newer version adds a
-- column, tasks/catalog.py finds the files that differ (mixed_schema_globs) and renders
-- this call with union_by_name = true (older files then read the new column as NULL):
-- when it writes a catalog, and in Python after DuckDB's "schema mismatch" error.
-- The small run records and the DINO cache (read by the report only) keep union_by_name.

-- One row per image x method, as written by the inference task (tasks/store/tables.py
-- PREDICTION_SCHEMA) plus the partition columns dataset, model, config. run_id is
-- the run that COMPUTED the row (see run_predictions for a run's full set).
CREATE OR REPLACE VIEW predictions AS
SELECT *
FROM read_parquet('${root}/predictions/*/*/*/part-*.parquet',
                  hive_partitioning = true, hive_types_autocast = false);

-- One row per run (tasks/store/tables.py RUN_SCHEMA), with two columns added:
--   status: as written (running / completed / failed), except that a record still
--     'running' after its lease (expires_at; a live run pushes it forward with a
--     heartbeat every minute) belongs to a process that died: 'interrupted'.
--     Records without a lease count as interrupted one day after they started.
--   previous_run_id: the latest earlier completed run of the same deployment,
--     dataset and model (the run that a scheduled re-evaluation is compared with).
CREATE OR REPLACE VIEW runs AS
WITH written AS (
    SELECT *
    FROM read_parquet('${root}/runs/*/run.parquet', hive_partitioning = false, union_by_name = true)
),
records AS (
    SELECT * REPLACE (
        CASE WHEN coalesce(status, 'running') = 'running'
                  AND coalesce(expires_at, started_at + INTERVAL 1 DAY) < now()
             THEN 'interrupted' ELSE coalesce(status, 'running') END AS status)
    FROM written
)
SELECT cur.*,
       (SELECT arg_max(prev.run_id, prev.started_at)
        FROM records AS prev
        WHERE prev.deployment IS NOT DISTINCT FROM cur.deployment
          AND prev.dataset = cur.dataset
          AND prev.model = cur.model
          AND prev.started_at < cur.started_at
          AND prev.status = 'completed') AS previous_run_id
FROM records AS cur;

-- Cached CLS-to-patch DINO attention (tasks/store/tables.py DINO_SCHEMA): the full D x D
-- map per image, at cache/dino/model=<m>/key=<k>/dataset=<ds>/part-*.parquet
-- (tasks/store/layout.py dino_part). The partition values are taken from the path:
-- model, variant (the cache key: DINO weights digest and preprocessing), dataset.
CREATE OR REPLACE VIEW dino_attention AS
SELECT * EXCLUDE (filename),
       regexp_extract(filename, '/model=([^/]+)/[^/]+/dataset=[^/]+/[^/]+$', 1) AS model,
       regexp_extract(filename, '/model=[^/]+/(?:[^/=]+=)?([^/]+)/dataset=[^/]+/[^/]+$', 1) AS variant,
       regexp_extract(filename, '/dataset=([^/]+)/[^/]+$', 1) AS dataset
FROM read_parquet('${root}/cache/dino/*/*/*/part-*.parquet',
                  hive_partitioning = false, filename = true, union_by_name = true);
