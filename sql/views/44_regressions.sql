-- Did run_b really get worse than run_a? The exact McNemar test on the images both runs
-- classified, per method and per (method, class) (see run_pair for how the runs are chosen;
-- by default a run and the previous completed run of its deployment, dataset and model).
-- Answers: per method (scope 'method', label NULL) and per method x true class (scope
-- 'class'): accuracy in each run, the change, the flips both ways, and whether the change
-- is more than chance.
-- Parameters: run_a, run_b (DuckDB variables, via run_pair); alpha (optional, default 0.05:
--   the significance level of `significant` and `regressed`).
--
-- accuracy_a / accuracy_b: correct / n_ok of each run's own rows (the numbers of the
-- accuracy and per_class_accuracy views); change = accuracy_b - accuracy_a.
-- The test pairs the (image, method) rows present in both runs (n_paired), with
-- `correct` as in run_predictions (an error row counts as wrong, as in compare_flips):
--   n_broken (b) = right in run_a and wrong in run_b  (compare_flips change = 'broken')
--   n_fixed  (c) = wrong in run_a and right in run_b  (change = 'fixed')
--   p_value = mcnemar_p(b, c): exact two-sided, min(1, 2 * P(Bin(b + c, 1/2) <= min(b, c)));
--             1 when nothing flipped (b + c = 0).
-- significant = p_value < alpha; regressed = significant AND change < 0 (accuracy dropped by
-- more than chance explains): what the report flags and the flow announces as a Prefect event.
-- present: 'both', or 'absent from run_a' / 'absent from run_b' for a method (or class) one run
-- did not score: then p_value is NULL and nothing is compared.
-- settings_differ: the settings in which the two runs' records differ (keys of config_json:
-- ABS parameters, models and weight digests, prompt, templates, descriptions, dataset), the
-- same on every row; empty when the runs share their configuration. A change between runs
-- with other settings is a change of the setting, not necessarily a regression of the method.
CREATE OR REPLACE VIEW regressions AS
WITH pair AS (FROM run_pair),
both_runs AS (FROM run_predictions_of((SELECT [run_a, run_b] FROM pair))),
a AS (SELECT * FROM both_runs WHERE run_id = (SELECT run_a FROM pair)),
b AS (SELECT * FROM both_runs WHERE run_id = (SELECT run_b FROM pair)),
joined AS (
    SELECT coalesce(a.method, b.method) AS method,
           coalesce(b.label, a.label) AS label,
           coalesce(b.class_name, a.class_name) AS class_name,
           coalesce(b.dataset, a.dataset) AS dataset,
           coalesce(b.model, a.model) AS model,
           a.image_id IS NOT NULL AND b.image_id IS NOT NULL AS paired,
           a.image_id IS NOT NULL AS in_a,
           b.image_id IS NOT NULL AS in_b,
           coalesce(a.status = 'ok', false) AS ok_a,
           coalesce(b.status = 'ok', false) AS ok_b,
           coalesce(a.correct, false) AS right_a,
           coalesce(b.correct, false) AS right_b
    FROM a FULL OUTER JOIN b ON a.image_id = b.image_id AND a.method = b.method
),
counts AS (
    SELECT method,
           label,
           grouping(label) = 1 AS all_classes,
           any_value(class_name) AS class_name,
           any_value(dataset) AS dataset,
           any_value(model) AS model,
           count(*) FILTER (WHERE ok_a) AS n_ok_a,
           count(*) FILTER (WHERE ok_b) AS n_ok_b,
           count(*) FILTER (WHERE right_a) AS correct_a,
           count(*) FILTER (WHERE right_b) AS correct_b,
           count(*) FILTER (WHERE paired) AS n_paired,
           count(*) FILTER (WHERE in_a) AS n_rows_a,
           count(*) FILTER (WHERE in_b) AS n_rows_b,
           count(*) FILTER (WHERE paired AND right_a AND NOT right_b) AS n_broken,
           count(*) FILTER (WHERE paired AND NOT right_a AND right_b) AS n_fixed
    FROM joined
    GROUP BY GROUPING SETS ((method), (method, label))
),
configs AS (
    SELECT (SELECT config_json FROM run_records WHERE run_id = (SELECT run_a FROM pair)) AS config_a,
           (SELECT config_json FROM run_records WHERE run_id = (SELECT run_b FROM pair)) AS config_b
),
leaves_a AS (SELECT fullkey, value FROM configs, json_tree(coalesce(configs.config_a, '{}')::JSON)
             WHERE type NOT IN ('OBJECT', 'ARRAY')),
leaves_b AS (SELECT fullkey, value FROM configs, json_tree(coalesce(configs.config_b, '{}')::JSON)
             WHERE type NOT IN ('OBJECT', 'ARRAY')),
settings AS (
    -- a list setting (class names, templates) is named once, not per element
    SELECT coalesce(list_sort(list(DISTINCT regexp_replace(regexp_replace(coalesce(la.fullkey, lb.fullkey),
                                                                          '\[[0-9]+\].*$', ''), '^\$\.', ''))),
                    []) AS settings_differ
    FROM leaves_a AS la FULL OUTER JOIN leaves_b AS lb ON la.fullkey = lb.fullkey
    WHERE la.value IS DISTINCT FROM lb.value
),
tested AS (
    SELECT *,
           correct_a / nullif(n_ok_a, 0) AS accuracy_a,
           correct_b / nullif(n_ok_b, 0) AS accuracy_b,
           CASE WHEN n_rows_a > 0 AND n_rows_b > 0 THEN mcnemar_p(n_broken, n_fixed) END AS p_value
    FROM counts
)
SELECT (SELECT run_a FROM pair) AS run_a,
       (SELECT run_b FROM pair) AS run_b,
       dataset,
       model,
       method,
       CASE WHEN all_classes THEN 'method' ELSE 'class' END AS scope,
       label,
       CASE WHEN all_classes THEN NULL ELSE class_name END AS class_name,
       n_ok_a,
       n_ok_b,
       correct_a,
       correct_b,
       accuracy_a,
       accuracy_b,
       accuracy_b - accuracy_a AS change,
       n_paired,
       n_broken,
       n_fixed,
       p_value,
       coalesce(p_value < coalesce(CAST(getvariable('alpha') AS DOUBLE), 0.05), false) AS significant,
       coalesce(p_value < coalesce(CAST(getvariable('alpha') AS DOUBLE), 0.05) AND accuracy_b < accuracy_a, false) AS regressed,
       CASE WHEN n_rows_a = 0 THEN 'absent from run_a' WHEN n_rows_b = 0 THEN 'absent from run_b' ELSE 'both' END
           AS present,
       (SELECT settings_differ FROM settings) AS settings_differ
FROM tested;
