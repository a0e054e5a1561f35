-- The most frequent confusions (true -> predicted class) of each run x method.
-- Parameters: run_id, method (optional), top_k (optional, default 20: ranks kept per run x method).
SELECT run_id, dataset, model, method, rank, label, class_name, pred, pred_name, n, share
FROM confusions
WHERE rank <= CAST(coalesce(getvariable('top_k'), 20) AS INTEGER)
  AND (getvariable('run_id') IS NULL OR run_id = getvariable('run_id'))
  AND (getvariable('method') IS NULL OR method = getvariable('method'))
ORDER BY run_id, method, rank, label, pred;
