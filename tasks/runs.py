"""Run records: what ran, with which versions and weights, and what it produced.

Why both JSON and Parquet: the JSON is for people and the report; the one-row
Parquet is what SQL joins (``runs`` view). Both are written atomically; the
record is written when the run starts (status ``running``) and rewritten when it
ends (``completed`` / ``failed``), so a crashed run is visible as such.
"""

from __future__ import annotations

import json
import platform
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import pyarrow as pa

from tasks.schema import RUN_SCHEMA, run_record_json, run_record_parquet, slug
from tasks.storage import Storage

_PACKAGES = ("abs-eval", "torch", "torchvision", "open_clip_torch", "timm", "prefect", "duckdb", "pyarrow", "fsspec", "pillow")


def new_run_id() -> str:
    """Sortable by start time, unique across machines."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


@dataclass
class RunRecord:
    run_id: str
    dataset: str
    model: str
    config: str
    deployment: str = "manual"
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    ended_at: datetime | None = None
    status: str = "running"
    n_images: int = 0
    n_ok: int = 0
    n_error: int = 0
    shards_total: int = 0
    shards_computed: int = 0
    clip_model: str = ""
    clip_pretrained: str = ""
    clip_weights_digest: str = ""
    dino_model: str = ""
    dino_pretrained: str = ""
    dino_weights_digest: str = ""
    descriptions_hash: str = ""
    config_json: dict[str, Any] = field(default_factory=dict)
    versions_json: dict[str, str] = field(default_factory=package_versions)
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, storage: Storage) -> None:
        d = asdict(self)
        storage.write_json(run_record_json(self.run_id), d)
        row = {f.name: d.get(f.name) for f in RUN_SCHEMA}
        row["dataset"], row["model"] = slug(self.dataset), slug(self.model)
        row["config_json"] = json.dumps(self.config_json, sort_keys=True, default=str)
        row["versions_json"] = json.dumps(self.versions_json, sort_keys=True)
        storage.write_parquet(run_record_parquet(self.run_id), pa.Table.from_pylist([row], schema=RUN_SCHEMA))

    def finish(self, storage: Storage, status: str = "completed") -> None:
        self.status = status
        self.ended_at = datetime.now(timezone.utc)
        self.write(storage)


def read_run(storage: Storage, run_id: str) -> dict[str, Any]:
    return storage.read_json(run_record_json(run_id))
