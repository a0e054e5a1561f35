"""Run records: what ran, with which versions and weights, what it produced, and whether it is alive.

Why both JSON and Parquet: the JSON is for people and the report; the one-row
Parquet is what SQL joins (``runs`` view). Both are written atomically; the
record is written when the run starts (status ``running``) and rewritten when it
ends (``completed`` / ``failed``).

Why a heartbeat: a process killed with SIGKILL (or a lost machine) cannot write
``failed``, so a record would say ``running`` forever. While a run is alive,
:class:`RunTracker` rewrites its record every :data:`HEARTBEAT_S` seconds and moves
``expires_at`` :data:`LEASE_S` ahead; a ``running`` record past ``expires_at`` is
``interrupted`` (the ``runs`` view and :func:`effective_status` both apply this
rule). On the machine that ran it, a dead ``pid`` says so at once.
"""

from __future__ import annotations

import json
import os
import platform
import posixpath
import re
import socket
import threading
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import metadata
from typing import Any

import pyarrow as pa

from tasks.store import Storage, as_storage
from tasks.store.layout import (
    part_index,
    part_markers,
    predictions_dir,
    run_record_json,
    run_record_parquet,
    slug,
)
from tasks.store.tables import RUN_SCHEMA

_PACKAGES = ("abs-eval", "torch", "torchvision", "open_clip_torch", "timm", "prefect", "duckdb", "pyarrow", "fsspec", "pillow")

#: Seconds between two rewrites of a running run's record.
HEARTBEAT_S = 60.0
#: A running record not refreshed for this long belongs to a dead process.
LEASE_S = 300.0

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"


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


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class RunRecord:
    run_id: str
    dataset: str
    model: str
    config: str
    deployment: str = "manual"
    started_at: datetime = field(default_factory=_now)
    ended_at: datetime | None = None
    status: str = RUNNING
    n_images: int = 0
    n_ok: int = 0
    n_error: int = 0
    shards_total: int = 0
    shards_computed: int = 0
    shards_reused: int = 0
    reused_shards: list[int] = field(default_factory=list)
    clip_model: str = ""
    clip_pretrained: str = ""
    clip_weights_digest: str = ""
    dino_model: str = ""
    dino_pretrained: str = ""
    dino_weights_digest: str = ""
    descriptions_hash: str = ""
    config_json: dict[str, Any] = field(default_factory=dict)
    #: grids and input sizes of the loaded models (``tasks.context.model_geometry``): what
    #: the stored grid-cell geometry means; JSON only (the report reads it)
    model_geometry: dict[str, int] = field(default_factory=dict)
    versions_json: dict[str, str] = field(default_factory=package_versions)
    heartbeat_at: datetime | None = None
    expires_at: datetime | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, storage: Storage) -> None:
        d = asdict(self)
        storage.write_json(run_record_json(self.run_id), d)
        row = {f.name: d.get(f.name) for f in RUN_SCHEMA}
        row["dataset"], row["model"] = slug(self.dataset), slug(self.model)
        row["config_json"] = json.dumps(self.config_json, sort_keys=True, default=str)
        row["versions_json"] = json.dumps(self.versions_json, sort_keys=True)
        storage.write_parquet(run_record_parquet(self.run_id), pa.Table.from_pylist([row], schema=RUN_SCHEMA))


class RunTracker:
    """Owns one run's record while the run is alive: start, heartbeat, finish.

    The heartbeat runs on a daemon thread of the flow's process, so a shard that
    takes hours still keeps its run visibly alive. Every write goes through one
    lock, and nothing is written after :meth:`finish`, so a late heartbeat can
    never turn a ``completed`` record back into ``running``.
    """

    def __init__(self, storage: Storage, record: RunRecord, heartbeat_s: float = HEARTBEAT_S,
                 lease_s: float = LEASE_S) -> None:
        self.storage, self.record = storage, record
        self.heartbeat_s, self.lease_s = heartbeat_s, lease_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        now = _now()
        self.record.heartbeat_at = now
        self.record.expires_at = now + timedelta(seconds=self.lease_s) if self.record.status == RUNNING else None
        self.record.write(self.storage)

    def start(self) -> RunTracker:
        with self._lock:
            self.record.status = RUNNING
            self._write()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.record.run_id}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._write()
                except Exception:  # a storage hiccup must not kill the run; the next beat retries
                    pass

    def finish(self, status: str, **fields: Any) -> RunRecord:
        """Write the final record (``completed`` / ``failed``) and stop the heartbeat."""
        self._stop.set()
        with self._lock:
            for k, v in fields.items():
                setattr(self.record, k, v)
            self.record.status = status
            self.record.ended_at = _now()
            self._write()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.record


def _parse_time(v: Any) -> datetime | None:
    if v is None or isinstance(v, datetime):
        return v
    try:
        return datetime.fromisoformat(str(v))
    except ValueError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def effective_status(rec: dict[str, Any], now: datetime | None = None) -> str:
    """The status a person should see: ``running`` records of dead processes read ``interrupted``.

    Dead means: on this host, its pid no longer exists; anywhere, its lease
    (``expires_at``) has passed without a heartbeat. Records written before the
    heartbeat existed have no lease and are judged by their start (one day).
    """
    status = rec.get("status") or RUNNING
    if status != RUNNING:
        return status
    if rec.get("host") == socket.gethostname() and rec.get("pid") and not _pid_alive(int(rec["pid"])):
        return INTERRUPTED
    expires = _parse_time(rec.get("expires_at"))
    if expires is None:
        started = _parse_time(rec.get("started_at"))
        expires = started + timedelta(days=1) if started else None
    if expires is not None and (now or _now()) > expires:
        return INTERRUPTED
    return RUNNING


def read_run(storage: Storage, run_id: str) -> dict[str, Any]:
    """A run's JSON record; ``KeyError`` naming the root when there is no such run."""
    rel = run_record_json(run_id)
    if not storage.exists(rel):
        raise KeyError(f"no run {run_id!r} under {storage.root} (see `abs-eval status --root {storage.root}`)")
    return storage.read_json(rel)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


#: Fields of ``config_json["numbers"]`` (what the config hash covers) shown by name when they differ;
#: the long ones (class lists, subsets) are summarised.
_SUMMARISED = {"classes", "subset"}


def _numbers(record: dict[str, Any]) -> dict[str, Any]:
    """``config_json["numbers"]`` of a run record (the JSON may hold ``config_json`` as text)."""
    cfg = record.get("config_json") or {}
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            return {}
    numbers = cfg.get("numbers") if isinstance(cfg, dict) else None
    return numbers if isinstance(numbers, dict) else {}


def setting_differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings that differ between two run records (their JSON), by name: every field the
    config hash covers (ABS parameters, model names and weight digests, prompt, templates,
    description content, dataset fingerprint and class list), ``[{"setting", "before", "after"}]``.

    Why: two runs whose config hashes differ are compared as if they were the same method; a
    reader must see *what* changed (N=2 against N=60 is not a regression of the method).
    """
    na, nb = (_flat(_numbers(r)) for r in (a, b))
    out = []
    for key in sorted(set(na) | set(nb)):
        va, vb = na.get(key), nb.get(key)
        if va == vb:
            continue
        top = key.split(".")[0]
        if top in _SUMMARISED:
            va = None if va is None else f"{len(va)} entries" if isinstance(va, list) else va
            vb = None if vb is None else f"{len(vb)} entries" if isinstance(vb, list) else vb
            if va == vb:
                va, vb = "one list", "another list of the same length"
        out.append({"setting": key, "before": va, "after": vb})
    return out


def list_run_ids(root: str | Storage) -> list[str]:
    """Run ids under ``root``, newest first (ids sort by start time)."""
    st = as_storage(root)
    return sorted((re.search(r"run=([^/]+)/run\.json$", p).group(1) for p in st.glob(run_record_json("*"))),
                  reverse=True)


def run_progress(root: str | Storage, run_id: str | None = None, latest: int = 10) -> list[dict[str, Any]]:
    """Per run: effective status (interrupted when its process died), shards done / computed / reused.

    Why from markers (no SQL): a run in progress has committed some prediction parts;
    the done-markers under its (dataset, model, config) partition carry the run that
    computed each part and its error count. ``computed`` counts the prediction parts whose marker names this run; ``reused``
    the parts of the same partition committed by other runs (a resumed run reuses
    what a crashed one committed). ``KeyError`` for an unknown ``run_id``.
    """
    st = as_storage(root)
    ids = list_run_ids(st)
    if run_id is not None:
        if run_id not in ids:
            known = f"; latest: {', '.join(ids[:3])}" if ids else "; it holds no runs"
            raise KeyError(f"no run {run_id!r} under {st.root}{known}")
        ids = [run_id]
    out = []
    for rid in ids[:latest]:
        rec = st.read_json(run_record_json(rid))
        status = effective_status(rec)
        reused = set(rec.get("reused_shards") or [])
        n_images = n_error = computed = done = 0
        for m in st.glob(part_markers(predictions_dir(rec["dataset"], rec["model"], rec["config"]))):
            shard = part_index(m)
            d = st.read_json(posixpath.relpath(m, st.root_path))
            mine = d.get("run_id") == rid
            # a completed run stands for its whole partition; an unfinished one only for
            # what it computed plus what was committed before it started
            if status != "completed" and not mine and shard not in reused:
                continue
            done += 1
            computed += mine
            n_images += d.get("n_images", 0)
            n_error += d.get("n_error", 0)
        out.append({"run_id": rid, "status": status, "dataset": rec["dataset"], "model": rec["model"],
                    "config": rec["config"], "deployment": rec.get("deployment"),
                    "shards_total": rec.get("shards_total", 0), "shards_done": done,
                    "shards_computed": computed, "shards_reused": done - computed,
                    "n_images": n_images, "n_error": n_error, "started_at": rec.get("started_at"),
                    "ended_at": rec.get("ended_at"), "flow_run_id": rec.get("flow_run_id")})
    return out
