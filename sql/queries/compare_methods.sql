-- Accuracy of each method in run_a vs run_b, the difference, and flip counts.
-- Parameters: run_a, run_b (optional DuckDB variables; default: the latest run and its
--   previous run of the same deployment, dataset and model -- see sql/views/40_run_pair.sql).
SELECT * FROM compare_methods ORDER BY method;
