-- The views over the Parquet files of a storage root; everything else builds on these.
-- Answers: what has been committed (predictions, run records, cached DINO attention).
-- Parameters: ${root} -- the storage root, substituted by tasks/results/catalog.py (an
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
-- column, tasks/results/catalog.py finds the files that differ (mixed_schema_globs) and renders
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

-- One row per run record (tasks/store/tables.py RUN_SCHEMA) as written, with two columns changed/added:
--   status: as written (queued / starting / running / completed / failed / interrupted), except
--     that a record that says its process is alive (queued, starting, running) after its lease
--     (expires_at; a live run pushes it forward with a heartbeat every minute) belongs to a
--     process that died: 'interrupted'. Records without a lease count as interrupted one day
--     after they started. The same rule as tasks.results.runs.effective_status; a process that died on
--     the machine a reader runs on is written into the record as 'interrupted' at once by that
--     reader (tasks.results.runs.reap_dead_runs: every Python reader does it before it queries).
--   previous_run_id: the latest earlier completed run of the same deployment,
--     dataset and model (the run that a scheduled re-evaluation is compared with).
-- The counts written in the record (n_images ... shards_reused) are what the run wrote when it
-- ended (0 while it runs); the runs view (21_runs.sql) counts them from the committed parts.
-- The views that pick runs (run_predictions_of, run_rollups_of, run_pair ...) read this one.
CREATE OR REPLACE VIEW run_records AS
WITH written AS (
    SELECT *
    FROM read_parquet('${root}/runs/*/run.parquet', hive_partitioning = false, union_by_name = true)
),
records AS (
    SELECT * REPLACE (
        CASE WHEN coalesce(status, 'running') IN ('queued', 'starting', 'running')
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
-- (tasks/store/paths.py dino_part). The partition values are taken from the path:
-- model, variant (the cache key: DINO weights digest and preprocessing), dataset.
CREATE OR REPLACE VIEW dino_attention AS
SELECT * EXCLUDE (filename),
       regexp_extract(filename, '/model=([^/]+)/[^/]+/dataset=[^/]+/[^/]+$', 1) AS model,
       regexp_extract(filename, '/model=[^/]+/(?:[^/=]+=)?([^/]+)/dataset=[^/]+/[^/]+$', 1) AS variant,
       regexp_extract(filename, '/dataset=([^/]+)/[^/]+$', 1) AS dataset
FROM read_parquet('${root}/cache/dino/*/*/*/part-*.parquet',
                  hive_partitioning = false, filename = true, union_by_name = true);

-- Counts per prediction part: what the aggregate views (accuracy, per_class_accuracy, confusions
-- and the comparisons built on them) read instead of the prediction rows (through run_rollups_of).
-- Why: an aggregate over every run reads every row (10 million rows of 50 ImageNet runs: 5-9 s
-- with 1,000 classes). The writer commits, after each part and before the part's done-marker,
--   rollups/<partition>/part-<n>.parquet   the part's counts per (run_id, shard, method, label, pred):
--                                          n rows, n_ok, n_correct (pred = label), n_correct5 (label in top5)
--   rollups/<partition>/all-<k>-<md5>.parquet   the same summed over all k parts of the partition
-- (tasks.results.catalog.write_rollup / compact_partition; tables.ROLLUP_SCHEMA, PARTITION_ROLLUP_SCHEMA).
-- The rows stay the source of truth, and which files exist is listed (glob) at every query:
--   - a part without a rollup file (written before rollups existed, or a crash between the two
--     moves) is counted from its rows, with the same expressions (tasks.results.catalog.ROLLUP_SQL), so the
--     numbers never depend on which parts have rollups (tasks.results.catalog.build_rollups writes them);
--   - a rollup file whose part file is not there is ignored;
--   - an all-* file counts only while its name matches the partition's parts: <md5> is the md5 of
--     the part file names, sorted and joined by ','.

-- One row per prediction part file: its partition ('dataset=../model=../config=..'), name, and its
-- rollup file (NULL when it has none).
CREATE OR REPLACE VIEW prediction_part_files AS
WITH parts AS (
    SELECT file,
           regexp_extract(file, '(dataset=[^/]*/model=[^/]*/config=[^/]*)/part-[^/]*$', 1) AS partition,
           regexp_extract(file, '/(part-[^/]*)$', 1) AS name
    FROM glob('${root}/predictions/*/*/*/part-*.parquet')
),
rollups AS (
    SELECT file AS rollup_file,
           regexp_extract(file, '(dataset=[^/]*/model=[^/]*/config=[^/]*)/part-[^/]*$', 1) AS partition,
           regexp_extract(file, '/(part-[^/]*)$', 1) AS name
    FROM glob('${root}/rollups/*/*/*/part-*.parquet')
)
SELECT parts.file, parts.partition, parts.name, rollups.rollup_file
FROM parts LEFT JOIN rollups USING (partition, name);

-- One row per partition: its part files now (n_parts) and the md5 of their names (sorted, joined by
-- ','), which a partition-wide file must carry in its name to count.
CREATE OR REPLACE VIEW partition_parts AS
SELECT partition, count(*) AS n_parts, md5(string_agg(name, ',' ORDER BY name)) AS digest
FROM prediction_part_files
GROUP BY partition;

-- One row per partition whose summed counts (all-<k>-<md5>.parquet) cover exactly its parts now.
CREATE OR REPLACE VIEW partition_rollup_files AS
WITH listing AS (
    SELECT partition, md5(string_agg(name, ',' ORDER BY name)) AS digest
    FROM prediction_part_files
    GROUP BY partition
),
summed AS (
    SELECT file,
           regexp_extract(file, '(dataset=[^/]*/model=[^/]*/config=[^/]*)/all-[^/]*$', 1) AS partition,
           regexp_extract(file, '/all-[0-9]+-([0-9a-f]+)[.]parquet$', 1) AS digest
    FROM glob('${root}/rollups/*/*/*/all-*.parquet')
)
SELECT summed.file, summed.partition FROM summed JOIN listing USING (partition, digest);

-- Rows per (computing run, shard, method) of all of a partition's parts, shards-all-<k>-<md5>.parquet
-- (tasks.results.catalog.PART_COUNTS_SCHEMA: run_id, shard, method, n, n_ok; the part rollups' counts summed
-- that way): what the runs view (21_runs.sql) counts a run's shards, images and errors from, one
-- small file per partition. One row per partition whose file covers exactly its parts now.
CREATE OR REPLACE VIEW partition_shard_files AS
WITH summed AS (
    SELECT file,
           regexp_extract(file, '(dataset=[^/]*/model=[^/]*/config=[^/]*)/shards-all-[^/]*$', 1) AS partition,
           regexp_extract(file, '/shards-all-[0-9]+-([0-9a-f]+)[.]parquet$', 1) AS digest
    FROM glob('${root}/rollups/*/*/*/shards-all-*.parquet')
)
SELECT summed.file, summed.partition FROM summed JOIN partition_parts USING (partition, digest);

-- Error rows: beside each part's counts the writer commits the part's error rows (status <> 'ok',
-- a few per part), rollups/<partition>/errors-part-<n>.parquet, and all of a partition's in one
-- file, errors-all-<k>-<md5>.parquet (the same rule as all-*: it counts only while <md5> matches
-- the part files there); tasks.results.catalog.ERRORS_SCHEMA. The errors view (33_errors.sql) reads them
-- instead of every row's status; a part without one is read from its rows.
-- One row per partition whose error rows file (errors-all-<k>-<md5>.parquet) covers exactly its parts now.
CREATE OR REPLACE VIEW partition_error_files AS
WITH summed AS (
    SELECT file,
           regexp_extract(file, '(dataset=[^/]*/model=[^/]*/config=[^/]*)/errors-all-[^/]*$', 1) AS partition,
           regexp_extract(file, '/errors-all-[0-9]+-([0-9a-f]+)[.]parquet$', 1) AS digest
    FROM glob('${root}/rollups/*/*/*/errors-all-*.parquet')
)
SELECT summed.file, summed.partition FROM summed JOIN partition_parts USING (partition, digest);

-- Every part's counts: from its rollup file, or from its rows when it has none (one row per
-- (dataset, model, config, run_id, shard, method, label, pred) of the part).
CREATE OR REPLACE VIEW prediction_rollups AS
SELECT dataset, model, config, run_id, shard, method, label, class_name, pred, pred_name,
       n, n_ok, n_correct, n_correct5
FROM read_parquet('${root}/rollups/*/*/*/part-*.parquet',
                  hive_partitioning = true, hive_types_autocast = false, filename = true)
WHERE filename IN (SELECT rollup_file FROM prediction_part_files)
UNION ALL
SELECT dataset, model, config, run_id, shard, method, label,
       any_value(class_name) AS class_name,
       pred,
       any_value(pred_name) AS pred_name,
       count(*) AS n,
       count(*) FILTER (WHERE status = 'ok') AS n_ok,
       count(*) FILTER (WHERE status = 'ok' AND pred = label) AS n_correct,
       count(*) FILTER (WHERE status = 'ok' AND coalesce(list_contains(top5, label), false)) AS n_correct5
FROM read_parquet('${root}/predictions/*/*/*/part-*.parquet',
                  hive_partitioning = true, hive_types_autocast = false, filename = true)
WHERE filename IN (SELECT file FROM prediction_part_files WHERE rollup_file IS NULL)
GROUP BY dataset, model, config, run_id, shard, method, label, pred;
