-- Accuracy by dataset x model x method x run, with n, n_error and a 95% Wilson interval.
-- Parameters: run_id (optional DuckDB variable: SET VARIABLE run_id = '...'; unset = all runs).
SELECT dataset, model, method, run_id, deployment, config, started_at, run_status,
       n, n_ok, n_error, correct, accuracy, ci_low, ci_high, accuracy_all
FROM accuracy
WHERE getvariable('run_id') IS NULL OR run_id = getvariable('run_id')
ORDER BY dataset, model, started_at, run_id, method;
