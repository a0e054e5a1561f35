-- Confusions: (true class -> predicted class) counts of wrong ok rows, per run x method.
-- Answers: what each class is mistaken for, most frequent first (rank 1 = most frequent
-- confusion of that run x method; share = fraction of the true class's ok images).
-- Parameters: none (sql/queries/confusions.sql keeps the top_k per run x method).
-- Read from the parts' counts (run_rollups_of; the same numbers as over run_predictions' rows), in
-- one pass: the counts per (true, predicted) class of ok rows, and each true class's total beside them.
CREATE OR REPLACE VIEW confusions AS
WITH counts AS (
    SELECT run_id, dataset, model, config, method,
           label, any_value(class_name) AS class_name,
           pred, any_value(pred_name) AS pred_name,
           sum(n_ok)::BIGINT AS n
    FROM run_rollups_of(NULL)
    WHERE n_ok > 0
    GROUP BY run_id, dataset, model, config, method, label, pred
),
pairs AS (
    SELECT *, sum(n) OVER (PARTITION BY run_id, method, label) AS n_class
    FROM counts
)
SELECT run_id, dataset, model, config, method, label, class_name, pred, pred_name, n,
       n / n_class AS share,
       rank() OVER (PARTITION BY run_id, method ORDER BY n DESC) AS rank
FROM pairs
WHERE pred <> label;
