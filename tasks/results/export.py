"""Results that leave the root: a query's answer as a file, and runs in CLIP_benchmark's result format.

``export`` writes any Arrow table (``abs-eval sql run --out``) as CSV, Parquet, JSON or JSON lines.

``export_clip_benchmark`` (``abs-eval export``) writes each run x method the way LAION's
CLIP_benchmark (1.6.2) writes an ``eval`` result, so that its results and ours go into one table:

* **dataset**: CLIP_benchmark's name for the dataset: ``wds/<name>`` for a WebDataset source (what
  ``clip_benchmark eval --dataset wds/<name>`` writes), the builtin name for a named layout evaluated
  on CLIP_benchmark's split (:data:`CLIP_BENCHMARK_DATASETS`, e.g. ``imagenet`` -> ``imagenet1k``),
  else the name the dataset has here; ``dataset_names`` (``--dataset-name NAME=CB_NAME``) overrides
  any of them. ``abs_eval_dataset``, ``layout`` and ``split`` keep where it came from.
* **model / pretrained**: ``model`` is the open_clip model name; ``pretrained`` is the run's weights
  (an open_clip tag or a checkpoint path, ``random`` without weights) with ``+<method>`` appended
  (``openai+abs``, ``openai+clip-e``), so ``clip_benchmark build``'s ``model_fullname`` (``model + ' '
  + pretrained``) tells the four methods of one run apart and a pivot never mixes ABS with a
  baseline. ``clip_pretrained`` holds the weights alone.
* **metrics**: ``acc1``, ``acc5``, ``mean_per_class_recall`` from ``sql/queries/clip_benchmark.sql``
  (every number comes from there); acc5 is NaN below 5 classes, as CLIP_benchmark writes it. acc1 is
  over the decoded images (``acc1_denominator: "n_ok"``); ``acc1_all`` counts unreadable images as
  wrong (CLIP_benchmark's denominator: it stops at an image it cannot decode).
* **results.csv**: what ``clip_benchmark build`` makes of the JSON files (the metrics, then the
  other keys, then ``model_fullname``), every value a flat cell: the run's full settings go to
  ``configs/<run_id>.json`` (``config_file``), never into a cell. ``build`` itself orders the
  columns as a Python set iterates, differently from one process to the next; the columns and the
  cells are the same, so join by column name.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.results.catalog import connect, run_query
from tasks.store import Storage, as_storage, is_local
from tasks.store.datasets import DatasetInfo, read_dataset_info
from tasks.store.paths import slug

__all__ = [
    "CLIP_BENCHMARK_CONFIGS",
    "CLIP_BENCHMARK_CSV",
    "CLIP_BENCHMARK_DATASETS",
    "FORMATS",
    "ClipBenchmarkExport",
    "ClipBenchmarkName",
    "ExportError",
    "clip_benchmark_dataset",
    "clip_benchmark_filename",
    "clip_benchmark_results",
    "clip_benchmark_rows",
    "csv_row",
    "export",
    "export_clip_benchmark",
    "model_fullname",
    "parse_dataset_names",
]


# ---------------------------------------------------------------------- a table as a file
#: File suffix -> output format of :func:`export`.
FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


def export(table: pa.Table, path: str, fmt: str | None = None) -> str:
    """Write ``table`` to ``path`` (local or any fsspec URL) as csv, parquet, json (an array) or jsonl.

    ``fmt`` defaults to the file suffix. CSV and JSON are written by DuckDB (lists
    and timestamps come out as DuckDB prints them); Parquet keeps the Arrow types.
    """
    import duckdb

    fmt = (fmt or FORMATS.get(Path(path).suffix.lower(), "")).lower()
    if fmt not in {"csv", "parquet", "json", "jsonl"}:
        raise ValueError(f"unknown output format for {path!r}: give fmt as csv, parquet, json or jsonl")
    if fmt == "parquet":
        with fsspec.open(path, "wb") as f:
            pq.write_table(table, f)
        return path
    options = {"csv": "FORMAT csv, HEADER true", "json": "FORMAT json, ARRAY true", "jsonl": "FORMAT json"}[fmt]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = os.path.join(tmpdir, "out")
        con = duckdb.connect()
        try:
            rel = con.from_arrow(table)
            rel.create_view("export_table")
            quoted = tmp.replace("'", "''")
            con.execute(f"COPY (SELECT * FROM export_table) TO '{quoted}' ({options})")
        finally:
            con.close()
        with open(tmp, "rb") as src, fsspec.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return path


# ---------------------------------------------------------------------- CLIP_benchmark's dataset names
@dataclass(frozen=True)
class ClipBenchmarkName:
    """CLIP_benchmark's builtin name for what a named layout reads, and when the two are the same set."""

    name: str  #: ``clip_benchmark eval --dataset <name>``
    split: str | None  #: the layout's split that is CLIP_benchmark's test split (None: the layout has one)
    source_contains: str | None = None  #: a variant told apart by its folder name (ImageNet-V2's three)


#: abs-eval layout -> CLIP_benchmark 1.6.2's builtin dataset name (``clip_benchmark/datasets/builder.py``),
#: for a run over the same split. Layouts not listed keep the dataset's name here: ``cub`` (CLIP_benchmark
#: has it only as ``vtab/cub``, through TFDS and task_adaptation), ``places365`` (no builtin), ``folder``,
#: ``manifest``, ``hf-parquet`` (anything); ``webdataset`` becomes ``wds/<name>`` (:func:`clip_benchmark_dataset`).
CLIP_BENCHMARK_DATASETS: dict[str, ClipBenchmarkName] = {
    "imagenet": ClipBenchmarkName("imagenet1k", None),  # ImageNet-1k validation, 50,000 images
    "imagenet-v2": ClipBenchmarkName("imagenetv2", None, "matched-frequency"),  # its default variant
    "imagenet-sketch": ClipBenchmarkName("imagenet_sketch", None),
    "imagenet-a": ClipBenchmarkName("imagenet-a", None),
    "imagenet-r": ClipBenchmarkName("imagenet-r", None),
    "food101": ClipBenchmarkName("food101", "test"),
    "dtd": ClipBenchmarkName("dtd", "test1"),  # torchvision's DTD(split="test"), partition 1
    "pets": ClipBenchmarkName("pets", "test"),  # Oxford-IIIT Pet, torchvision's split="test"
}
#: The layout whose datasets CLIP_benchmark names ``wds/<name>``.
WEBDATASET_LAYOUT = "webdataset"
#: What joins the weights and the method in ``pretrained`` (``openai+abs``).
METHOD_SEPARATOR = "+"


def clip_benchmark_dataset(dataset: str, info: DatasetInfo | None) -> str:
    """CLIP_benchmark's name for the dataset ``dataset`` (abs-eval's name) sharded as ``info`` (None: unknown)."""
    if info is None:
        return dataset
    if info.layout == WEBDATASET_LAYOUT:
        return f"wds/{dataset}"
    known = CLIP_BENCHMARK_DATASETS.get(info.layout)
    if known is None or info.split != known.split:
        return dataset
    if known.source_contains is not None and known.source_contains not in (info.source or ""):
        return dataset
    return known.name


def parse_dataset_names(pairs: Sequence[str]) -> dict[str, str]:
    """``["toy=wds/toy", ...]`` (``--dataset-name``) as ``{"toy": "wds/toy"}``; ``ValueError`` for anything else."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, cb_name = pair.partition("=")
        if not sep or not name.strip() or not cb_name.strip():
            raise ValueError(f"--dataset-name {pair!r}: expected NAME=CLIP_BENCHMARK_NAME (e.g. toy=wds/toy)")
        if out.get(name.strip(), cb_name.strip()) != cb_name.strip():
            raise ValueError(
                f"--dataset-name gives {name.strip()!r} two names: {out[name.strip()]!r} and {cb_name.strip()!r}"
            )
        out[name.strip()] = cb_name.strip()
    return out


def model_fullname(result: Mapping[str, Any]) -> str:
    """What ``clip_benchmark build`` adds to each row: ``model + ' ' + pretrained`` (here one per method)."""
    return f"{result['model']} {result['pretrained']}"


# ---------------------------------------------------------------------- CLIP_benchmark results
#: The CSV written beside the JSON files, and the folder of the runs' full settings.
CLIP_BENCHMARK_CSV = "results.csv"
CLIP_BENCHMARK_CONFIGS = "configs"
CLIP_BENCHMARK_METRICS = ("acc1", "acc5", "mean_per_class_recall")


class ExportError(ValueError):
    """An export that cannot be made (unknown run, nothing to export, unwritable output): one line."""


@dataclass
class ClipBenchmarkExport:
    """What :func:`export_clip_benchmark` wrote: the result objects, the files (none for ``out='-'``) and
    each run's full settings (``configs/<run_id>.json``)."""

    results: list[dict[str, Any]]
    files: list[str]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def clip_benchmark_results(
    root: str | Storage,
    run_ids: Sequence[str] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    dataset_names: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """CLIP_benchmark result objects, one per (dataset, model, method) of each chosen run.

    CLIP_benchmark's keys first, in its order (``dataset``, ``model``, ``pretrained``, ``task``,
    ``metrics`` with ``acc1``, ``acc5``, ``mean_per_class_recall``, ``language``), named as the module
    docstring says, then ours, every one a flat value: ``method``, ``run_id``, counts, the acc1
    denominator, ``acc1_all`` and interval, and what identifies the run's settings (config hash,
    weights digest, DINO, descriptions, prompt and templates). Every number comes from
    ``sql/queries/clip_benchmark.sql``.

    ``run_ids``: the runs to export (each must exist and be completed); default: the latest
    completed run of each (dataset, model). ``dataset_names``: abs-eval dataset name -> the name to
    write (over :func:`clip_benchmark_dataset`'s). Raises :class:`ExportError` with one line.
    """
    return [
        r for r, _ in clip_benchmark_rows(root, run_ids, storage_options=storage_options, dataset_names=dataset_names)
    ]


def clip_benchmark_rows(
    root: str | Storage,
    run_ids: Sequence[str] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    dataset_names: Mapping[str, str] | None = None,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """:func:`clip_benchmark_results` with, beside each result, its run's full settings (the run record's
    ``config_json``: the evaluation spec and the prediction settings)."""
    st = as_storage(root, storage_options)
    con = connect(st)
    try:
        status = {
            r["run_id"]: r["status"] for r in run_query(con, "SELECT run_id, status FROM run_records").to_pylist()
        }
        if not status:
            raise ExportError(
                f"no runs under {st.root} (runs are recorded in {st.root}/runs/); pass --root or set ABS_EVAL_ROOT"
            )
        wanted = list(dict.fromkeys(run_ids or []))
        unknown = [r for r in wanted if r not in status]
        if unknown:
            raise ExportError(
                f"unknown run id {', '.join(repr(r) for r in unknown)} under {st.root} "
                f"(`abs-eval status --root {st.root}` lists the runs)"
            )
        unfinished = [f"{r} ({status[r]})" for r in wanted if status[r] != "completed"]
        if unfinished:
            raise ExportError(
                f"run {', '.join(unfinished)} is not completed: its numbers cover only the shards it "
                "had, not the dataset; export a completed run"
            )
        rows = run_query(con, "clip_benchmark", {"run_ids": wanted or None}).to_pylist()
    finally:
        con.close()
    if not rows:
        raise ExportError(f"no completed run with predictions under {st.root}")
    names = dict(dataset_names or {})
    unused = sorted(set(names) - {r["dataset"] for r in rows})
    if unused:
        raise ExportError(
            f"--dataset-name names {', '.join(repr(n) for n in unused)}, which no exported run "
            f"evaluated (exported: {', '.join(sorted({r['dataset'] for r in rows}))})"
        )
    infos = {ds: _dataset_info(st, ds) for ds in {r["dataset"] for r in rows}}
    out = []
    for r in rows:
        info = infos[r["dataset"]]
        cb_dataset = names.get(r["dataset"]) or clip_benchmark_dataset(r["dataset"], info)
        config = _config_of(r)
        out.append((_clip_benchmark_object(r, cb_dataset, info, config), config))
    return out


def _dataset_info(st: Storage, dataset: str) -> DatasetInfo | None:
    """The dataset's committed ``dataset.json`` (its layout, split, source); None when it is not there
    (a root whose shards were removed): the dataset then keeps its name."""
    try:
        return read_dataset_info(st, dataset)
    except (FileNotFoundError, RuntimeError, OSError, ValueError, TypeError):
        return None


def _config_of(r: Mapping[str, Any]) -> dict[str, Any]:
    try:
        config = json.loads(r["config_json"]) if r.get("config_json") else {}
    except ValueError:
        config = {}
    return config if isinstance(config, dict) else {}


def _spec_value(config: Mapping[str, Any], key: str) -> Any:
    spec = config.get("spec")
    return spec.get(key) if isinstance(spec, Mapping) else None


def _template_set(config: Mapping[str, Any]) -> dict[str, Any]:
    """The template set the run's ``clip-e`` used, flat: ``templates`` (its name), ``templates_sha256`` and
    ``templates_count``, from the record the run keeps in its prediction settings (``config_json["numbers"]
    ["templates"]``: ``{"name", "sha256", "count"}``, ``tasks.datasets.template_sets.TemplateSet.record``).
    Runs recorded before template sets had records hold a name there (or only the spec's selection):
    the name alone, the rest None."""
    numbers = config.get("numbers")
    record = numbers.get("templates") if isinstance(numbers, Mapping) else None
    if isinstance(record, Mapping):
        return {
            "templates": record.get("name"),
            "templates_sha256": record.get("sha256"),
            "templates_count": record.get("count"),
        }
    name = record if isinstance(record, str) else _spec_value(config, "templates")
    return {"templates": name, "templates_sha256": None, "templates_count": None}


def _clip_benchmark_object(
    r: Mapping[str, Any], dataset: str, info: DatasetInfo | None, config: Mapping[str, Any]
) -> dict[str, Any]:
    started = r.get("started_at")
    metrics = {k: r[k] for k in CLIP_BENCHMARK_METRICS}
    return {
        # CLIP_benchmark's keys, in its order
        "dataset": dataset,
        "model": r["model"],
        "pretrained": f"{r['pretrained']}{METHOD_SEPARATOR}{r['method']}",
        "task": r["task"],
        "metrics": metrics,
        "language": r["language"],
        # ours: the method and the run
        "method": r["method"],
        "run_id": r["run_id"],
        "clip_pretrained": r["pretrained"],
        "abs_eval_dataset": r["dataset"],
        "layout": info.layout if info is not None else None,
        "split": info.split if info is not None else None,
        "n": r["n"],
        "n_ok": r["n_ok"],
        "n_error": r["n_error"],
        "acc1_denominator": r["acc1_denominator"],
        "acc1_all": r["acc1_all"],
        "acc1_ci_low": r["acc1_ci_low"],
        "acc1_ci_high": r["acc1_ci_high"],
        "classes_ranked": r["classes_ranked"],
        "deployment": r["deployment"],
        "model_slug": r["model_slug"],
        "started_at": started.isoformat() if isinstance(started, datetime) else started,
        # what made the numbers (the whole of it: config_file)
        "config": r["config"],
        "clip_weights_digest": r.get("clip_weights_digest"),
        "dino_model": r.get("dino_model"),
        "dino_pretrained": r.get("dino_pretrained"),
        "descriptions_hash": r.get("descriptions_hash"),
        "prompt": _spec_value(config, "prompt"),
        **_template_set(config),
    }


def clip_benchmark_filename(result: Mapping[str, Any], with_run_id: bool = False) -> str:
    """``<dataset>_<pretrained>_<model>_<language>_<task>_<method>.json``: CLIP_benchmark's default
    ``--output`` template with the method appended: the dataset as CLIP_benchmark spells it in file names
    (``wds/`` dropped, other ``/`` as ``_``), the weights without the method (a checkpoint path by its
    file name, as there); ``with_run_id`` appends ``_<run_id>`` (two exported runs of one dataset x model)."""
    dataset = str(result["dataset"]).removeprefix("wds/").replace("/", "_")
    pretrained = str(result.get("clip_pretrained") or result["pretrained"]).rstrip("/").rsplit("/", 1)[-1]
    parts = [dataset, pretrained, result["model"], result["language"], result["task"], result["method"]]
    if with_run_id:
        parts.append(result["run_id"])
    return "_".join(slug(str(p)) for p in parts) + ".json"


def csv_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """One row of ``results.csv``: what ``clip_benchmark build`` makes of the result (its metrics, then
    its other keys, then ``model_fullname``)."""
    row = dict(result["metrics"])
    row.update((k, v) for k, v in result.items() if k != "metrics")
    row["model_fullname"] = model_fullname(result)
    return row


def export_clip_benchmark(
    root: str | Storage,
    out: str,
    run_ids: Sequence[str] | None = None,
    *,
    stream: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    dataset_names: Mapping[str, str] | None = None,
) -> ClipBenchmarkExport:
    """Write the runs' results in CLIP_benchmark's format (see :func:`clip_benchmark_results`).

    ``out``: a folder (local or any fsspec URL) that gets one JSON file per result, named by
    :func:`clip_benchmark_filename`, ``results.csv`` with one row per result (:func:`csv_row`) and
    ``configs/<run_id>.json`` with each run's full settings (``config_file`` in the results; a
    subfolder, because ``clip_benchmark build FOLDER`` reads every ``*.json`` directly in it); or
    ``"-"``: the JSON objects as JSON lines on ``stream`` (default: stdout). Raises
    :class:`ExportError` (one line) for an unknown or unfinished run, a root without runs, a
    ``dataset_names`` entry no run evaluated, an unwritable ``out``.
    """
    pairs = clip_benchmark_rows(root, run_ids, storage_options=storage_options, dataset_names=dataset_names)
    results = [r for r, _ in pairs]
    configs = {r["run_id"]: c for r, c in pairs}
    if out == "-":
        stream = stream or sys.stdout
        for res in results:
            stream.write(json.dumps(res) + "\n")
        stream.flush()
        return ClipBenchmarkExport(results, [], configs)
    for res in results:
        res["config_file"] = f"{CLIP_BENCHMARK_CONFIGS}/{slug(res['run_id'])}.json"
    names = Counter(clip_benchmark_filename(r) for r in results)
    files = [clip_benchmark_filename(r, with_run_id=names[clip_benchmark_filename(r)] > 1) for r in results]
    try:
        fs, base = fsspec.core.url_to_fs(out)
        if fs.exists(base) and not fs.isdir(base):
            raise ExportError(f"cannot write to {out}: it is a file, not a folder")
        base = base.rstrip("/")
        fs.makedirs(f"{base}/{CLIP_BENCHMARK_CONFIGS}", exist_ok=True)
        written = []

        def write(rel: str, text: str) -> None:
            path = f"{base}/{rel}"
            with fs.open(path, "w") as f:
                f.write(text)
            written.append(path if is_local(fs) else fs.unstrip_protocol(path))

        for res, name in zip(results, files):
            write(name, json.dumps(res, indent=2) + "\n")
        rows = [csv_row(r) for r in results]
        text = io.StringIO()
        # as build writes it (csv's default dialect: excel, CRLF line ends)
        writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
        write(CLIP_BENCHMARK_CSV, text.getvalue())
        for run_id, config in configs.items():
            write(f"{CLIP_BENCHMARK_CONFIGS}/{slug(run_id)}.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    except ExportError:
        raise
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"cannot write to {out}: {reason}") from None
    return ClipBenchmarkExport(results, written, configs)
