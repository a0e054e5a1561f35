-- Run comparison per method x class: per-class accuracy in run_a and run_b and the difference.
-- Answers: which classes improved or regressed between the two runs.
-- Parameters: run_a, run_b (DuckDB variables, via run_pair).
CREATE OR REPLACE VIEW compare_classes AS
WITH pair AS (FROM run_pair),
both_runs AS (FROM per_class_accuracy_of((SELECT [run_a, run_b] FROM pair))),
a AS (SELECT * FROM both_runs WHERE run_id = (SELECT run_a FROM pair)),
b AS (SELECT * FROM both_runs WHERE run_id = (SELECT run_b FROM pair))
SELECT (SELECT run_a FROM pair) AS run_a,
       (SELECT run_b FROM pair) AS run_b,
       method,
       label,
       coalesce(b.class_name, a.class_name) AS class_name,
       a.n_ok AS n_ok_a,
       b.n_ok AS n_ok_b,
       a.correct AS correct_a,
       b.correct AS correct_b,
       a.accuracy AS accuracy_a,
       b.accuracy AS accuracy_b,
       b.accuracy - a.accuracy AS delta
FROM a FULL OUTER JOIN b USING (method, label);
