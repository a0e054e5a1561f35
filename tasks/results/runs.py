"""Run records: what ran, with which versions and weights, what it produced, and whether it is alive.

Why both JSON and Parquet: the JSON is for people and the report; the one-row
Parquet is what SQL joins (``runs`` view). Both are written atomically.

One truth about a run: ``abs-eval status``, the ``runs`` view, ``accuracy.run_status``,
``export`` and the report all read the run through SQL (``sql/views/10_sources.sql``
``run_records`` for the status, ``sql/views/21_runs.sql`` ``runs`` for the shards and
images), so they cannot disagree:

- **status** is the record's, with one rule for a record that says it is alive
  (``queued``, ``starting``, ``running``): once its lease (``expires_at``) has passed it
  reads ``interrupted`` (:func:`effective_status` is that rule in Python);
- **shards and images** are counted from the committed prediction parts (their rollups,
  or their rows), by the rule that says which rows a run stands for: the counts the
  ``accuracy`` view sums. The record's own counts are what the run wrote when it ended.

Why a heartbeat: a process killed with SIGKILL (or a lost machine) cannot write
``failed``, so a record would say ``running`` forever. While a run is alive,
:class:`RunTracker` rewrites its record every :data:`HEARTBEAT_S` seconds and moves
``expires_at`` :data:`LEASE_S` ahead. SQL cannot ask whether a process exists, so on the
machine that ran it a dead process is written down instead: whoever reads the root from
Python (``abs-eval status``, ``sql run``, ``export``, ``report``: :func:`tasks.results.catalog.connect`)
first calls :func:`reap_dead_runs`, which rewrites the record of a live-looking run whose
process is gone (same host, same boot, same pid namespace, and the pid is gone or belongs to
a newer process) as ``interrupted``. Elsewhere the lease says so after 5 minutes.

From the first second: ``abs-eval run`` calls :func:`announce_runs` before Prefect starts
(which takes ~45 s), writing a ``starting`` record (``queued`` for the later cells of a
matrix) with its own heartbeat; the flow takes the record over with :func:`claim_run_id`
and :class:`RunTracker`. A record that no flow took over (the job failed before its first
shard, its error already printed) is removed when the process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import re
import socket
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from importlib import metadata
from typing import Any

import pyarrow as pa

from tasks.store import Storage, as_storage
from tasks.store.paths import (
    run_dir,
    run_record_json,
    run_record_parquet,
    slug,
)
from tasks.store.tables import RUN_SCHEMA

_PACKAGES = (
    "abs-eval",
    "torch",
    "torchvision",
    "open_clip_torch",
    "timm",
    "prefect",
    "duckdb",
    "pyarrow",
    "fsspec",
    "pillow",
)

#: Seconds between two rewrites of a running run's record.
HEARTBEAT_S = 60.0
#: A running record not refreshed for this long belongs to a dead process.
LEASE_S = 300.0

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"
#: Written by ``abs-eval run`` before Prefect starts: the run's first cell (``starting``), the
#: later cells of a matrix (``queued``); the flow turns them into ``running``.
STARTING, QUEUED = "starting", "queued"
#: Statuses of a record whose process says it is alive (and keeps a lease).
LIVE = (QUEUED, STARTING, RUNNING)


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


# ---------------------------------------------------------------------- which process
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22); None when unknown or gone."""
    data = _read(f"/proc/{pid}/stat")
    if not data or ")" not in data:
        return None
    parts = data[data.rindex(")") + 2 :].split()
    try:
        return int(parts[19])
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """What tells this process apart from a later one with the same pid: the boot, the pid
    namespace and the start time (Linux; an empty dict elsewhere: then host and pid alone)."""
    pid = os.getpid() if pid is None else pid
    out: dict[str, Any] = {}
    boot = _read("/proc/sys/kernel/random/boot_id")
    if boot:
        out["boot_id"] = boot
    ns = _pid_namespace()
    if ns is not None:
        out["pid_ns"] = ns
    start = _start_ticks(pid)
    if start is not None:
        out["start"] = start
    return out


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
    #: grids and input sizes of the loaded models (``tasks.run.context.model_geometry``): what
    #: the stored grid-cell geometry means; JSON only (the report reads it)
    model_geometry: dict[str, int] = field(default_factory=dict)
    versions_json: dict[str, str] = field(default_factory=package_versions)
    heartbeat_at: datetime | None = None
    expires_at: datetime | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    #: boot id, pid namespace and start time of ``pid`` (:func:`process_identity`), so that a
    #: reader on the same host can tell "its process is gone" from "its pid is reused"; JSON only
    process: dict[str, Any] = field(default_factory=process_identity)
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

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunRecord:
        """A record as read back from its ``run.json`` (times parsed, unknown keys kept in ``extra``)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("started_at", "ended_at", "heartbeat_at", "expires_at"):
            if k in kw:
                kw[k] = _parse_time(kw[k])
        if kw.get("started_at") is None:
            kw.pop("started_at", None)
        for k in ("config_json", "versions_json"):
            if isinstance(kw.get(k), str):
                try:
                    kw[k] = json.loads(kw[k])
                except ValueError:
                    kw[k] = {}
        rest = {k: v for k, v in d.items() if k not in known}
        if rest:
            kw["extra"] = {**(kw.get("extra") or {}), **rest}
        return cls(**kw)


class RunTracker:
    """Owns one run's record while the run is alive: start, heartbeat, finish.

    The heartbeat runs on a daemon thread of the flow's process, so a shard that
    takes hours still keeps its run visibly alive. Every write goes through one
    lock, and nothing is written after :meth:`finish`, so a late heartbeat can
    never turn a ``completed`` record back into ``running``.

    Taking over: a tracker started for a run id that :func:`announce_runs` recorded in
    this process (``starting``) stops that record's heartbeat and keeps its start time.
    """

    def __init__(
        self, storage: Storage, record: RunRecord, heartbeat_s: float = HEARTBEAT_S, lease_s: float = LEASE_S
    ) -> None:
        self.storage, self.record = storage, record
        self.heartbeat_s, self.lease_s = heartbeat_s, lease_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        now = _now()
        self.record.heartbeat_at = now
        self.record.expires_at = now + timedelta(seconds=self.lease_s) if self.record.status in LIVE else None
        self.record.write(self.storage)

    def start(self, status: str = RUNNING) -> RunTracker:
        pending = _adopt(self.record.run_id)
        if pending is not None:
            self.record.started_at = pending.record.started_at
        with self._lock:
            self.record.status = status
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

    def set_status(self, status: str, **fields: Any) -> None:
        """Rewrite the live record now with another live status (``queued`` -> ``starting``)."""
        with self._lock:
            if self._stop.is_set():
                return
            for k, v in fields.items():
                setattr(self.record, k, v)
            self.record.status = status
            self._write()

    def stop(self) -> None:
        """Stop the heartbeat without writing (another tracker takes the record over, or it is removed)."""
        self._stop.set()
        with self._lock:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

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


# ---------------------------------------------------------------------- records before the flow
@dataclass
class _Pending:
    root: str  # Storage.url() of the root
    dataset: str  # slug
    model: str  # slug
    tracker: RunTracker
    claimed: bool = False


_PENDING: list[_Pending] = []
_PENDING_LOCK = threading.Lock()
_ATEXIT = False


def _model_name(clip_model: str, clip_pretrained: str | None) -> str:
    """``tasks.run.evalspec.EvalSpec.model_name`` from the parameters (without importing the models)."""
    if clip_pretrained in (None, "", "random"):
        return clip_model
    return f"{clip_model}/{str(clip_pretrained).rsplit('/', 1)[-1]}"


def announce_runs(params: Sequence[Any]) -> list[str]:
    """Record the evaluations ``abs-eval run`` is about to start, before Prefect and the models start.

    ``params``: checked :class:`flows.params.EvaluateParams` (one per cell). Each gets a run record
    at once, ``starting`` (the first cell) or ``queued`` (the later cells of a matrix), with this
    process's pid and host and a heartbeat, so ``abs-eval status`` and SQL show the run from its first
    second. The flow takes each record over (:func:`claim_run_id`, then :class:`RunTracker`); a record no
    flow took over is removed when this process ends (the job failed before it started; its error is
    printed), and one whose process was killed reads ``interrupted``. Returns the run ids; a root that
    cannot be written is left alone here (the job reports it itself).
    """
    global _ATEXIT
    ids = []
    for i, p in enumerate(params):
        try:
            st = as_storage(p.root)
            model = _model_name(p.clip_model, getattr(p, "clip_pretrained", None))
            rec = RunRecord(
                run_id=new_run_id(),
                dataset=p.dataset,
                model=model,
                config="",
                deployment=getattr(p, "deployment", None) or "manual",
                clip_model=p.clip_model,
                clip_pretrained=getattr(p, "clip_pretrained", None) or "random",
                dino_model=getattr(p, "dino_model", "") or "",
                dino_pretrained=getattr(p, "dino_pretrained", None) or "random",
            )
            tracker = RunTracker(st, rec).start(STARTING if i == 0 else QUEUED)
        except Exception:  # an unwritable root: the job fails with its own message
            continue
        with _PENDING_LOCK:
            _PENDING.append(_Pending(st.url(), slug(p.dataset), slug(model), tracker))
            if not _ATEXIT:
                atexit.register(release_pending)
                _ATEXIT = True
        ids.append(rec.run_id)
    if ids:  # in a command (typer/click): released when the command ends, not only when the process does
        try:
            import click

            ctx = click.get_current_context(silent=True)
        except ImportError:
            ctx = None
        if ctx is not None:
            ctx.call_on_close(release_pending)
    return ids


def claim_run_id(root: str | Storage, dataset: str, model: str) -> str:
    """The run id an evaluation of (``dataset``, CLIP ``model``) under ``root`` starts with: the one
    :func:`announce_runs` recorded in this process (now ``starting``), else a new one.

    Cells run in order: records announced before the claimed one that no flow took over are
    removed (their job failed before it started)."""
    key = (as_storage(root).url(), slug(dataset), slug(model))
    with _PENDING_LOCK:
        open_ = [p for p in _PENDING if (p.root, p.dataset) == key[:2] and not p.claimed]
        hit = next((p for p in open_ if p.model == key[2]), open_[0] if open_ else None)
        if hit is None:
            return new_run_id()
        hit.claimed = True
        earlier = list(_PENDING[: _PENDING.index(hit)])
    for p in earlier:
        _release(p)
    if hit.tracker.record.status == QUEUED:
        hit.tracker.set_status(STARTING, started_at=_now())
    return hit.tracker.record.run_id


def _adopt(run_id: str) -> RunTracker | None:
    """Hand the announced record ``run_id`` over to its flow's tracker; its heartbeat stops."""
    with _PENDING_LOCK:
        hit = next((p for p in _PENDING if p.tracker.record.run_id == run_id), None)
        if hit is not None:
            _PENDING.remove(hit)
    if hit is None:
        return None
    hit.tracker.stop()
    return hit.tracker


def _release(p: _Pending) -> None:
    with _PENDING_LOCK:
        if p in _PENDING:
            _PENDING.remove(p)
    p.tracker.stop()
    try:
        st = p.tracker.storage
        rec = st.read_json(run_record_json(p.tracker.record.run_id))
        if rec.get("status") in LIVE and rec.get("pid") == os.getpid():  # still ours, never taken over
            st.fs.rm(st.path(run_dir(p.tracker.record.run_id)), recursive=True)
    except Exception:
        pass


def release_pending() -> None:
    """Remove the announced records that no flow took over (at exit: their job never started)."""
    with _PENDING_LOCK:
        left = list(_PENDING)
    for p in left:
        _release(p)


# ---------------------------------------------------------------------- liveness
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
    """The status every reader shows (the ``run_records`` view's rule, in Python): a live record
    (``queued``, ``starting``, ``running``) whose lease (``expires_at``) has passed is ``interrupted``.

    Records written before the heartbeat existed have no lease and are judged by their start
    (one day). A dead process on this host is not judged here but written down by
    :func:`reap_dead_runs`, so that SQL, which cannot see processes, reads the same.
    """
    status = rec.get("status") or RUNNING
    if status not in LIVE:
        return status
    expires = _parse_time(rec.get("expires_at"))
    if expires is None:
        started = _parse_time(rec.get("started_at"))
        expires = started + timedelta(days=1) if started else None
    if expires is not None and (now or _now()) > expires:
        return INTERRUPTED
    return status


def owner_gone(rec: dict[str, Any]) -> bool:
    """Whether the process that wrote this live record is known to be gone: it ran on this host, in
    this boot and pid namespace (when the record says), and its pid no longer exists or now belongs
    to a process that started later. Anything else (another host, another boot or container: maybe
    another machine with the same name) is left to the lease."""
    if rec.get("host") != socket.gethostname() or not rec.get("pid"):
        return False
    pid = int(rec["pid"])
    if pid == os.getpid():
        return False
    then, here = rec.get("process") or {}, process_identity()
    for key in ("boot_id", "pid_ns"):
        if then.get(key) is not None and here.get(key) is not None and then[key] != here[key]:
            return False
    if not _pid_alive(pid):
        return True
    start = _start_ticks(pid)
    return then.get("start") is not None and start is not None and start != then["start"]


def reap_dead_runs(root: str | Storage, run_ids: Iterable[str] | None = None) -> list[str]:
    """Write ``interrupted`` into the record of every live-looking run (of ``run_ids``, default: all)
    whose process is gone (:func:`owner_gone`); returns their ids.

    Why here and not in SQL: SQL cannot ask whether a process exists, and every reader must show
    the same status. So the first reader on the run's machine that notices writes it down (with
    when and by whom in ``extra["interrupted"]``), and from then on the ``runs`` view, status, export
    and the report read ``interrupted`` from the record. A reader that cannot write (a read-only
    root) changes nothing: then everyone reads ``running`` until the lease passes.
    """
    st = as_storage(root)
    if run_ids is None:
        run_ids = list_run_ids(st)
    out = []
    for rid in run_ids:
        try:
            d = st.read_json(run_record_json(rid))
        except (OSError, ValueError):
            continue
        if (d.get("status") or RUNNING) not in LIVE or not owner_gone(d):
            continue
        rec = RunRecord.from_json(d)
        now = _now()
        rec.status, rec.expires_at = INTERRUPTED, None  # ended_at stays unknown: the run could not say
        rec.extra = {
            **rec.extra,
            "interrupted": {
                "observed_at": now.isoformat(),
                "by_pid": os.getpid(),
                "host": socket.gethostname(),
                "why": f"process {rec.pid} on {rec.host} is gone (last heartbeat {d.get('heartbeat_at')})",
            },
        }
        try:
            rec.write(st)
        except Exception:  # read-only root: the lease will say it
            continue
        out.append(rid)
    return out


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


#: Fields of the prediction settings (what the config hash covers) shown by name when they differ;
#: the long ones (class lists, subsets) are summarised.
_SUMMARISED = {"classes", "subset"}


def _prediction_settings(record: dict[str, Any]) -> dict[str, Any]:
    """A run record's prediction settings, ``config_json["numbers"]`` (the JSON may hold ``config_json`` as
    text). ``"numbers"`` is the key records have always been written with; it stays, so older roots compare."""
    cfg = record.get("config_json") or {}
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            return {}
    settings = cfg.get("numbers") if isinstance(cfg, dict) else None
    return settings if isinstance(settings, dict) else {}


def setting_differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings that differ between two run records (their JSON), by name: every field the
    config hash covers (ABS parameters, model names and weight digests, prompt, templates,
    description content, dataset fingerprint and class list), ``[{"setting", "before", "after"}]``.

    Why: two runs whose config hashes differ are compared as if they were the same method; a
    reader must see *what* changed (N=2 against N=60 is not a regression of the method).
    """
    na, nb = (_flat(_prediction_settings(r)) for r in (a, b))
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
    return sorted(
        (m.group(1) for p in st.glob(run_record_json("*")) if (m := re.search(r"run=([^/]+)/run\.json$", p))),
        reverse=True,
    )
