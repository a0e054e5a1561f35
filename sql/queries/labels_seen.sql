-- The number of distinct true labels among each run's prediction rows.
-- Parameters: run_id (optional DuckDB variable; unset = every run).
-- What the per-run report counts as C, the classes a prediction chooses among, when the dataset's
-- dataset.json cannot be read: a lower bound (a class without an image in the run is not seen).
-- One row per run that has prediction rows (the rows it stands for, as in run_predictions).
SELECT run_id, dataset, model, count(DISTINCT label) AS n_labels
FROM run_predictions_of(CASE WHEN getvariable('run_id') IS NULL THEN NULL ELSE [CAST(getvariable('run_id') AS VARCHAR)] END)
GROUP BY run_id, dataset, model
ORDER BY run_id;
