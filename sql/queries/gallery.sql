-- Gallery candidates of one run: images method_a got right and method_b got wrong
-- (kind = 'a_only'), and the reverse (kind = 'b_only'), with method_a's crop geometry.
-- margin_a / margin_b: each method's true-class score minus its best other class's (> 0: right);
-- score_true_a / score_true_b: the true class's score (the report checks its recomputation against it).
-- Parameters: run_id (required), method_a (default 'abs'), method_b (default 'clip'),
--   top_k (default 4: images per kind; the most confident winner first, by margin).
WITH a AS (
    SELECT * FROM run_predictions
    WHERE run_id = getvariable('run_id') AND method = coalesce(getvariable('method_a'), 'abs')
),
b AS (
    SELECT * FROM run_predictions
    WHERE run_id = getvariable('run_id') AND method = coalesce(getvariable('method_b'), 'clip')
),
disagreements AS (
    SELECT CASE WHEN a.correct THEN 'a_only' ELSE 'b_only' END AS kind,
           a.run_id, a.dataset, a.image_id, a.shard, a.label, a.class_name,
           a.method AS method_a, a.pred AS pred_a, a.pred_name AS pred_name_a, a.margin AS margin_a,
           b.method AS method_b, b.pred AS pred_b, b.pred_name AS pred_name_b, b.margin AS margin_b,
           a.score_true AS score_true_a, b.score_true AS score_true_b,
           a.width, a.height, a.dino_topk_indices, a.dino_topk_values, a.raw_boxes, a.feature_windows
    FROM a JOIN b USING (image_id)
    WHERE a.correct <> b.correct
)
SELECT *
FROM disagreements
QUALIFY row_number() OVER (
            PARTITION BY kind
            ORDER BY CASE WHEN kind = 'a_only' THEN margin_a ELSE margin_b END DESC NULLS LAST, image_id
        ) <= CAST(coalesce(getvariable('top_k'), 4) AS INTEGER)
ORDER BY kind, image_id;
