-- Confusions: (true class -> predicted class) counts of wrong ok rows, per run x method.
-- Answers: what each class is mistaken for, most frequent first (rank 1 = most frequent
-- confusion of that run x method; share = fraction of the true class's ok images).
-- Parameters: none (sql/queries/confusions.sql keeps the top_k per run x method).
CREATE OR REPLACE VIEW confusions AS
WITH class_totals AS (
    SELECT run_id, method, label, count(*) AS n_class
    FROM run_predictions
    WHERE status = 'ok'
    GROUP BY run_id, method, label
),
pairs AS (
    SELECT run_id, dataset, model, config, method,
           label, any_value(class_name) AS class_name,
           pred, any_value(pred_name) AS pred_name,
           count(*) AS n
    FROM run_predictions
    WHERE status = 'ok' AND pred <> label
    GROUP BY run_id, dataset, model, config, method, label, pred
)
SELECT pairs.*,
       pairs.n / class_totals.n_class AS share,
       rank() OVER (PARTITION BY pairs.run_id, pairs.method ORDER BY pairs.n DESC) AS rank
FROM pairs
JOIN class_totals USING (run_id, method, label);
