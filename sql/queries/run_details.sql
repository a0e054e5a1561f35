-- Every column of the runs view for one run: the run record (models and weights, descriptions, settings) and its counts.
-- Parameters: run_id (optional DuckDB variable; unset = every run, newest first).
-- What the per-run report's header and its comparison read (tasks/results/report/reads.py); `runs` keeps
-- the columns a reader scans first. Through runs_of (sql/views/21_runs.sql): only the chosen run's parts are
-- counted, and its row is the one the runs view holds.
SELECT *
FROM runs_of(CASE WHEN getvariable('run_id') IS NULL THEN NULL ELSE [CAST(getvariable('run_id') AS VARCHAR)] END)
ORDER BY started_at DESC, run_id;
