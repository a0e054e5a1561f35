"""Arrow schemas and storage paths of the pipeline's tables, in one place.

Why one module: the inference task writes these tables, ``sql/`` reads them, and
tests build them by hand; a column renamed here is renamed for all three. Paths
use hive partitions (``key=value`` folders) so DuckDB exposes them as columns.
"""

from __future__ import annotations

import pyarrow as pa

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


def slug(text: str) -> str:
    """A partition-safe spelling of a model or dataset name (``ViT-B-16/openai`` -> ``ViT-B-16_openai``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def predictions_dir(dataset: str, model: str, config: str) -> str:
    return f"predictions/dataset={slug(dataset)}/model={slug(model)}/config={config}"


def prediction_part(dataset: str, model: str, config: str, shard: int) -> str:
    return f"{predictions_dir(dataset, model, config)}/part-{shard:05d}.parquet"


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


def dino_dir(model: str, key: str, dataset: str) -> str:
    """``key`` hashes the DINO weights digest and the preprocessing (see tasks.dino_cache)."""
    return f"cache/dino/model={slug(model)}/key={key}/dataset={slug(dataset)}"


def dino_part(model: str, key: str, dataset: str, shard: int) -> str:
    return f"{dino_dir(model, key, dataset)}/part-{shard:05d}.parquet"


def run_record_json(run_id: str) -> str:
    return f"runs/run={run_id}/run.json"


def run_record_parquet(run_id: str) -> str:
    return f"runs/run={run_id}/run.parquet"


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
        pa.field("config_json", pa.string()),  # everything that defines the numbers, as JSON
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
