-- Per-class accuracy of every run x method, worst classes first.
-- Parameters: run_id, method (optional DuckDB variables; unset = all).
SELECT run_id, dataset, model, method, label, class_name,
       n, n_ok, n_error, correct, accuracy, ci_low, ci_high
FROM per_class_accuracy
WHERE (getvariable('run_id') IS NULL OR run_id = getvariable('run_id'))
  AND (getvariable('method') IS NULL OR method = getvariable('method'))
ORDER BY run_id, method, accuracy NULLS LAST, label;
