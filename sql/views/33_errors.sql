-- Error rows: images that could not be classified (status <> 'ok'), per run x method.
-- Answers: which images failed, why, in which shard, and which run computed the row.
-- Parameters: none for the view (sql/queries/errors.sql takes run_id; error_counts.sql summarises);
--   errors_of(run_ids) returns only the listed runs' error rows (NULL = every run).
-- An image that failed at sharding has one such row per method.
--
-- The rows a run stands for are those of run_predictions_of (a completed run: its whole partition;
-- any other run: the rows it computed plus the shards committed before it started), filtered to
-- status <> 'ok'. Why not read them there: that reads every row's status (10 million rows of 50
-- ImageNet runs: 2.3 s) for a few error rows per part. The writer commits each part's error rows
-- beside its counts (errors-part-<n>.parquet) and all of a partition's in one file
-- (errors-all-<k>-<md5>.parquet, counted only while it covers exactly the parts there; see
-- 10_sources.sql). So per partition: its errors-all file when it covers the parts now, else each
-- part's error file, else (a part written before these files existed, or a crash in between) the
-- part's own rows. The rows stay the source of truth; tests/test_rollups.py checks that every way
-- gives the same rows. The runs and their partitions: run_records_of(run_ids); which parts those
-- partitions have, and whether an errors-all file covers them: part_files_of(<the partitions>, 'errors')
-- (both in 21_runs.sql, which the runs view reads the same way, asking for shards-all).
CREATE OR REPLACE MACRO errors_of(run_ids) AS TABLE
WITH chosen AS (FROM run_records_of(run_ids)),
files AS (FROM part_files_of((SELECT list(DISTINCT partition) FROM chosen), 'errors')),
part_files AS (
    SELECT files.file, files.partition, files.config, error_lists.errors_file
    FROM files
    LEFT JOIN (SELECT file AS errors_file,
                      regexp_extract(file, '(dataset=[^/]*/model=[^/]*/config=[^/]*)/errors-part-[^/]*$', 1) AS partition,
                      regexp_extract(file, '/errors-(part-[^/]*)$', 1) AS name
               FROM glob('${root}/rollups/*/*/*/errors-part-*.parquet')) AS error_lists
      USING (partition, name)
    WHERE files.covered_by IS NULL
),
error_rows AS (
    SELECT dataset, model, config, run_id, shard, image_id, method, label, class_name, status, error
    FROM read_parquet('${root}/rollups/*/*/*/errors-all-*.parquet',
                      hive_partitioning = true, hive_types_autocast = false, filename = true)
    WHERE filename IN (SELECT covered_by FROM files WHERE covered_by IS NOT NULL)
    UNION ALL
    SELECT dataset, model, config, run_id, shard, image_id, method, label, class_name, status, error
    FROM read_parquet('${root}/rollups/*/*/*/errors-part-*.parquet',
                      hive_partitioning = true, hive_types_autocast = false, filename = true)
    WHERE config IN (SELECT config FROM part_files)  -- prunes by folder first
      AND filename IN (SELECT errors_file FROM part_files)
    UNION ALL
    SELECT dataset, model, config, run_id, shard, image_id, method, label, class_name, status, error
    FROM read_parquet('${root}/predictions/*/*/*/part-*.parquet',
                      hive_partitioning = true, hive_types_autocast = false, filename = true)
    WHERE config IN (SELECT config FROM part_files)
      AND filename IN (SELECT file FROM part_files WHERE errors_file IS NULL)
      AND status <> 'ok'
)
SELECT r.run_id, r.deployment, e.dataset, e.model, e.config, e.shard, e.image_id, e.method,
       e.label, e.class_name, e.status, e.error, e.run_id AS computed_by
FROM chosen AS r
JOIN error_rows AS e
  ON e.dataset = r.dataset AND e.model = r.model AND e.config = r.config
 AND (r.status = 'completed'
      OR e.run_id = r.run_id
      OR list_contains(coalesce(r.reused_shards, []), e.shard));

CREATE OR REPLACE VIEW errors AS FROM errors_of(NULL);
