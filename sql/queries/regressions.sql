-- Accuracy changes between run_a and run_b that chance does not explain (exact McNemar test), per method and per class.
-- Parameters: run_a, run_b (as compare_methods: default the latest run and its previous run),
--   method (optional), scope (optional: 'method' or 'class'; unset = both), alpha (optional, default 0.05).
-- regressed = accuracy down and p_value < alpha. n_broken = right -> wrong, n_fixed = wrong -> right.
-- present = 'both', or 'absent from run_a' / 'absent from run_b' (then no p_value: nothing compared).
-- settings_differ = the configuration keys in which the two runs differ (empty: same settings).
-- Per method first, then its classes, most significant first.
SELECT run_a, run_b, method, scope, label, class_name, accuracy_a, accuracy_b, change, n_broken, n_fixed,
       p_value, significant, regressed, present, settings_differ, n_paired, n_ok_a, n_ok_b, correct_a, correct_b, dataset, model
FROM regressions
WHERE (getvariable('method') IS NULL OR method = getvariable('method'))
  AND (getvariable('scope') IS NULL OR scope = getvariable('scope'))
ORDER BY method, scope DESC, p_value, label;
