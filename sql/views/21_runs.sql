-- Runs: one row per run, its status and how far it got, counted from the parts it stands for.
-- Answers: "which runs are there, are they alive, and how many shards and images does each have?"
--   (abs-eval status prints exactly this view; export and the report read it too).
-- Parameters: none for the view; runs_of(run_ids) computes only the listed runs (NULL = every run).
--
-- Columns: the run record (run_records: status with the lease rule, previous_run_id) with its
-- counts replaced by the counts of the prediction parts the run stands for (the rule of
-- run_predictions_of: a completed run its whole partition, any other run the parts it computed
-- plus the shards committed before it started, reused_shards), and shards_done added:
--   shards_done       those parts
--   shards_computed   of them, the parts whose rows this run computed (rows' run_id)
--   shards_reused     shards_done - shards_computed
--   n_images, n_ok, n_error   images over those parts, ok / not classified: the n, n_ok and n_error
--                     of the accuracy view (every method has one row per image; the largest count
--                     of a method is taken)
--   shards_total      as written (the dataset's shards; 0 until the flow has read them)
-- Why counted and not as written: a running, killed or failed run never writes its counts (the
-- record is rewritten when the run ends), so its record says 0 while its parts are there. Counted
-- from the committed parts, every reader (status, these views, export, the report) sees the same
-- shards and images at every moment, a new part showing up in all of them at once.
-- Which files: per partition, its shards-all file when it covers the parts there now (one small
-- file: rows per computing run, shard and method), else the parts' rows (four columns of them; only
-- until the partition's file is written again, or on a root written before these files existed);
-- the same counts whichever is read (tests/test_rollups.py). Self-contained (no other view but
-- run_records, and the two macros below) so that abs-eval status creates and binds little: it lists
-- the part files once (the status connection creates run_records, run_records_of, part_files_of and
-- runs_of: RUNS_VIEWS in tasks/results).
--
-- run_records_of(run_ids): the records of these runs (NULL = every run), as run_records has them, with
-- partition added ('dataset=../model=../config=..', as part_files_of takes them). runs_of and errors_of
-- (33_errors.sql) start from it: the runs they answer for, and the partitions whose files they list.
-- Why the caller lists the files from these rows (part_files_of((SELECT list(DISTINCT partition) FROM
-- chosen), ..)) and not a macro from the run ids: that reads run_records a second time, about 30 ms (a
-- quarter of runs_of(10 runs) and of errors_of(one run)) on a root of 37 runs.
CREATE OR REPLACE MACRO run_records_of(run_ids) AS TABLE
SELECT *, 'dataset=' || dataset || '/model=' || model || '/config=' || config AS partition
FROM run_records
WHERE run_ids IS NULL OR list_contains(run_ids, run_id);

-- part_files_of(partitions, rollup_kind): the part files of these partitions (a list of
-- 'dataset=../model=../config=..'), one row per part file: partition, config, file, name
-- (part-<n>.parquet), and covered_by: the partition-wide <rollup_kind>-all-<k>-<md5>.parquet file of
-- rollups/ that covers exactly the partition's parts now (<md5>: the md5 of their names, sorted and
-- joined by ','), NULL when none does. rollup_kind is 'shards' here (rows per computing run, shard and
-- method) and 'errors' in errors_of (33_errors.sql): both read a partition's covering file when it has
-- one, else each of its parts. Why a macro and not the views of 10_sources.sql (prediction_part_files,
-- partition_parts): those list every partition of the root, this one only the chosen runs', and binds
-- no other view. Why partitions and not run ids: the caller has read its runs' records already
-- (run_records_of, above).
CREATE OR REPLACE MACRO part_files_of(partitions, rollup_kind) AS TABLE
WITH parts AS (
    SELECT file,
           regexp_extract(file, '(dataset=[^/]*/model=[^/]*/config=[^/]*)/part-[^/]*$', 1) AS partition,
           regexp_extract(file, '/(part-[^/]*)$', 1) AS name
    FROM glob('${root}/predictions/*/*/*/part-*.parquet')
),
listing AS (
    SELECT partition, md5(string_agg(name, ',' ORDER BY name)) AS digest
    FROM parts
    WHERE list_contains(partitions, partition)
    GROUP BY partition
),
covering AS (
    SELECT s.file, s.partition
    FROM (SELECT file,
                 regexp_extract(file, '(dataset=[^/]*/model=[^/]*/config=[^/]*)/[a-z]+-all-[^/]*$', 1) AS partition,
                 regexp_extract(file, '/' || rollup_kind || '-all-[0-9]+-([0-9a-f]+)[.]parquet$', 1) AS digest
          FROM glob('${root}/rollups/*/*/*/*-all-*.parquet')) AS s
    JOIN listing USING (partition, digest)
)
SELECT parts.partition,
       regexp_extract(parts.partition, 'config=(.*)$', 1) AS config,
       parts.file,
       parts.name,
       covering.file AS covered_by
FROM parts
JOIN listing USING (partition)
LEFT JOIN covering USING (partition);

CREATE OR REPLACE MACRO runs_of(run_ids) AS TABLE
WITH chosen AS (FROM run_records_of(run_ids)),
files AS (FROM part_files_of((SELECT list(DISTINCT partition) FROM chosen), 'shards')),
part_counts AS (
    SELECT dataset, model, config, run_id, shard, method, n, n_ok
    FROM read_parquet('${root}/rollups/*/*/*/shards-all-*.parquet',
                      hive_partitioning = true, hive_types_autocast = false, filename = true)
    WHERE filename IN (SELECT covered_by FROM files WHERE covered_by IS NOT NULL)
    UNION ALL
    SELECT dataset, model, config, run_id, shard, method, count(*) AS n,
           count(*) FILTER (WHERE status = 'ok') AS n_ok
    FROM read_parquet('${root}/predictions/*/*/*/part-*.parquet',
                      hive_partitioning = true, hive_types_autocast = false, filename = true)
    WHERE config IN (SELECT config FROM files WHERE covered_by IS NULL)  -- prunes by folder first
      AND filename IN (SELECT file FROM files WHERE covered_by IS NULL)
    GROUP BY dataset, model, config, run_id, shard, method
),
per_method AS (
    SELECT r.run_id,
           p.method,
           sum(p.n)::BIGINT AS n,
           sum(p.n_ok)::BIGINT AS n_ok,
           count(DISTINCT p.shard) AS shards_done,
           count(DISTINCT p.shard) FILTER (WHERE p.run_id = r.run_id) AS shards_computed
    FROM chosen AS r
    JOIN part_counts AS p
      ON p.dataset = r.dataset AND p.model = r.model AND p.config = r.config
     AND (r.status = 'completed'
          OR p.run_id = r.run_id
          OR list_contains(coalesce(r.reused_shards, []), p.shard))
    GROUP BY r.run_id, p.method
),
per_run AS (
    SELECT run_id,
           max(n) AS n_images,
           arg_max(n_ok, n) AS n_ok,
           arg_max(n - n_ok, n) AS n_error,
           max(shards_done) AS shards_done,
           max(shards_computed) AS shards_computed
    FROM per_method
    GROUP BY run_id
)
SELECT r.* EXCLUDE (previous_run_id, partition)
           REPLACE (coalesce(c.n_images, 0)::BIGINT AS n_images,
                    coalesce(c.n_ok, 0)::BIGINT AS n_ok,
                    coalesce(c.n_error, 0)::BIGINT AS n_error,
                    CAST(coalesce(c.shards_computed, 0) AS INTEGER) AS shards_computed,
                    CAST(coalesce(c.shards_done, 0) - coalesce(c.shards_computed, 0) AS INTEGER) AS shards_reused),
       CAST(coalesce(c.shards_done, 0) AS INTEGER) AS shards_done,
       r.previous_run_id
FROM chosen AS r
LEFT JOIN per_run AS c USING (run_id);

CREATE OR REPLACE VIEW runs AS FROM runs_of(NULL);
