-- The top_k worst and top_k best classes of each run x method (ties: fewer ok images counts as worse).
-- Parameters: run_id, method (optional), top_k (optional, default 5).
-- extreme = 'worst' or 'best'; position 1 = the most extreme class. With fewer than
-- 2 * top_k classes the two lists split the classes instead of repeating them.
-- A class at 0% accuracy is never 'best' (it can only be among the worst): when fewer
-- than top_k classes are above 0%, the best list is shorter, and empty when all are 0%.
WITH ordered AS (
    SELECT *,
           row_number() OVER (PARTITION BY run_id, method ORDER BY accuracy ASC, n_ok ASC, label DESC) AS worst_pos,
           count(*) OVER (PARTITION BY run_id, method) AS n_classes
    FROM per_class_accuracy
    WHERE accuracy IS NOT NULL
      AND (getvariable('run_id') IS NULL OR run_id = getvariable('run_id'))
      AND (getvariable('method') IS NULL OR method = getvariable('method'))
),
ranked AS (
    -- best is the exact reverse of worst, so no class is in both lists
    SELECT *, n_classes + 1 - worst_pos AS best_pos FROM ordered
)
SELECT run_id, dataset, model, method, extreme, position, label, class_name, n_ok, correct, accuracy, ci_low, ci_high
FROM (
    SELECT *, 'worst' AS extreme, worst_pos AS position FROM ranked
    WHERE worst_pos <= least(CAST(coalesce(getvariable('top_k'), 5) AS INTEGER), (n_classes + 1) // 2)
    UNION ALL
    SELECT *, 'best' AS extreme, best_pos AS position FROM ranked
    WHERE best_pos <= least(CAST(coalesce(getvariable('top_k'), 5) AS INTEGER), n_classes // 2)
      AND accuracy > 0
)
ORDER BY run_id, method, extreme DESC, position;
