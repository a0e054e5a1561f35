-- The two runs the compare_* views compare: run_a (before) and run_b (after).
-- Answers: "which runs am I comparing?" -- one row (run_a, run_b).
-- Parameters (DuckDB variables; unset = default):
--   SET VARIABLE run_a = '<run id>';  SET VARIABLE run_b = '<run id>';
--   both unset: run_b = the latest completed run that has a previous run, run_a = that
--               previous run (same deployment, dataset and model; see runs.previous_run_id);
--   only run_b: run_a = run_b's previous run;
--   only run_a: run_b = the latest completed later run of run_a's deployment, dataset, model.
--   RESET VARIABLE run_a; to go back to the default.
CREATE OR REPLACE VIEW run_pair AS
WITH vars AS (
    SELECT CAST(getvariable('run_a') AS VARCHAR) AS a,
           CAST(getvariable('run_b') AS VARCHAR) AS b
),
done AS (
    SELECT * FROM run_records WHERE coalesce(status, 'completed') = 'completed'
),
pick_b AS (
    SELECT vars.a,
           coalesce(
               vars.b,
               (SELECT arg_max(later.run_id, later.started_at)
                FROM done AS later JOIN run_records AS ra ON ra.run_id = vars.a
                WHERE later.deployment IS NOT DISTINCT FROM ra.deployment
                  AND later.dataset = ra.dataset
                  AND later.model = ra.model
                  AND later.started_at > ra.started_at),
               (SELECT arg_max(latest.run_id, latest.started_at)
                FROM done AS latest
                WHERE vars.a IS NULL AND latest.previous_run_id IS NOT NULL)
           ) AS b
    FROM vars
)
SELECT coalesce(pick_b.a, (SELECT r.previous_run_id FROM run_records AS r WHERE r.run_id = pick_b.b)) AS run_a,
       pick_b.b AS run_b
FROM pick_b;
