-- Run comparison per method: accuracy in run_a and run_b, the difference, and how many
-- images flipped each way (from compare_flips).
-- Answers: "did this week's run get better or worse than last week's, per method?"
-- Parameters: run_a, run_b (DuckDB variables, via run_pair).
-- delta = accuracy_b - accuracy_a (over ok rows). n_fixed - n_broken is the net change
-- in correct images on the images both runs share. present: 'both', or 'absent from run_a' /
-- 'absent from run_b' for a method one run did not score (no flips counted: nothing to compare).
CREATE OR REPLACE VIEW compare_methods AS
WITH pair AS (FROM run_pair),
both_runs AS (FROM accuracy_of((SELECT [run_a, run_b] FROM pair))),
a AS (SELECT * FROM both_runs WHERE run_id = (SELECT run_a FROM pair)),
b AS (SELECT * FROM both_runs WHERE run_id = (SELECT run_b FROM pair)),
f AS (
    SELECT method,
           count(*) AS n_changed,
           count(*) FILTER (WHERE change = 'fixed') AS n_fixed,
           count(*) FILTER (WHERE change = 'broken') AS n_broken
    FROM compare_flips
    GROUP BY method
)
SELECT (SELECT run_a FROM pair) AS run_a,
       (SELECT run_b FROM pair) AS run_b,
       method,
       a.n AS n_a,
       b.n AS n_b,
       a.n_error AS n_error_a,
       b.n_error AS n_error_b,
       a.accuracy AS accuracy_a,
       b.accuracy AS accuracy_b,
       b.accuracy - a.accuracy AS delta,
       a.ci_low AS ci_low_a,
       a.ci_high AS ci_high_a,
       b.ci_low AS ci_low_b,
       b.ci_high AS ci_high_b,
       CASE WHEN a.method IS NOT NULL AND b.method IS NOT NULL THEN coalesce(f.n_changed, 0) END AS n_changed,
       CASE WHEN a.method IS NOT NULL AND b.method IS NOT NULL THEN coalesce(f.n_fixed, 0) END AS n_fixed,
       CASE WHEN a.method IS NOT NULL AND b.method IS NOT NULL THEN coalesce(f.n_broken, 0) END AS n_broken,
       CASE WHEN a.method IS NULL THEN 'absent from run_a' WHEN b.method IS NULL THEN 'absent from run_b'
            ELSE 'both' END AS present
FROM a FULL OUTER JOIN b USING (method)
LEFT JOIN f USING (method);
