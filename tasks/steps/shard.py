"""Shard a dataset source into immutable Parquet files under a storage root.

Sharding is the first step of every evaluation and the place where bad files are
caught: every image is read once, its original bytes kept (never re-encoded),
hashed, opened and fully decoded with Pillow. A file that cannot be read or
decoded becomes a row with ``status`` and ``error`` instead of stopping the
shard or disappearing; decodable oddities (CMYK, 16-bit, palette, grayscale,
1x1) stay ``ok`` and are converted to RGB later, at model input.

Storage layout under the root (all writes go through :class:`tasks.store.Storage`; paths: ``tasks.store.paths``)::

    shards/dataset=<ds>/part-00000.parquet          rows, schema SHARD_SCHEMA
    shards/dataset=<ds>/dataset.json                classes, text classes, subset indices,
                                                    layout, source, fingerprint, counts, shards
    _commits/shards/dataset=<ds>/part-00000.json    per-shard done-marker (fingerprint, counts)
    _commits/shards/dataset=<ds>/dataset.json       dataset done-marker, written after dataset.json

There is deliberately no fingerprint level in the path: a dataset name has one
current sharding, which later steps find by the plain glob
``shards/dataset=<ds>/part-*.parquet`` (once the dataset marker exists) and key
their own caches by (shard index, dataset fingerprint). When the fingerprint
changes (other files, classes, ``images_per_shard`` or decode limits),
:func:`prepare_shards` first removes the dataset marker and metadata, then every
part marker of another fingerprint and every part beyond the new plan, so no
shard of the old fingerprint stays committed and readers see "incomplete" until
every part has been rewritten and the dataset finalized.

Rerun rule: a shard is skipped when its marker exists with the current
fingerprint and its file is there; anything else is (re)written, by an atomic
move over the old file. A crash between moving a part into place and writing its
marker only costs that one shard. Because nothing that a run of the same plan
may be writing is ever deleted, two runs over the same source and root can run
at once (see :func:`prepare_shards`).

Undecodable file names (bytes that are not UTF-8) are opened by their real name
and stored escaped (``bad\\xff.jpg``) in ``image_id`` and ``source``.

Determinism: shard ``i`` holds entries ``[i*n, (i+1)*n)`` of the layout's fixed
order; ``image_id`` is the layout's stable id (the path below its image folder).

Where the work runs: reading, hashing and decoding (the bulk: a full JPEG decode
is ~2 ms) run in worker processes (``workers``, default the CPUs) for whole files
on a local disk, read with plain ``open()``; this process plans, builds the Arrow
table and writes the files, in the plan's order, so the bytes are the same as
when everything runs here (``workers=0``: reader threads, also the path for
buckets, ``memory://``, tar members and Parquet rows). Workers import only
:mod:`tasks.store.images` (no torch, no Prefect, no pyarrow); this module imports
Prefect only when ``shard_task`` is first used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from PIL import ImageFile
from tqdm.auto import tqdm

from tasks.datasets import (
    DatasetSource,
    Entry,
    LayoutError,
    SingleClassWarning,
    escape_undecodable,
    load_source,
)
from tasks.datasets.base import EntryReadError, update_with_entries
from tasks.datasets.listing import display, warn_user
from tasks.defaults import IMAGES_PER_SHARD as DEFAULT_IMAGES_PER_SHARD
from tasks.defaults import MAX_FILE_BYTES as DEFAULT_MAX_FILE_BYTES
from tasks.store import Storage, as_storage, commits, is_local
from tasks.store.datasets import (  # the read side lives in the store; re-exported for older callers
    DatasetInfo,
    ShardResult,
    iter_shards,
    list_datasets,
    list_shards,
    read_dataset_info,
    read_shard,
)
from tasks.store.images import (
    STATUS_MISSING,
    STATUS_OK,
    STATUS_TOO_LARGE,
    STATUS_UNREADABLE,
    check_bytes,
    check_files,
    init_check_worker,
    pil_settings,
    pixel_limit,
    read_local_file,
)
from tasks.store.markers import DatasetMarker, ShardPartMarker
from tasks.store.paths import (
    dataset_dir,
    dataset_info,
    is_valid_name,
    part_index,
    part_markers,
    shard_part,
)
from tasks.store.tables import SHARD_SCHEMA

SCHEMA_VERSION = 1
#: Parquet row groups: small enough that a reader can stream a shard in pieces.
ROWS_PER_GROUP = 128
#: Arrow binary arrays hold at most 2 GiB; start a new batch well before that.
_MAX_BATCH_BYTES = 512 * 2**20

_SMALL_COLUMNS = [f.name for f in SHARD_SCHEMA if f.name != "image"]
_PARQUET_OPTIONS: dict[str, Any] = {
    "row_group_size": ROWS_PER_GROUP,
    # Image bytes are already compressed: compressing them again only burns CPU.
    "compression": {**{c: "SNAPPY" for c in _SMALL_COLUMNS}, "image": "NONE"},
    "use_dictionary": ["label", "class_name", "status", "format", "mode"],
    # min/max statistics of megabyte blobs are useless and bloat the footer.
    "write_statistics": ["image_id", "label", "width", "height", "status"],
}

#: Environment variable that sets the default number of shard worker processes
#: (``0`` or ``1``: read and check in this process, on threads).
WORKERS_ENV = "ABS_EVAL_SHARD_WORKERS"
#: Fewer images than this to write are read and checked in this process: starting
#: worker processes (about half a second) costs more than it saves on small sets.
MIN_IMAGES_FOR_PROCESSES = 256
#: Images per task sent to a worker process (bytes come back per task: ~2 MB for photos).
IMAGES_PER_TASK = 16
#: Tasks kept in flight per worker process, across shard boundaries, so the workers
#: keep decoding while this process writes a finished shard.
TASKS_IN_FLIGHT_PER_WORKER = 8
#: Reader threads of the in-process path (I/O bound on buckets; Pillow and hashlib release the GIL).
READ_THREADS = 4


def default_workers() -> int:
    """Shard worker processes when not given: ``$ABS_EVAL_SHARD_WORKERS``, else one more than the usable CPUs.

    Why one more: this process also works (it builds and writes each shard's Parquet file),
    and a worker whose file is not in the page cache waits on the disk. With exactly one
    worker per CPU those waits left a core idle: on 50,000 ImageNet-size JPEGs on 2 cores the
    whole command ran at 632 images/s (85% CPU share) with 2 workers and 699 images/s (89%)
    with 3, side by side (``benchmarks/bench_shard.py --images 50000 --baseline``); with the
    files not yet in the page cache, 506 (71%) against 675 (87%). The extra worker costs ~60 MB.
    """
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return cpus + 1 if cpus > 1 else 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ShardReadError(RuntimeError):
    """Reading from a remote source kept failing for a reason that is not about one file.

    Raised instead of writing an error row, because a network outage must not be
    committed as permanently broken images; the shard is retried instead.
    """


_ROW_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def _read_entry(
    source: DatasetSource, entry: Entry, max_file_bytes: int | None, retries: int = 2
) -> tuple[bytes | None, str | None, str | None]:
    """``(bytes, None, None)`` or ``(None, status, error)`` for one entry.

    The bytes come from ``source.read_entry_bytes`` (a whole file for most
    layouts; a tar member or a Parquet row for others); an
    :class:`~tasks.datasets.base.EntryReadError` it raises is an error row as is.
    """
    fs, path = source.resolve(entry)
    if entry.regular is False:
        return None, STATUS_UNREADABLE, f"not a regular file (FIFO, socket or broken link): {display(fs, path)}"
    if max_file_bytes is not None and entry.size is not None and entry.size > max_file_bytes:
        return None, STATUS_TOO_LARGE, f"{entry.size} bytes exceeds max_file_bytes={max_file_bytes}"
    local = is_local(fs)
    if local and _reads_whole_files(source):
        got = read_local_file(fs._strip_protocol(path), entry.regular is None)  # plain open(), not fsspec's opener
        if got is not None:
            return got
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            if entry.regular is None and local and fs.info(path).get("type") != "file":
                return None, STATUS_UNREADABLE, f"not a regular file: {display(fs, path)}"
            return source.read_entry_bytes(entry), None, None
        except EntryReadError as e:
            return None, e.status, str(e)
        except FileNotFoundError:
            return None, STATUS_MISSING, f"file not found: {display(fs, path)}"
        except _ROW_ERRORS as e:
            return None, STATUS_UNREADABLE, f"{type(e).__name__}: {e}"
        except OSError as e:
            if local:  # an I/O error on a local disk is about this file
                return None, STATUS_UNREADABLE, f"{type(e).__name__}: {e}"
            last = e
        except Exception as e:  # remote client errors (timeouts, throttling)
            last = e
        if attempt < retries:
            time.sleep(0.5 * 2**attempt)
    raise ShardReadError(
        escape_undecodable(f"reading {display(fs, path)} failed {retries + 1} times: {type(last).__name__}: {last}")
    ) from last


def _reads_whole_files(source: DatasetSource) -> bool:
    """Whether ``source`` reads an entry as the whole file at :meth:`~DatasetSource.resolve` (most layouts).

    Such files on a local disk are read with plain ``open()`` (here or in a worker
    process); layouts that read parts of files (tar members, Parquet rows) keep
    their own reader.
    """
    return type(source).read_entry_bytes is DatasetSource.read_entry_bytes


def _row(
    source: DatasetSource, entry: Entry, status: str | None, error: str | None, checked: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The shard row of ``entry``: its read outcome, then the columns :func:`check_bytes` gave for its bytes."""
    row: dict[str, Any] = {
        "image_id": escape_undecodable(entry.image_id),
        "label": entry.label,
        "class_name": escape_undecodable(source.classnames[entry.label]),
        "image": None,
        "sha256": None,
        "width": None,
        "height": None,
        "source": escape_undecodable(entry.path),
        "status": status,
        "error": None if error is None else escape_undecodable(error),
        "format": None,
        "mode": None,
        "n_bytes": entry.size if entry.regular is not False else None,
    }
    if checked is not None:
        row.update(checked)
        if row["error"] is not None:
            row["error"] = escape_undecodable(row["error"])
    return row


def build_row(
    source: DatasetSource, entry: Entry, *, max_image_pixels: int | None, max_file_bytes: int | None
) -> dict[str, Any]:
    """One shard row for ``entry``: read once, hash, decode once (in this process).

    The file is opened by its real name (``entry.path``, undecodable bytes
    included); every text column holds valid UTF-8 (:func:`escape_undecodable`),
    so a file name that is not UTF-8 can never make the shard's Arrow batch fail.
    Worker processes produce the same rows (:class:`_ProcessRows`).
    """
    data, status, error = _read_entry(source, entry, max_file_bytes)
    return _row(
        source, entry, status, error, None if data is None else check_bytes(data, max_file_bytes, max_image_pixels)
    )


def _record_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """``pa.RecordBatch.from_pylist(rows, schema=SHARD_SCHEMA)``, built column by column (a few times faster)."""
    return pa.RecordBatch.from_arrays(
        [pa.array([r[f.name] for r in rows], type=f.type) for f in SHARD_SCHEMA], schema=SHARD_SCHEMA
    )


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> table, in batches that stay far below Arrow's 2 GiB binary limit."""
    batches: list[pa.RecordBatch] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        n = len(row["image"] or b"")
        if batch and (len(batch) >= ROWS_PER_GROUP or size + n > _MAX_BATCH_BYTES):
            batches.append(_record_batch(batch))
            batch, size = [], 0
        batch.append(row)
        size += n
    if batch:
        batches.append(_record_batch(batch))
    return pa.Table.from_batches(batches, schema=SHARD_SCHEMA)


# ---------------------------------------------------------------------- plan / results
@dataclass
class ShardPlan:
    """Everything needed to write any shard of a dataset, on any worker.

    ``fingerprint`` covers the source fingerprint and every setting that changes
    the rows (``images_per_shard``, decode limits, schema version); markers carry
    it and a rerun skips only shards committed with the same value.
    """

    dataset: str
    source: DatasetSource
    images_per_shard: int
    max_image_pixels: int | None
    max_file_bytes: int | None
    source_fingerprint: str
    fingerprint: str

    @property
    def n_shards(self) -> int:
        return math.ceil(len(self.source.entries) / self.images_per_shard)

    @property
    def n_images(self) -> int:
        return len(self.source.entries)

    @property
    def n_classes_present(self) -> int:
        """Distinct labels among the images (``1``: scored trivially at 100%, see :func:`shard_dataset`)."""
        return self.source.n_classes_present

    def entries(self, index: int) -> list[Entry]:
        if not 0 <= index < self.n_shards:
            raise IndexError(f"shard {index} out of range 0..{self.n_shards - 1}")
        n = self.images_per_shard
        return self.source.entries[index * n : (index + 1) * n]

    def shard_digest(self, index: int) -> str:
        h = hashlib.sha256()
        update_with_entries(h, self.entries(index))
        return h.hexdigest()


@dataclass
class ShardManifest:
    """Result of :func:`shard_dataset`: per-shard counts and paths, which shards this run wrote."""

    dataset: str
    layout: str
    source: str
    root: str
    fingerprint: str
    source_fingerprint: str
    images_per_shard: int
    expected_size: int | None
    info_path: str
    shards: list[ShardResult] = field(default_factory=list)

    @property
    def n_total(self) -> int:
        return sum(s.n_total for s in self.shards)

    @property
    def n_ok(self) -> int:
        return sum(s.n_ok for s in self.shards)

    @property
    def n_error(self) -> int:
        return sum(s.n_error for s in self.shards)

    @property
    def written(self) -> list[int]:
        return [s.index for s in self.shards if not s.skipped]

    @property
    def skipped(self) -> list[int]:
        return [s.index for s in self.shards if s.skipped]

    @property
    def status_counts(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for s in self.shards:
            c.update(s.status_counts)
        return dict(sorted(c.items()))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(n_total=self.n_total, n_ok=self.n_ok, n_error=self.n_error, written=self.written, skipped=self.skipped)
        return d


def _check_name(name: str) -> str:
    if not is_valid_name(name):
        raise ValueError(
            f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (it becomes a path and a hive value)"
        )
    return name


def plan_shards(
    layout: str | DatasetSource,
    source: str | None = None,
    dataset_name: str | None = None,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    *,
    split: str | None = None,
    layout_options: Mapping[str, Any] | None = None,
    source_storage_options: Mapping[str, Any] | None = None,
    max_image_pixels: int | None = None,
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
) -> ShardPlan:
    """Load the source through its layout and fix the shard boundaries and fingerprint.

    ``layout`` is a registered layout name (then ``source`` is its URL) or an
    already loaded :class:`DatasetSource`. Nothing is written. A source that does
    not fit its layout, or holds no image at all, raises
    :class:`~tasks.datasets.LayoutError` (a ``ValueError``) naming the path.
    ``plan.n_classes_present`` tells a one-class dataset apart.
    """
    if images_per_shard < 1:
        raise ValueError("images_per_shard must be at least 1")
    if isinstance(layout, DatasetSource):
        ds = layout
    else:
        if source is None:
            raise ValueError("give the source URL of the dataset")
        ds = load_source(
            layout, source, split=split, storage_options=source_storage_options, **dict(layout_options or {})
        )
    if not ds.entries:
        raise LayoutError(f"{ds.layout}: no images found in {ds.url}; expected at least one image to shard")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated images will decode and be marked ok",
            RuntimeWarning,
            stacklevel=2,
        )
    limit = pixel_limit(max_image_pixels)
    source_fp = ds.fingerprint()
    settings = {
        "schema_version": SCHEMA_VERSION,
        "source_fingerprint": source_fp,
        "images_per_shard": images_per_shard,
        "max_image_pixels": limit,
        "max_file_bytes": max_file_bytes,
    }
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return ShardPlan(
        dataset=_check_name(dataset_name or ds.name),
        source=ds,
        images_per_shard=images_per_shard,
        max_image_pixels=limit,
        max_file_bytes=max_file_bytes,
        source_fingerprint=source_fp,
        fingerprint=fingerprint,
    )


def prepare_shards(plan: ShardPlan, storage: str | Storage, *, force: bool = False) -> list[str]:
    """Remove what provably does not belong to ``plan`` before writing; returns removed paths.

    Run once per dataset before its shards are written (by any number of workers
    or whole runs at once). What it removes, and why nothing else:

    * the dataset marker and ``dataset.json`` when they name another fingerprint
      (marker first), so readers see "incomplete" until this plan is finalized;
    * the marker of every part whose marker names another fingerprint, so
      :func:`write_shard` rewrites that part;
    * the marker and then the file of every part whose index is beyond the plan
      (``>= plan.n_shards``): no run of this plan ever writes such a part.

    It never removes a part *file* within the plan, nor a marker that names the
    plan's fingerprint. A part file without a (current) marker is either in
    flight (another run of the same plan has just moved it into place and is
    about to write its marker) or stale (a crash, another fingerprint); both are
    left alone, because :func:`write_shard` rewrites every part that lacks a
    current marker by an atomic move over the old file. Two runs of the same plan
    therefore never destroy each other's work: each writes the same bytes for the
    same part and the same marker (up to its timestamp), the last move wins
    harmlessly, and whichever finalizes last writes the same ``dataset.json``.
    The remaining window is a stale marker read by one run just before a second
    run of the same plan replaced it: the first run then removes the fresh
    marker, and rewrites that part itself moments later (it writes every part
    without a marker). Runs of *different* fingerprints on one dataset name at
    the same time are not supported (they would keep replacing each other's
    shards); run them one after the other. ``force=True`` removes the dataset
    marker and metadata and every part marker (so everything is rewritten), but
    still no part file within the plan.
    """
    st = as_storage(storage)
    ds = plan.dataset
    removed: list[str] = []
    info_marker = commits.marker_of(st, dataset_info(ds))
    stale_info = force or (info_marker is not None and info_marker.get("fingerprint") != plan.fingerprint)
    if not stale_info and info_marker is None:
        info = commits.read_json_or_none(st, dataset_info(ds))
        stale_info = info is not None and info.get("fingerprint") != plan.fingerprint
    if stale_info:
        removed += commits.uncommit(st, dataset_info(ds))
    indices: set[int] = set()
    for pattern in (f"{dataset_dir(ds)}/part-*.parquet", part_markers(dataset_dir(ds))):
        for p in st.glob(pattern):
            index = part_index(p)
            if index is not None:
                indices.add(index)
    for i in sorted(indices):
        part_rel = shard_part(ds, i)
        if i >= plan.n_shards:
            removed += commits.uncommit(st, part_rel)  # marker first: never a marker without its file
        else:
            marker = commits.marker_of(st, part_rel)
            foreign = marker is not None and marker.get("fingerprint") != plan.fingerprint
            if foreign or (force and marker is not None):
                removed += commits.uncommit(st, part_rel, data=False)
    return removed


def _committed(storage: Storage, plan: ShardPlan, index: int) -> dict[str, Any] | None:
    """The marker of shard ``index`` when it is committed for ``plan`` (marker of its fingerprint and file there)."""
    return commits.committed(storage, shard_part(plan.dataset, index), fingerprint=plan.fingerprint)


def _process_count(plan: ShardPlan, workers: int | None, n_images: int) -> int:
    """Worker processes for ``n_images`` of ``plan``; ``0`` means read and check in this process.

    Processes only pay off for whole files on a local disk (each worker reads its
    files itself, so only results cross a pipe) and for more than
    :data:`MIN_IMAGES_FOR_PROCESSES` images. Other sources (buckets, ``memory://``,
    tar members, Parquet rows) are read on threads here, as I/O bound work.
    """
    n = default_workers() if workers is None else int(workers)
    if n <= 1 or n_images < MIN_IMAGES_FOR_PROCESSES:
        return 0
    if not (_reads_whole_files(plan.source) and is_local(plan.source.fs)):
        return 0
    return min(n, math.ceil(n_images / IMAGES_PER_TASK))


def _mp_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` where there is one (workers start from a small server process that has
    imported only :mod:`tasks.store.images`, never this process's torch or Prefect), else ``spawn``."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["tasks.store.images"])  # takes effect when the server first starts
        return ctx
    return multiprocessing.get_context("spawn")


class _ProcessRows:
    """Rows of a plan's shards, read and checked in worker processes, in the plan's order.

    Work is sent in tasks of :data:`IMAGES_PER_TASK` local paths (never a
    ``DatasetSource``: workers import only :mod:`tasks.store.images`) and results
    are taken in submission order, so rows come out exactly as the in-process path
    builds them (same :func:`_row`, same :func:`check_bytes`). ``schedule`` is the
    shards about to be written, in order: tasks are kept in flight across shard
    boundaries so the workers go on decoding while a finished shard is written.
    An entry the workers do not read (a non-regular file, one over
    ``max_file_bytes`` by its listed size, a path on another filesystem, a read
    that failed for a reason other than ``OSError``) is built here with
    :func:`build_row`. If a worker process dies, the rest is done in this process
    (with a warning).
    """

    def __init__(self, plan: ShardPlan, processes: int, schedule: Iterable[int]) -> None:
        self.plan = plan
        self.settings = pil_settings()
        self.pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            max_workers=processes, mp_context=_mp_context(), initializer=init_check_worker
        )
        self.window = processes * TASKS_IN_FLIGHT_PER_WORKER
        self.pending: deque[tuple[int, int]] = deque(self._tasks(schedule))  # (shard, first entry)
        self.queue: deque[tuple[int, int, list[Entry], list[str | None], Future | None]] = deque()

    # ------------------------------------------------------------------ scheduling
    def _tasks(self, indices: Iterable[int]) -> Iterator[tuple[int, int]]:
        for i in indices:
            n = len(self.plan.entries(i))
            for start in range(0, n, IMAGES_PER_TASK):
                yield i, start

    def _path(self, entry: Entry) -> str | None:
        """The local path a worker reads for ``entry``; ``None``: built here (no read, or not a local file)."""
        if entry.regular is False:
            return None
        if self.plan.max_file_bytes is not None and entry.size is not None and entry.size > self.plan.max_file_bytes:
            return None
        fs, path = self.plan.source.resolve(entry)
        return fs._strip_protocol(path) if is_local(fs) else None

    def _submit(self, index: int, start: int) -> None:
        entries = self.plan.entries(index)[start : start + IMAGES_PER_TASK]
        paths = [self._path(e) for e in entries]
        files = [(p, e.regular is None) for p, e in zip(paths, entries) if p is not None]
        future = None
        if files and self.pool is not None:
            try:
                future = self.pool.submit(
                    check_files, files, self.plan.max_file_bytes, self.plan.max_image_pixels, self.settings
                )
            except BrokenProcessPool:
                self._broken()
        self.queue.append((index, start, entries, paths, future))

    def _fill(self) -> None:
        while len(self.queue) < self.window and self.pending:
            self._submit(*self.pending.popleft())

    def _drop_queue(self) -> list[tuple[int, int]]:
        dropped = []
        while self.queue:
            i, start, _, _, future = self.queue.popleft()
            if future is not None:
                future.cancel()
            dropped.append((i, start))
        return dropped

    def _broken(self) -> None:
        if self.pool is not None:
            warn_user(
                f"{self.plan.dataset}: a shard worker process died; reading and checking the rest in this process",
                RuntimeWarning,
            )
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    # ------------------------------------------------------------------ rows
    def rows(self, index: int) -> Iterator[dict[str, Any]]:
        """The rows of shard ``index`` in order (the shards scheduled before it are dropped)."""
        ahead = {i for i, *_ in self.queue} | {i for i, _ in self.pending}
        if index in ahead:  # shards scheduled before it were committed by another run meanwhile
            while self.queue and self.queue[0][0] != index:
                _, _, _, _, future = self.queue.popleft()
                if future is not None:
                    future.cancel()
            if not self.queue:
                while self.pending and self.pending[0][0] != index:
                    self.pending.popleft()
        else:  # not scheduled (a caller's own order): this shard first, then the rest as planned
            self.pending = deque([*self._tasks([index]), *self._drop_queue(), *self.pending])
        source, plan = self.plan.source, self.plan
        while True:
            self._fill()
            if not self.queue or self.queue[0][0] != index:
                return
            _, _, entries, paths, future = self.queue.popleft()
            results: list[Any] = []
            try:
                results = future.result() if future is not None else []
            except (BrokenProcessPool, CancelledError):
                self._broken()
                future = None
            if future is None:  # nothing sent to a worker: every row is built here
                paths = [None] * len(entries)
            got = iter(results)
            for entry, path in zip(entries, paths):
                result = next(got) if path is not None else None
                if result is None:
                    yield build_row(
                        source, entry, max_image_pixels=plan.max_image_pixels, max_file_bytes=plan.max_file_bytes
                    )
                elif isinstance(result, tuple):
                    yield _row(source, entry, result[0], result[1])
                else:
                    yield _row(source, entry, None, None, result)

    def close(self) -> None:
        self._drop_queue()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> _ProcessRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _thread_rows(plan: ShardPlan, entries: list[Entry], threads: int) -> Iterator[dict[str, Any]]:
    """Rows of ``entries`` built in this process on ``threads`` reader threads, in order."""

    def one(entry: Entry) -> dict[str, Any]:
        return build_row(plan.source, entry, max_image_pixels=plan.max_image_pixels, max_file_bytes=plan.max_file_bytes)

    if threads <= 1:
        yield from map(one, entries)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield from pool.map(one, entries)


def write_shard(
    plan: ShardPlan,
    index: int,
    storage: str | Storage,
    *,
    force: bool = False,
    workers: int | None = None,
    threads: int = READ_THREADS,
    on_image: Callable[[dict[str, Any]], None] | None = None,
    _rows: _ProcessRows | None = None,
) -> ShardResult:
    """Write shard ``index`` of ``plan`` (or skip it when already committed); returns its counts.

    Reads and checks the shard's images (read, sha256, full decode) in ``workers``
    processes (default :func:`default_workers`: the CPUs + 1), or in this process on
    ``threads`` threads when ``workers`` is 0 or 1, the shard is small
    (:data:`MIN_IMAGES_FOR_PROCESSES`) or the images are not whole local files;
    either way the rows, and so the file's bytes, are the same and in the plan's
    order. Writes the Parquet file atomically and only then its done-marker.
    ``on_image`` is called in order with each row (without waiting for the shard).

    Safe to repeat and to run twice at once: the file goes to a unique temporary
    name and is moved over whatever is at its final path (an older file without
    marker included), and the rows are a pure function of the plan, so two writers
    of the same shard and fingerprint move identical bytes into place and write
    the same marker; the last move wins harmlessly.
    """
    st = as_storage(storage)
    rel = shard_part(plan.dataset, index)
    if not force:
        marker = _committed(st, plan, index)
        if marker is not None:
            return ShardResult.from_dict(marker, skipped=True)

    entries = plan.entries(index)
    with contextlib.ExitStack() as stack:
        processes = 0 if _rows is not None else _process_count(plan, workers, len(entries))
        if processes:
            _rows = stack.enter_context(_ProcessRows(plan, processes, [index]))
        produced = _rows.rows(index) if _rows is not None else _thread_rows(plan, entries, threads)
        stack.callback(getattr(produced, "close", lambda: None))
        rows: list[dict[str, Any]] = []
        for row in produced:
            rows.append(row)
            if on_image is not None:
                on_image(row)
    if len(rows) != len(entries):
        raise RuntimeError(f"shard {index} of {plan.dataset}: {len(rows)} rows for {len(entries)} images")
    counts = Counter(r["status"] for r in rows)
    n_bytes = sum(len(r["image"] or b"") for r in rows)
    table = rows_to_table(rows)
    rows.clear()  # the table holds its own copy of the bytes: free these before writing
    table = table.replace_schema_metadata(
        {
            "abs.dataset": plan.dataset,
            "abs.fingerprint": plan.fingerprint,
            "abs.shard": str(index),
            "abs.schema_version": str(SCHEMA_VERSION),
        }
    )
    result = ShardResult(
        index=index,
        path=rel,
        n_total=len(entries),
        n_ok=counts.get(STATUS_OK, 0),
        n_error=len(entries) - counts.get(STATUS_OK, 0),
        status_counts=dict(sorted(counts.items())),
        first_image_id=entries[0].image_id,
        last_image_id=entries[-1].image_id,
        digest=plan.shard_digest(index),
        n_bytes=n_bytes,
    )
    commits.commit_parquet(
        st,
        rel,
        table,
        ShardPartMarker(**result.to_dict(), dataset=plan.dataset, fingerprint=plan.fingerprint, committed_at=_now()),
        **_PARQUET_OPTIONS,
    )
    return result


def finalize_shards(plan: ShardPlan, storage: str | Storage, results: list[ShardResult]) -> ShardManifest:
    """Write ``dataset.json`` (atomically) and then the dataset done-marker.

    Fails when a shard is missing from ``results``: the metadata must only ever
    describe a complete dataset.
    """
    st = as_storage(storage)
    results = sorted(results, key=lambda r: r.index)
    if [r.index for r in results] != list(range(plan.n_shards)):
        missing = sorted(set(range(plan.n_shards)) - {r.index for r in results})
        raise ValueError(f"cannot finalize {plan.dataset}: shards {missing[:10]} are not committed")
    manifest = ShardManifest(
        dataset=plan.dataset,
        layout=plan.source.layout,
        source=plan.source.url,
        root=st.root,
        fingerprint=plan.fingerprint,
        source_fingerprint=plan.source_fingerprint,
        images_per_shard=plan.images_per_shard,
        expected_size=plan.source.expected_size,
        info_path=dataset_info(plan.dataset),
        shards=results,
    )
    info = {
        **plan.source.describe(),
        "dataset": plan.dataset,
        "fingerprint": plan.fingerprint,
        "source_fingerprint": plan.source_fingerprint,
        "schema_version": SCHEMA_VERSION,
        "images_per_shard": plan.images_per_shard,
        "max_image_pixels": plan.max_image_pixels,
        "max_file_bytes": plan.max_file_bytes,
        "n_shards": plan.n_shards,
        "n_total": manifest.n_total,
        "n_ok": manifest.n_ok,
        "n_error": manifest.n_error,
        "status_counts": manifest.status_counts,
        "shards": [r.to_dict() for r in results],
        "finalized_at": _now(),
    }
    commits.commit_json(
        st,
        dataset_info(plan.dataset),
        info,
        DatasetMarker(
            dataset=plan.dataset, fingerprint=plan.fingerprint, n_shards=plan.n_shards, n_total=manifest.n_total
        ),
    )
    return manifest


def shard_dataset(
    layout: str | DatasetSource,
    source: str | None,
    root: str | Storage,
    dataset_name: str | None = None,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    *,
    split: str | None = None,
    layout_options: Mapping[str, Any] | None = None,
    source_storage_options: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    max_image_pixels: int | None = None,
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    workers: int | None = None,
    threads: int = READ_THREADS,
    force: bool = False,
    progress: bool = True,
    on_shard_done: Callable[[ShardResult], None] | None = None,
) -> ShardManifest:
    """Shard ``source`` (any fsspec URL, read with layout ``layout``) into ``root``.

    Returns the manifest of every shard; ``manifest.written`` / ``.skipped`` say
    what this run did. A rerun writes only shards not committed for the same
    fingerprint; ``force=True`` rewrites all. ``on_shard_done`` runs after each
    shard is committed (or skipped); an exception raised there stops the run like
    a crash would, which is how tests interrupt it. ``progress`` shows a bar with
    images and shards. ``workers`` processes (default: one more than the CPUs, or
    ``$ABS_EVAL_SHARD_WORKERS``) read and check the images; ``0`` or ``1`` does it in
    this process on ``threads`` threads (see :func:`write_shard`; the output is the same).
    Worker processes start from a forkserver and, as with any Python process pool,
    run the ``__main__`` script again on start: a script that calls this at its top
    level needs the usual ``if __name__ == "__main__":`` guard (without it the workers
    fail to start and the images are checked in this process, with a warning).

    Raises :class:`~tasks.datasets.LayoutError` (before anything is written) when
    the source does not fit its layout or holds no image. Warns with
    :class:`~tasks.datasets.SingleClassWarning` when every image has the same
    label. Several runs over the same source and root may run at once (see
    :func:`prepare_shards`).
    """
    st = as_storage(root, storage_options)
    plan = plan_shards(
        layout,
        source,
        dataset_name,
        images_per_shard,
        split=split,
        layout_options=layout_options,
        source_storage_options=source_storage_options,
        max_image_pixels=max_image_pixels,
        max_file_bytes=max_file_bytes,
    )
    if plan.n_classes_present == 1:
        warn_user(
            f"{plan.dataset}: all {plan.n_images} images of {plan.source.url} have one label "
            f"({plan.source.classnames[plan.source.entries[0].label]!r}): a dataset with one class present is scored "
            "trivially at 100% by every method, so its accuracy says nothing (wrong source folder?)",
            SingleClassWarning,
        )
    prepare_shards(plan, st, force=force)
    todo = [i for i in range(plan.n_shards) if force or _committed(st, plan, i) is None]
    processes = _process_count(plan, workers, sum(len(plan.entries(i)) for i in todo))
    results: list[ShardResult] = []
    n_err = 0
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(
                total=plan.n_images, unit="img", desc=f"shard {plan.dataset}", disable=not progress, dynamic_ncols=True
            )
        )
        rows = stack.enter_context(_ProcessRows(plan, processes, todo)) if processes else None
        bar.set_postfix_str(f"shards 0/{plan.n_shards}")

        def on_image(row: dict[str, Any]) -> None:
            bar.update(1)

        for i in range(plan.n_shards):
            res = write_shard(
                plan,
                i,
                st,
                force=force,
                workers=0 if rows is None else workers,
                threads=threads,
                on_image=on_image,
                _rows=rows,
            )
            if res.skipped:
                bar.update(res.n_total)
            n_err += res.n_error
            results.append(res)
            bar.set_postfix_str(
                f"shards {i + 1}/{plan.n_shards} (skipped {sum(r.skipped for r in results)}), errors {n_err}"
            )
            if on_shard_done is not None:
                on_shard_done(res)
    return finalize_shards(plan, st, results)


def _shard_task(
    layout: str,
    source: str,
    root: str,
    dataset: str,
    images_per_shard: int,
    layout_options: dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`shard_dataset` as a Prefect task; returns the counts (not the rows)."""
    m = shard_dataset(
        layout, source, root, dataset, images_per_shard, layout_options=layout_options or {}, progress=progress
    )
    return {
        "dataset": dataset,
        "fingerprint": m.fingerprint,
        "n_shards": len(m.shards),
        "n_total": m.n_total,
        "n_ok": m.n_ok,
        "n_error": m.n_error,
        "written": m.written,
        "skipped": m.skipped,
    }


def __getattr__(name: str) -> Any:
    """``shard_task``, the Prefect task, built on first use (PEP 562).

    Why lazily: importing Prefect takes seconds, and ``abs-eval shard``, the plain
    functions and readers of shards (and every shard worker) need none of it.
    ``from tasks.steps.shard import shard_task`` works as for any module attribute.
    """
    if name == "shard_task":
        from prefect import task

        from tasks.run.retries import TASK_OPTIONS

        _shard_task.__name__ = _shard_task.__qualname__ = "shard_task"
        value = task(name="shard-dataset", **TASK_OPTIONS)(_shard_task)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DatasetInfo",
    "ShardManifest",
    "ShardPlan",
    "ShardReadError",
    "ShardResult",
    "build_row",
    "finalize_shards",
    "iter_shards",
    "list_datasets",
    "list_shards",
    "plan_shards",
    "prepare_shards",
    "read_dataset_info",
    "read_shard",
    "shard_dataset",
    "shard_task",  # noqa: F822 - provided lazily by __getattr__ (imports Prefect)
    "write_shard",
]
