-- Flipped images between run_a and run_b (see run_pair for how they are chosen).
-- Answers: exactly the (image, method) pairs whose prediction or status changed, with
-- both predictions, whether each was right, and a change label:
--   fixed (wrong -> right), broken (right -> wrong), changed (wrong -> other wrong, or
--   an ok/error status change without a difference in rightness), only_a / only_b (the
--   image x method is in one run only).
-- Parameters: run_a, run_b (DuckDB variables, via run_pair).
CREATE OR REPLACE VIEW compare_flips AS
WITH pair AS (FROM run_pair),
both_runs AS (FROM run_predictions_of((SELECT [run_a, run_b] FROM pair))),
a AS (SELECT * FROM both_runs WHERE run_id = (SELECT run_a FROM pair)),
b AS (SELECT * FROM both_runs WHERE run_id = (SELECT run_b FROM pair))
SELECT (SELECT run_a FROM pair) AS run_a,
       (SELECT run_b FROM pair) AS run_b,
       coalesce(a.image_id, b.image_id) AS image_id,
       coalesce(a.method, b.method) AS method,
       coalesce(b.shard, a.shard) AS shard,
       coalesce(b.label, a.label) AS label,
       coalesce(b.class_name, a.class_name) AS class_name,
       a.pred AS pred_a,
       a.pred_name AS pred_name_a,
       b.pred AS pred_b,
       b.pred_name AS pred_name_b,
       a.correct AS correct_a,
       b.correct AS correct_b,
       a.status AS status_a,
       b.status AS status_b,
       a.margin AS margin_a,
       b.margin AS margin_b,
       CASE
           WHEN a.image_id IS NULL THEN 'only_b'
           WHEN b.image_id IS NULL THEN 'only_a'
           WHEN b.correct AND NOT a.correct THEN 'fixed'
           WHEN a.correct AND NOT b.correct THEN 'broken'
           ELSE 'changed'
       END AS change
FROM a FULL OUTER JOIN b ON a.image_id = b.image_id AND a.method = b.method
WHERE a.image_id IS NULL
   OR b.image_id IS NULL
   OR a.pred IS DISTINCT FROM b.pred
   OR a.status IS DISTINCT FROM b.status;
