"""Every Arrow schema the pipeline writes, in one place (paths: ``tasks.store.paths``).

Why one module: the task modules write these tables, ``sql/`` reads them, and
tests build them by hand; a column renamed here is renamed for all three.
"""

from __future__ import annotations

import pyarrow as pa

# ---------------------------------------------------------------- shards (one row per image)
SHARD_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("class_name", pa.string()),
        pa.field("image", pa.binary()),  # original encoded bytes; null when unreadable
        pa.field("sha256", pa.string()),  # of the bytes read; null when none were
        pa.field("width", pa.int32()),  # as stored (before EXIF rotation); null when unknown
        pa.field("height", pa.int32()),
        pa.field("source", pa.string(), nullable=False),  # path in the source layout
        pa.field("status", pa.string(), nullable=False),  # 'ok' or one of tasks.store.images.ERROR_STATUSES
        pa.field("error", pa.string()),  # why, for error rows; null for ok rows
        pa.field("format", pa.string()),  # Pillow format (JPEG, PNG, ...)
        pa.field("mode", pa.string()),  # Pillow mode (RGB, CMYK, I;16, P, L, ...)
        pa.field("n_bytes", pa.int64()),  # file size
    ]
)

# ---------------------------------------------------------------- descriptions (one row per label x text)
DESCRIPTIONS_SCHEMA = pa.schema(
    [
        ("class_index", pa.int32()),  # label
        ("class_name", pa.string()),
        ("index", pa.int32()),  # position within the class, 0..count-1
        ("text", pa.string()),
        ("source", pa.string()),
    ]
)

# ---------------------------------------------------------------- text-embedding cache
TEXT_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # description, prompt or ensemble (tasks/run/text_cache.py)
        pa.field("class_index", pa.int32(), nullable=False),
        pa.field("index", pa.int32(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)

# ---------------------------------------------------------------- crop features (keep_features)
FEATURES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("crop_features", pa.list_(pa.list_(pa.float32()))),  # raw crops, then feature crops
        pa.field("global_feature", pa.list_(pa.float32())),
    ]
)

# ---------------------------------------------------------------- predictions
PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("label", pa.int32()),  # index into the dataset's class list (label order)
        pa.field("class_name", pa.string()),  # name of the true class
        pa.field("method", pa.string(), nullable=False),  # abs, clip, clip-e, cupl
        pa.field("pred", pa.int32()),  # predicted label (same index space as label); null on error rows
        pa.field("pred_name", pa.string()),
        pa.field("top5", pa.list_(pa.int32())),
        pa.field("score_true", pa.float32()),  # the true class's logit
        pa.field("margin", pa.float32()),  # true logit minus the best other logit (>0 means correct)
        pa.field("status", pa.string(), nullable=False),  # ok, or why not (from the shard row)
        pa.field("error", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),  # the run that computed this row
        # crop geometry, on the abs rows only (null on the baselines' rows)
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("dino_topk_indices", pa.list_(pa.int32())),
        pa.field("dino_topk_values", pa.list_(pa.float32())),
        pa.field("raw_boxes", pa.list_(pa.list_(pa.int32()))),  # [N][x0, y0, x1, y1], original pixels
        pa.field("feature_windows", pa.list_(pa.list_(pa.int32()))),  # [N][r0, r1, c0, c1], CLIP grid cells
    ]
)


# ---------------------------------------------------------------- DINO attention cache
DINO_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("grid", pa.int32()),  # D: attention is D*D cells, row-major
        pa.field("attention", pa.list_(pa.float32())),  # CLS-to-patch attention of the last block, head mean
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ]
)


# ---------------------------------------------------------------- run records (one row per run)
RUN_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("deployment", pa.string()),  # Prefect deployment name, or "manual"
        pa.field("dataset", pa.string(), nullable=False),  # slug, as in the prediction partitions
        pa.field("model", pa.string(), nullable=False),  # slug
        pa.field("config", pa.string(), nullable=False),  # config hash (prediction partition)
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("ended_at", pa.timestamp("us", tz="UTC")),
        pa.field("status", pa.string()),  # running / completed / failed as written (the runs view adds interrupted)
        pa.field("n_images", pa.int64()),
        pa.field("n_ok", pa.int64()),
        pa.field("n_error", pa.int64()),
        pa.field("shards_total", pa.int32()),
        pa.field("shards_computed", pa.int32()),  # computed by this run (the rest were already committed)
        pa.field("shards_reused", pa.int32()),  # committed by earlier runs and reused by this one
        pa.field("reused_shards", pa.list_(pa.int32())),  # which: committed before this run started
        pa.field("clip_model", pa.string()),
        pa.field("clip_pretrained", pa.string()),
        pa.field("clip_weights_digest", pa.string()),
        pa.field("dino_model", pa.string()),
        pa.field("dino_pretrained", pa.string()),
        pa.field("dino_weights_digest", pa.string()),
        pa.field("descriptions_hash", pa.string()),
        pa.field("config_json", pa.string()),  # {"spec", "numbers": the prediction settings}, as JSON
        pa.field("versions_json", pa.string()),  # package versions, as JSON
        # liveness: a running run rewrites its record every HEARTBEAT_S seconds, pushing
        # expires_at forward; a record still "running" after expires_at belongs to a
        # process that died (SIGKILL, power loss) and reads as "interrupted".
        pa.field("heartbeat_at", pa.timestamp("us", tz="UTC")),
        pa.field("expires_at", pa.timestamp("us", tz="UTC")),
        pa.field("host", pa.string()),  # where the flow process runs
        pa.field("pid", pa.int64()),
        pa.field("flow_run_id", pa.string()),  # Prefect flow run that owns this run
        pa.field("flow_run_name", pa.string()),
    ]
)


# ---------------------------------------------------------------- prediction rollups (one row per count group of a part)
# Counts of one prediction part (tasks.store.paths.rollup_part, beside prediction_part), what the
# aggregate views (accuracy, per_class_accuracy, confusions) read instead of the part's rows: one
# row per (run_id, shard, method, label, pred) of the part, pred NULL for rows without one (error
# rows). Sums of these counts over the parts of a run equal the counts over its raw rows
# (tasks.store.rollups.rollup_table builds them; sql/views/10_sources.sql reads them).
ROLLUP_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),  # the run that computed the part's rows
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("class_name", pa.string()),  # any of the group's class names (one per label)
        pa.field("pred", pa.int32()),
        pa.field("pred_name", pa.string()),
        pa.field("n", pa.int64(), nullable=False),  # rows
        pa.field("n_ok", pa.int64(), nullable=False),  # rows with status 'ok'
        pa.field("n_correct", pa.int64(), nullable=False),  # ok rows with pred = label
        pa.field("n_correct5", pa.int64(), nullable=False),  # ok rows whose top5 holds the label
    ]
)

# The summed counts of every part of a partition (tasks.store.paths.partition_rollup): the rows of
# ROLLUP_SCHEMA summed per (method, label, pred), without the computing run and shard.
PARTITION_ROLLUP_SCHEMA = pa.schema([f for f in ROLLUP_SCHEMA if f.name not in ("run_id", "shard")])

#: Rows per (computing run, shard, method) of a partition's parts (``rollups/<partition>/shards-all-<k>-<md5>.parquet``):
#: what the ``runs`` view counts a run's shards, images and errors from.
PART_COUNTS_SCHEMA = pa.schema([ROLLUP_SCHEMA.field(n) for n in ("run_id", "shard", "method", "n", "n_ok")])

#: The error rows of a prediction part (status <> 'ok'), committed beside its rollup
#: (``rollups/<partition>/errors-part-<n>.parquet``) and for a whole partition
#: (``errors-all-<k>-<md5>.parquet``): what the ``errors`` view reads instead of every row's status.
ERRORS_SCHEMA = pa.schema(
    [
        PREDICTION_SCHEMA.field(n)
        for n in ("run_id", "shard", "image_id", "method", "label", "class_name", "status", "error")
    ]
)
