-- Accuracy by dataset x model x method x run, with n, n_error and a 95% Wilson interval, top-5 accuracy and mean per-class recall.
-- Parameters: run_id (optional DuckDB variable: SET VARIABLE run_id = '...'; unset = all runs).
-- Columns: what a reader came for first (method, accuracy and its interval, n), then where it is from,
-- then the other two CLIP_benchmark numbers (acc5 = top-5 accuracy, mean_per_class_recall).
SELECT method, accuracy, ci_low, ci_high, n, n_error, run_id, acc5, mean_per_class_recall, dataset, model, run_status,
       correct, n_ok, accuracy_all, correct5, deployment, config, started_at
FROM accuracy
WHERE getvariable('run_id') IS NULL OR run_id = getvariable('run_id')
ORDER BY dataset, model, started_at, run_id, method;
