-- The images whose prediction changed between run_a and run_b, per method.
-- Parameters: run_a, run_b (as compare_methods), method (optional).
SELECT run_a, run_b, method, image_id, shard, label, class_name,
       pred_a, pred_name_a, pred_b, pred_name_b, correct_a, correct_b, status_a, status_b, change
FROM compare_flips
WHERE getvariable('method') IS NULL OR method = getvariable('method')
ORDER BY method, change, image_id;
