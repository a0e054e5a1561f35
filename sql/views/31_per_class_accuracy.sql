-- Accuracy by run x method x true class.
-- Answers: which classes a method gets right or wrong, with counts and a 95% Wilson interval.
-- Parameters: none for the view (sql/queries/per_class_accuracy.sql and class_extremes.sql
--   filter it); per_class_accuracy_of(run_ids) computes only the listed runs (NULL = all).
-- Error rows count in n and n_error, not in accuracy (same rule as the accuracy view).
-- Read from the parts' counts (run_rollups_of; the same numbers as over run_predictions_of's rows).
CREATE OR REPLACE MACRO per_class_accuracy_of(run_ids) AS TABLE
WITH counts AS (
    SELECT run_id,
           dataset,
           model,
           config,
           method,
           label,
           any_value(class_name) AS class_name,
           sum(n)::BIGINT AS n,
           sum(n_ok)::BIGINT AS n_ok,
           sum(n - n_ok)::BIGINT AS n_error,
           sum(n_correct)::BIGINT AS n_correct
    FROM run_rollups_of(run_ids)
    GROUP BY run_id, dataset, model, config, method, label
)
SELECT run_id, dataset, model, config, method, label, class_name,
       n, n_ok, n_error,
       n_correct AS correct,
       n_correct / nullif(n_ok, 0) AS accuracy,
       wilson_low(n_correct, n_ok) AS ci_low,
       wilson_high(n_correct, n_ok) AS ci_high
FROM counts;

CREATE OR REPLACE VIEW per_class_accuracy AS FROM per_class_accuracy_of(NULL);
