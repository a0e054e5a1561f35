-- Accuracy by run x method (each run is one dataset x model x config).
-- Answers: how often each method was right, over how many images, and how sure we are.
-- Parameters: none (filter with WHERE; sql/queries/accuracy.sql takes run_id).
--
-- n counts every image (ok + error rows); accuracy is over ok rows only, with its 95%
-- Wilson interval; accuracy_all counts error rows as wrong (the number to quote when
-- bad inputs should not be silently excluded).
CREATE OR REPLACE VIEW accuracy AS
WITH counts AS (
    SELECT run_id,
           any_value(deployment) AS deployment,
           any_value(run_status) AS run_status,
           dataset,
           model,
           config,
           method,
           any_value(run_started_at) AS started_at,
           count(*) AS n,
           count(*) FILTER (WHERE status = 'ok') AS n_ok,
           count(*) FILTER (WHERE status <> 'ok') AS n_error,
           count(*) FILTER (WHERE correct) AS n_correct
    FROM run_predictions
    GROUP BY run_id, dataset, model, config, method
)
SELECT run_id, deployment, dataset, model, config, method, started_at, run_status,
       n, n_ok, n_error,
       n_correct AS correct,
       n_correct / nullif(n_ok, 0) AS accuracy,
       wilson_low(n_correct, n_ok) AS ci_low,
       wilson_high(n_correct, n_ok) AS ci_high,
       n_correct / nullif(n, 0) AS accuracy_all
FROM counts;
