-- Accuracy of every ABS variant of a run, beside the run itself: the paper's sensitivity curves
-- (N', M', tau) and ablations (raw-space crops only, feature-space only, plain averaging) from one
-- evaluation.
-- Answers: "how does accuracy move with N, M, tau, the crop branches, soft matching, and is the
--   difference more than the 95% interval?"
-- Parameters: none for the views (sql/queries/variant_accuracy.sql takes run_id and method).
--
-- What a variant is: the run records `abs-eval analyze` writes (flows/analyze.py): config_json.variant
-- = {of_run, of_config, name (what differs, e.g. 'tau=0.05', 'n_crops=20,crop_kinds=raw'), setting
-- (every VariantSpec field: n_crops, crop_kinds, n_descriptions, tau, matching), equals_fresh_run};
-- run id '<of_run>-<8 hex of its config>', its own config= partition (hashed like any run's).
--
-- variant_runs: one row per variant record and one per run that has variants (variant 'run',
-- is_run true), with the five settings spelled out (a run's own from config_json.numbers.abs:
-- crop_kinds 'both' / 'raw' / 'feature' from raw_crops / feature_crops, matching 'soft'), and
--   varied    the one setting this row changes from its run ('n_crops', 'n_descriptions', 'tau',
--             'crop_kinds', 'matching'); 'run' for the run itself; 'several' when more than one
--             differ (--cross); the curves read the single-setting rows
--   equals_fresh_run  true for the run and for variants that equal a fresh run with their setting
--             (tau, M', one crop branch); false for N' prefixes and plain averaging
-- variant_accuracy: variant_runs x method with the accuracy view's numbers (accuracy over ok rows,
-- its 95% Wilson interval, n, n_ok, correct, acc5, mean_per_class_recall).
CREATE OR REPLACE VIEW variant_runs AS
WITH recs AS (
    SELECT run_id, dataset, model, config, deployment, status, started_at,
           CAST(config_json AS JSON) AS cfg
    FROM run_records
    WHERE config_json IS NOT NULL
),
variants AS (
    SELECT run_id, dataset, model, config, deployment, status, started_at,
           json_extract_string(cfg, '$.variant.of_run') AS of_run,
           json_extract_string(cfg, '$.variant.name') AS variant,
           false AS is_run,
           coalesce(CAST(json_extract(cfg, '$.variant.equals_fresh_run') AS BOOLEAN), false) AS equals_fresh_run,
           CAST(json_extract(cfg, '$.variant.setting.n_crops') AS INTEGER) AS n_crops,
           json_extract_string(cfg, '$.variant.setting.crop_kinds') AS crop_kinds,
           CAST(json_extract(cfg, '$.variant.setting.n_descriptions') AS INTEGER) AS n_descriptions,
           CAST(json_extract(cfg, '$.variant.setting.tau') AS DOUBLE) AS tau,
           coalesce(json_extract_string(cfg, '$.variant.setting.matching'), 'soft') AS matching
    FROM recs
    WHERE json_extract(cfg, '$.variant.of_run') IS NOT NULL
),
base AS (
    SELECT run_id, dataset, model, config, deployment, status, started_at,
           run_id AS of_run,
           'run' AS variant,
           true AS is_run,
           true AS equals_fresh_run,
           CAST(json_extract(cfg, '$.numbers.abs.n_crops') AS INTEGER) AS n_crops,
           CASE WHEN coalesce(CAST(json_extract(cfg, '$.numbers.abs.raw_crops') AS BOOLEAN), true)
                 AND coalesce(CAST(json_extract(cfg, '$.numbers.abs.feature_crops') AS BOOLEAN), true) THEN 'both'
                WHEN coalesce(CAST(json_extract(cfg, '$.numbers.abs.raw_crops') AS BOOLEAN), true) THEN 'raw'
                ELSE 'feature' END AS crop_kinds,
           CAST(json_extract(cfg, '$.numbers.abs.n_descriptions') AS INTEGER) AS n_descriptions,
           CAST(json_extract(cfg, '$.numbers.abs.tau') AS DOUBLE) AS tau,
           'soft' AS matching
    FROM recs
    WHERE run_id IN (SELECT of_run FROM variants)
),
rows_ AS (
    FROM base
    UNION ALL BY NAME
    FROM variants
),
diffs AS (
    SELECT r.*,
           list_filter(['n_crops', 'n_descriptions', 'tau', 'crop_kinds', 'matching'],
                       lambda f: (f = 'n_crops' AND r.n_crops IS DISTINCT FROM b.n_crops)
                              OR (f = 'n_descriptions' AND r.n_descriptions IS DISTINCT FROM b.n_descriptions)
                              OR (f = 'tau' AND r.tau IS DISTINCT FROM b.tau)
                              OR (f = 'crop_kinds' AND r.crop_kinds IS DISTINCT FROM b.crop_kinds)
                              OR (f = 'matching' AND r.matching IS DISTINCT FROM b.matching)) AS changed
    FROM rows_ AS r
    LEFT JOIN base AS b ON b.run_id = r.of_run
)
SELECT of_run, run_id, variant,
       CASE WHEN is_run THEN 'run' WHEN len(changed) = 1 THEN changed[1] ELSE 'several' END AS varied,
       n_crops, crop_kinds, n_descriptions, tau, matching, equals_fresh_run, is_run,
       dataset, model, config, deployment, status, started_at
FROM diffs;

CREATE OR REPLACE VIEW variant_accuracy AS
SELECT v.of_run, v.run_id, v.variant, v.varied, v.n_crops, v.crop_kinds, v.n_descriptions, v.tau, v.matching,
       v.equals_fresh_run, v.is_run,
       a.method, a.accuracy, a.ci_low, a.ci_high, a.n, a.n_ok, a.n_error, a.correct, a.acc5, a.mean_per_class_recall,
       v.dataset, v.model, v.config, v.deployment, v.status, v.started_at
FROM variant_runs AS v
JOIN accuracy_of((SELECT list(run_id) FROM variant_runs)) AS a USING (run_id);
