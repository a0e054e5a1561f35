-- Accuracy by run x method (each run is one dataset x model x config).
-- Answers: how often each method was right, over how many images, and how sure we are;
-- and the two other numbers zero-shot papers and CLIP_benchmark report: top-5 accuracy and
-- mean per-class recall (balanced accuracy).
-- Parameters: none for the view (filter with WHERE; sql/queries/accuracy.sql takes run_id);
--   accuracy_of(run_ids) computes only the listed runs (NULL = every run; see run_predictions_of).
--
-- n counts every image (ok + error rows); accuracy is over ok rows only, with its 95%
-- Wilson interval; accuracy_all counts error rows as wrong (the number to quote when
-- bad inputs should not be silently excluded).
-- acc5 = correct5 / n_ok: the true label is in the row's top5 list, over ok rows like
-- accuracy (a NULL top5 or label counts as a miss, never as NULL).
-- mean_per_class_recall: the mean over the classes present in the run (a class with at
-- least one ok row) of that class's top-1 recall over its ok rows; unlike accuracy,
-- every class weighs the same whatever its number of images. NULL without ok rows.
-- From the parts' counts (run_rollups_of over prediction_rollups: the same numbers as over the
-- rows of run_predictions_of, without reading them): counts per class first (what the recall
-- needs), summed per method.
CREATE OR REPLACE MACRO accuracy_of(run_ids) AS TABLE
WITH per_class AS (
    SELECT run_id,
           any_value(deployment) AS deployment,
           any_value(run_status) AS run_status,
           dataset,
           model,
           config,
           method,
           label,
           any_value(run_started_at) AS started_at,
           sum(n)::BIGINT AS n,
           sum(n_ok)::BIGINT AS n_ok,
           sum(n - n_ok)::BIGINT AS n_error,
           sum(n_correct)::BIGINT AS n_correct,
           sum(n_correct5)::BIGINT AS n_correct5
    FROM run_rollups_of(run_ids)
    GROUP BY run_id, dataset, model, config, method, label
),
counts AS (
    SELECT run_id,
           any_value(deployment) AS deployment,
           any_value(run_status) AS run_status,
           dataset,
           model,
           config,
           method,
           any_value(started_at) AS started_at,
           sum(n)::BIGINT AS n,
           sum(n_ok)::BIGINT AS n_ok,
           sum(n_error)::BIGINT AS n_error,
           sum(n_correct)::BIGINT AS n_correct,
           sum(n_correct5)::BIGINT AS n_correct5,
           avg(n_correct / n_ok) FILTER (WHERE n_ok > 0) AS mean_per_class_recall
    FROM per_class
    GROUP BY run_id, dataset, model, config, method
)
SELECT run_id, deployment, dataset, model, config, method, started_at, run_status,
       n, n_ok, n_error,
       n_correct AS correct,
       n_correct / nullif(n_ok, 0) AS accuracy,
       wilson_low(n_correct, n_ok) AS ci_low,
       wilson_high(n_correct, n_ok) AS ci_high,
       n_correct / nullif(n, 0) AS accuracy_all,
       n_correct5 AS correct5,
       n_correct5 / nullif(n_ok, 0) AS acc5,
       mean_per_class_recall
FROM counts;

CREATE OR REPLACE VIEW accuracy AS FROM accuracy_of(NULL);
