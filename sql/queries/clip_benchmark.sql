-- Results in CLIP_benchmark's terms (zero-shot classification): acc1, acc5, mean per-class recall per run x method.
-- Parameters: run_ids (optional list: SET VARIABLE run_ids = ['r1', 'r2']), run_id (optional, one run);
--   both unset = the latest completed run of each dataset x model (runs.model: CLIP model and weights).
-- model / pretrained are the CLIP model name and its pretrained tag ('random' without weights) from the
-- run record (abs-eval export turns them into CLIP_benchmark names: tasks/results/export.py).
-- Denominators: acc1, acc5 and mean_per_class_recall are over the decoded images (n_ok), as in the
-- accuracy view; acc1_all counts the images that could not be read as wrong (over n, every image):
-- CLIP_benchmark stops at an image it cannot decode, so its acc1 is over every image, and the two
-- agree whenever n_error = 0. acc1_denominator says which one acc1 is ('n_ok').
-- acc5 is NaN when the rows rank fewer than 5 classes (classes_ranked: the length of a row's top5
-- list, min(5, classes scored)), as CLIP_benchmark reports it for a dataset of fewer than 5 classes;
-- NULL classes_ranked (no ok row has a top5 list) leaves acc5 as the accuracy view computes it.
-- abs-eval export writes one CLIP_benchmark JSON file per row (tasks.results.export.export_clip_benchmark).
WITH chosen AS (
    SELECT run_id
    FROM run_records
    WHERE getvariable('run_ids') IS NULL AND getvariable('run_id') IS NULL AND status = 'completed'
    QUALIFY row_number() OVER (PARTITION BY dataset, model ORDER BY started_at DESC, run_id DESC) = 1
    UNION
    SELECT run_id
    FROM run_records
    WHERE list_contains(CAST(getvariable('run_ids') AS VARCHAR[]), run_id) OR run_id = getvariable('run_id')
),
chosen_ids AS (
    SELECT coalesce(list(run_id), CAST([] AS VARCHAR[])) AS ids FROM chosen
),
ranked AS (
    SELECT run_id, method, max(len(top5)) AS classes_ranked
    FROM run_predictions_of((SELECT ids FROM chosen_ids))
    WHERE status = 'ok'
    GROUP BY run_id, method
)
SELECT acc.dataset,
       r.clip_model AS model,
       coalesce(r.clip_pretrained, 'random') AS pretrained,
       'zeroshot_classification' AS task,
       'en' AS language,
       acc.accuracy AS acc1,
       CASE WHEN k.classes_ranked < 5 THEN 'NaN'::DOUBLE ELSE acc.acc5 END AS acc5,
       acc.mean_per_class_recall,
       acc.method,
       acc.run_id,
       acc.n,
       acc.n_ok,
       acc.n_error,
       'n_ok' AS acc1_denominator,
       acc.accuracy_all AS acc1_all,
       acc.ci_low AS acc1_ci_low,
       acc.ci_high AS acc1_ci_high,
       k.classes_ranked,
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
FROM accuracy_of((SELECT ids FROM chosen_ids)) AS acc
JOIN run_records AS r USING (run_id)
LEFT JOIN ranked AS k USING (run_id, method)
ORDER BY acc.dataset, model, pretrained, acc.method, acc.started_at, acc.run_id;
