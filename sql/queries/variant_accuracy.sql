-- Accuracy of a run's ABS variants (abs-eval analyze) beside the run: the sensitivity curves and ablations.
-- Parameters: run_id (optional: the run the variants are of; a run without variants of its own gets those of
--   the latest run of its partition (same dataset, model, config: the same predictions) that has some;
--   unset = every run with variants), method (optional, e.g. 'abs'; unset = every method).
-- Columns: which variant and what it changes (varied: n_crops, n_descriptions, tau, crop_kinds, matching;
-- 'run' for the run itself, 'several' for combinations), accuracy with its 95% Wilson interval and n, its
-- five settings, whether it equals a fresh run, the other two CLIP_benchmark numbers, where it is from.
WITH me AS (
    SELECT dataset, model, config FROM run_records WHERE run_id = getvariable('run_id')
),
chosen AS (
    SELECT coalesce(
        (SELECT any_value(of_run) FROM variant_runs WHERE is_run AND of_run = getvariable('run_id')),
        (SELECT arg_max(v.of_run, v.started_at) FROM variant_runs AS v JOIN me USING (dataset, model, config)
         WHERE v.is_run)) AS of_run
)
SELECT of_run, variant, varied, method, accuracy, ci_low, ci_high, n, n_ok, correct,
       n_crops, crop_kinds, n_descriptions, tau, matching, equals_fresh_run, is_run, acc5, mean_per_class_recall,
       run_id, dataset, model, deployment, status
FROM variant_accuracy
WHERE (getvariable('run_id') IS NULL OR of_run = (SELECT of_run FROM chosen))
  AND (getvariable('method') IS NULL OR method = getvariable('method'))
ORDER BY of_run, method, is_run DESC, varied, n_crops, n_descriptions, tau, crop_kinds, matching, run_id;
