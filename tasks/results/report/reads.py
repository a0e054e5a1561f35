"""What the report reads from a root: the named queries of ``sql/queries`` (every number and row
it shows), the run's JSON record, the dataset's class list and the gallery images' bytes.

Why one module: whatever the report shows can be read again from here (``abs-eval sql run <name>``
for the queries); the other modules format, draw and explain what these functions return and
read nothing themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from tasks.defaults import METHOD_ORDER
from tasks.results import catalog
from tasks.store import Storage
from tasks.store.datasets import read_dataset_info
from tasks.store.paths import dataset_info, shard_part


def _method_key(method: str) -> tuple[int, str]:
    """The order of methods everywhere in the report (tables and figures): ``METHOD_ORDER``, then by name."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _rows(con, name: str, **params: Any) -> list[dict[str, Any]]:
    """The rows of the named query ``sql/queries/<name>.sql`` with these parameters."""
    return catalog.run_query(con, name, params).to_pylist()


@dataclass
class RunTables:
    """The rows of the named queries the report's tables and plots are made of, for one run
    (and, with a previous run, the comparison of the two): each field is one query's answer,
    as ``abs-eval sql run <query>`` prints it."""

    accuracy: list[dict[str, Any]]  # accuracy, in method order
    per_class: list[dict[str, Any]]  # per_class_accuracy
    extremes: list[dict[str, Any]]  # class_extremes, top_k 5
    confusions: list[dict[str, Any]]  # confusions, top_k 5
    errors: list[dict[str, Any]]  # error_counts
    comparison: list[dict[str, Any]] = field(default_factory=list)  # compare_methods, in method order
    class_changes: list[dict[str, Any]] = field(default_factory=list)  # compare_classes, top_k 5
    flips: list[dict[str, Any]] = field(default_factory=list)  # compare_flips
    regressions: list[dict[str, Any]] = field(default_factory=list)  # regressions
    #: variant_accuracy: the ABS variants of the run (or of the latest run of its partition that has some)
    variants: list[dict[str, Any]] = field(default_factory=list)


def read_tables(con, run_id: str, prev_id: str | None) -> RunTables:
    """:class:`RunTables` of ``run_id``; the comparison fields stay empty without ``prev_id``."""
    tables = RunTables(
        accuracy=sorted(_rows(con, "accuracy", run_id=run_id), key=lambda r: _method_key(r["method"])),
        per_class=_rows(con, "per_class_accuracy", run_id=run_id),
        extremes=_rows(con, "class_extremes", run_id=run_id, top_k=5),
        confusions=_rows(con, "confusions", run_id=run_id, top_k=5),
        errors=_rows(con, "error_counts", run_id=run_id),
        variants=_rows(con, "variant_accuracy", run_id=run_id),
    )
    if prev_id:
        pair = {"run_a": prev_id, "run_b": run_id}
        tables.comparison = sorted(_rows(con, "compare_methods", **pair), key=lambda r: _method_key(r["method"]))
        tables.class_changes = _rows(con, "compare_classes", **pair, top_k=5)
        tables.flips = _rows(con, "compare_flips", **pair)
        tables.regressions = _rows(con, "regressions", **pair)
    return tables


def _run_row(con, run_id: str) -> dict[str, Any]:
    """The run's row of the ``runs`` view, every column (the ``run_details`` query)."""
    rows = _rows(con, "run_details", run_id=run_id)
    if not rows:
        raise KeyError(f"no run record for run {run_id!r} (runs/run={run_id}/run.parquet)")
    return rows[0]


def n_classes_scored(st: Storage, con, run: Mapping[str, Any]) -> tuple[int | None, str]:
    """(C, where it came from): the number of classes a prediction chooses among.

    From the dataset's committed ``dataset.json`` (``subset_indices`` when the text
    classes are a superset, else ``classnames``); a ``dataset.json`` without its
    done-marker is read as is; without one, the distinct true labels of the run's
    rows (a lower bound when some class has no image).
    """
    info: Mapping[str, Any] | None = None
    try:
        info = read_dataset_info(st, run["dataset"]).raw
    except (FileNotFoundError, RuntimeError, OSError, ValueError):
        try:
            if st.exists(dataset_info(run["dataset"])):
                info = st.read_json(dataset_info(run["dataset"]))
        except (OSError, ValueError):
            info = None
    if info:
        subset, names = info.get("subset_indices"), info.get("classnames")
        if subset:
            return len(subset), "dataset.json subset_indices"
        if names:
            return len(names), "dataset.json classnames"
    rows = _rows(con, "labels_seen", run_id=run["run_id"])
    c = rows[0]["n_labels"] if rows else 0
    return (int(c), "distinct true labels of the run") if c else (None, "unknown")


def _run_record(st: Storage, run_id: str) -> dict[str, Any]:
    """A run's JSON record (what the SQL ``runs`` row does not carry), or ``{}`` if it cannot be read."""
    from tasks.results.runs import read_run

    try:
        return dict(read_run(st, run_id))
    except (KeyError, OSError, ValueError):
        return {}


def _setting_differences(st: Storage, run_a: str, run_b: str) -> list[dict[str, Any]]:
    """What differs between two runs' settings (``tasks.results.runs.setting_differences``), from their JSON records."""
    from tasks.results.runs import setting_differences

    a, b = _run_record(st, run_a), _run_record(st, run_b)
    return setting_differences(a, b) if a and b else []


def _recorded_geometry(st: Storage, run_id: str) -> dict[str, int]:
    """``model_geometry`` of the run's JSON record."""
    return dict(_run_record(st, run_id).get("model_geometry") or {})


def _read_images(st: Storage, dataset: str, shard: int, image_ids: set[str]) -> dict[str, bytes]:
    rel = shard_part(dataset, shard)
    if not st.exists(rel):
        return {}
    with st.fs.open(st.path(rel), "rb") as f:
        # image_id has row-group statistics: only the row groups holding these ids are read.
        t = pq.read_table(f, columns=["image_id", "image"], filters=[("image_id", "in", sorted(image_ids))])
    return {i: b for i, b in zip(t.column("image_id").to_pylist(), t.column("image").to_pylist()) if b is not None}


def _gallery_rows(con, run_id: str, method_a: str, method_b: str, size: int) -> list[dict[str, Any]]:
    """The ``gallery`` query: up to ``size`` images per kind that one method got right and the other wrong."""
    return _rows(con, "gallery", run_id=run_id, method_a=method_a, method_b=method_b, top_k=size)


def _attention_maps(con, dataset: str, image_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The ``attention_maps`` query: every full DINO attention map the cache holds for these images
    (of any cached DINO model or weights: the caller keeps those that agree with the rows)."""
    return _rows(con, "attention_maps", dataset=dataset, image_ids=list(image_ids))
