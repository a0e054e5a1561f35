-- Per-class accuracy in run_a vs run_b, largest changes first.
-- Parameters: run_a, run_b (as compare_methods), method (optional), top_k (optional:
--   keep the top_k largest |delta| per method; unset = all classes).
SELECT *
FROM compare_classes
WHERE (getvariable('method') IS NULL OR method = getvariable('method'))
QUALIFY getvariable('top_k') IS NULL
     OR row_number() OVER (PARTITION BY method ORDER BY abs(delta) DESC NULLS LAST, label)
        <= CAST(getvariable('top_k') AS INTEGER)
ORDER BY method, abs(delta) DESC NULLS LAST, label;
