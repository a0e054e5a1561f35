-- Results in CLIP_benchmark's terms (zero-shot classification): acc1, acc5, mean per-class recall per run x method.
-- Parameters: run_ids (optional list: SET VARIABLE run_ids = ['r1', 'r2']), run_id (optional, one run);
--   both unset = the latest completed run of each dataset x model (runs.model: CLIP model and weights).
-- model / pretrained are the CLIP model name and its pretrained tag ('random' without weights) from the
-- run record; acc1 is the accuracy view's accuracy (over ok images), with its 95% Wilson interval.
-- abs-eval export writes one CLIP_benchmark JSON file per row (tasks.results.catalog.export_clip_benchmark).
WITH chosen AS (
    SELECT run_id
    FROM run_records
    WHERE getvariable('run_ids') IS NULL AND getvariable('run_id') IS NULL AND status = 'completed'
    QUALIFY row_number() OVER (PARTITION BY dataset, model ORDER BY started_at DESC, run_id DESC) = 1
    UNION
    SELECT run_id
    FROM run_records
    WHERE list_contains(CAST(getvariable('run_ids') AS VARCHAR[]), run_id) OR run_id = getvariable('run_id')
)
SELECT acc.dataset,
       r.clip_model AS model,
       coalesce(r.clip_pretrained, 'random') AS pretrained,
       'zeroshot_classification' AS task,
       'en' AS language,
       acc.accuracy AS acc1,
       acc.acc5,
       acc.mean_per_class_recall,
       acc.method,
       acc.run_id,
       acc.n,
       acc.n_ok,
       acc.n_error,
       acc.ci_low AS acc1_ci_low,
       acc.ci_high AS acc1_ci_high,
       acc.deployment,
       acc.config,
       acc.model AS model_slug,
       acc.run_status,
       acc.started_at,
       r.clip_weights_digest,
       r.dino_model,
       r.dino_pretrained,
       r.descriptions_hash,
       r.config_json
FROM accuracy_of((SELECT coalesce(list(run_id), CAST([] AS VARCHAR[])) FROM chosen)) AS acc
JOIN run_records AS r USING (run_id)
ORDER BY acc.dataset, model, pretrained, acc.method, acc.started_at, acc.run_id;
