-- Full DINO attention maps from the DINO cache (cache/dino/), one row per image x cached DINO variant.
-- Parameters: dataset (optional DuckDB variable; unset = every dataset), image_ids (optional list:
--   SET VARIABLE image_ids = ['img-1', 'img-2']; unset = every image).
-- Maps computed without error only. attention: grid x grid floats, row-major. model and variant name the
-- cache folder (the DINO model, and its weights / preprocessing key), not a run: the report's gallery draws
-- a map under ABS's crops only when it holds the row's stored top-K values at its top-K cells
-- (tasks/results/report/gallery.py), so another DINO's map is never shown as the one ABS used.
SELECT image_id, dataset, model, variant, grid, attention
FROM dino_attention
WHERE status = 'ok'
  AND (getvariable('dataset') IS NULL OR dataset = getvariable('dataset'))
  AND (getvariable('image_ids') IS NULL OR list_contains(CAST(getvariable('image_ids') AS VARCHAR[]), image_id))
ORDER BY dataset, image_id, model, variant;
