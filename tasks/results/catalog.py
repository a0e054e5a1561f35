"""DuckDB views over a storage root, the analyst queries in ``sql/``, and the ``results.duckdb`` catalog.

Why SQL files and not Python aggregation: analysts get numbers by opening DuckDB,
never by reading Python, and a number in a report must be re-runnable by anyone.
So every view and query lives in ``sql/`` (one view set or query per file, with a
header saying what it answers and which parameters it takes); this module only
loads them.

Layout of ``sql/``::

    sql/views/NN_<name>.sql   CREATE OR REPLACE VIEW/MACRO statements, run in file-name order.
                              Only views/10_sources.sql names files: read_parquet('${root}/<glob>')
    sql/queries/<name>.sql    one SELECT over the views (never over paths), so it runs unchanged
                              in the duckdb shell once the views exist (e.g. in results.duckdb)

Placeholder scheme: the single placeholder is ``${root}`` (the storage root, no
trailing slash). :func:`render_views` substitutes it with an absolute local path,
a URL of a filesystem registered with DuckDB (``memory:///abs``, ``s3://bucket/abs``),
or ``.`` for a shell started inside the root. Query parameters are DuckDB variables
(``SET VARIABLE run_a = '...'`` / ``getvariable('run_a')``), the same in Python and
in the shell; unset variables mean "the default" (see each file's header).

Empty roots: DuckDB refuses a view over a glob that matches no file. When a source
glob has no match yet, its ``read_parquet(...)`` call is replaced by an empty,
correctly typed relation built from ``tasks/store/tables.py``, so every view exists (and
is empty) on a fresh root. A catalog written before any file existed keeps that
empty view: write it again once there are results.

Remote roots: DuckDB's own httpfs extension downloads at first use (impossible on
offline machines), so :func:`connect` registers the root's fsspec filesystem with
DuckDB instead; the views then read ``memory://``/``s3://`` URLs through fsspec.

Results that travel: :func:`export_clip_benchmark` writes each run x method in
CLIP_benchmark's result format (JSON per result plus ``results.csv``), with every
number from ``sql/queries/clip_benchmark.sql``.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import shutil
import socket
import tempfile
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from sql import SQL_DIR  # the SQL files, shipped as package data
from tasks.store import Storage, as_storage
from tasks.store.paths import PREDICTIONS_DIR, marker_key, partition_rollup, rollup_of, slug
from tasks.store.tables import (
    DINO_SCHEMA,
    ERRORS_SCHEMA,
    PART_COUNTS_SCHEMA,
    PARTITION_ROLLUP_SCHEMA,
    PREDICTION_SCHEMA,
    ROLLUP_SCHEMA,
    RUN_SCHEMA,
)

VIEWS_DIR = SQL_DIR / "views"
QUERIES_DIR = SQL_DIR / "queries"
ROOT_PLACEHOLDER = "${root}"

#: Globs (relative to the root) that views read, with the Arrow schema of their files and
#: the VARCHAR columns ``read_parquet`` adds (hive partitions, ``filename``). Used to type
#: the empty relation that stands in for a glob with no file yet.
SOURCES: dict[str, tuple[pa.Schema, tuple[str, ...]]] = {
    "predictions/*/*/*/part-*.parquet": (PREDICTION_SCHEMA, ("dataset", "model", "config")),
    "rollups/*/*/*/part-*.parquet": (ROLLUP_SCHEMA, ("dataset", "model", "config")),
    "rollups/*/*/*/all-*.parquet": (PARTITION_ROLLUP_SCHEMA, ("dataset", "model", "config")),
    "rollups/*/*/*/errors-part-*.parquet": (ERRORS_SCHEMA, ("dataset", "model", "config")),
    "rollups/*/*/*/errors-all-*.parquet": (ERRORS_SCHEMA, ("dataset", "model", "config")),
    "rollups/*/*/*/shards-all-*.parquet": (PART_COUNTS_SCHEMA, ("dataset", "model", "config")),
    "runs/*/run.parquet": (RUN_SCHEMA, ()),
    "cache/dino/*/*/*/part-*.parquet": (DINO_SCHEMA, ("filename",)),
}

#: Oldest DuckDB storage format written into a catalog file: any duckdb / duckdb-cli
#: >= 1.4 opens it (the file holds views and macros only, so nothing is lost).
CATALOG_STORAGE_VERSION = "v1.4.0"

_SOURCE_CALL = re.compile(r"read_parquet\(\s*'\$\{root\}/(?P<glob>[^']+)'[^()]*\)")
_FILENAME_OPTION = re.compile(r"\bfilename\s*=\s*true\b", re.IGNORECASE)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------- SQL files
def view_files() -> list[Path]:
    """The view files, in the order they must run (later views use earlier ones)."""
    return sorted(VIEWS_DIR.glob("*.sql"))


_STATEMENT_START = re.compile(r"(?m)^(?=CREATE OR REPLACE (?:VIEW|MACRO) )")
_STATEMENT_NAME = re.compile(r"CREATE OR REPLACE (?:VIEW|MACRO) (\w+)")


def view_texts(only: Collection[str] | None = None) -> list[tuple[Path, str]]:
    """Each view file and its text, in order; with ``only``, just the ``CREATE OR REPLACE VIEW/MACRO``
    statements of those names (a reader that needs a few views does not pay for binding all of them:
    DuckDB binds each view when it is created, about 2 s for all over the 2,500 parts of 50 runs)."""
    out = []
    for path in view_files():
        text = path.read_text()
        if only is not None:
            text = "".join(st for st in _STATEMENT_START.split(text)
                           if (m := _STATEMENT_NAME.match(st)) and m.group(1) in only)
            if not text:
                continue
        out.append((path, text))
    return out


def query_parameters(name: str, required_only: bool = False) -> str | list[str]:
    """The ``Parameters:`` header of a named query, as text; with ``required_only``, the
    names marked ``(required)`` there (the query answers nothing without them)."""
    text = query_sql(name)
    lines = text.splitlines()
    out: list[str] = []
    for i, ln in enumerate(lines):
        if ln.startswith("-- Parameters:"):
            out.append(ln.removeprefix("-- Parameters:").strip())
            for cont in lines[i + 1:]:
                if not cont.startswith("--   "):
                    break
                out.append(cont.removeprefix("--").strip())
            break
    head = " ".join(out)
    if required_only:
        return re.findall(r"([A-Za-z_][A-Za-z0-9_]*) \(required", head)
    return "" if head.lower().startswith("none") else head


def list_queries() -> dict[str, str]:
    """Named queries: ``{name: first header line}``, sorted by name (``sql/queries/<name>.sql``)."""
    out: dict[str, str] = {}
    for path in sorted(QUERIES_DIR.glob("*.sql")):
        first = next((ln for ln in path.read_text().splitlines() if ln.startswith("--")), "-- ")
        out[path.stem] = first[2:].strip()
    return out


def query_sql(name: str) -> str:
    """The text of the named query ``sql/queries/<name>.sql``."""
    path = QUERIES_DIR / f"{name}.sql"
    if not _IDENT.match(name) or not path.is_file():
        raise KeyError(f"no query named {name!r}; known: {', '.join(list_queries())}")
    return path.read_text()


def _sql_literal(text: str) -> str:
    return text.replace("'", "''")


def _duckdb_types(schema: pa.Schema) -> list[tuple[str, str]]:
    con = duckdb.connect()
    try:
        rel = con.from_arrow(schema.empty_table())
        return [(name, str(t)) for name, t in zip(rel.columns, rel.types)]
    finally:
        con.close()


def empty_relation_sql(glob: str, filename: bool = False) -> str:
    """``(SELECT CAST(NULL AS <type>) AS <col>, ... WHERE false)`` with the columns of ``glob``'s files
    (plus ``filename`` when the call reads it: ``filename = true``)."""
    if glob not in SOURCES:
        raise ValueError(f"no schema known for source glob {glob!r}: add it to tasks.results.catalog.SOURCES")
    schema, hive = SOURCES[glob]
    extra = tuple(hive) + (("filename",) if filename and "filename" not in hive else ())
    cols = _duckdb_types(schema) + [(h, "VARCHAR") for h in extra if h not in schema.names]
    select = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in cols)
    return f"(SELECT {select} WHERE false)"


def render_views(
    root_sql: str,
    empty_globs: set[str] | frozenset[str] = frozenset(),
    by_name_globs: set[str] | frozenset[str] = frozenset(),
    only: Collection[str] | None = None,
) -> str:
    """All view files (or the views named in ``only``, see :func:`view_texts`) as one SQL script, ``${root}``
    replaced by ``root_sql``.

    ``empty_globs``: source globs with no file yet; their ``read_parquet`` calls become
    typed empty relations (DuckDB cannot create a view over a glob with no match).
    ``by_name_globs``: source globs whose files do not all have the same columns (written
    by different versions); their calls get ``union_by_name = true`` (see
    :func:`mixed_schema_globs`).
    """
    root_sql = _sql_literal(root_sql.rstrip("/") or "/")

    def source(m: re.Match[str]) -> str:
        if m.group("glob") in empty_globs:
            return empty_relation_sql(m.group("glob"), filename=_FILENAME_OPTION.search(m.group(0)) is not None)
        if m.group("glob") in by_name_globs and "union_by_name" not in m.group(0):
            return m.group(0)[:-1].rstrip() + ", union_by_name = true)"
        return m.group(0)

    parts = []
    for path, text in view_texts(only):
        text = _SOURCE_CALL.sub(source, text)
        parts.append(f"-- {path.relative_to(SQL_DIR)}\n" + text.replace(ROOT_PLACEHOLDER, root_sql))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------- connections
def _has_match(st: Storage, pattern: str) -> bool:
    """Whether any file under the root matches ``pattern``; on a local disk it stops at the first one
    (fsspec lists every match: half a second for the 2,500 parts of 50 ImageNet runs)."""
    if st.is_local:
        import glob

        return next(glob.iglob(st.path(pattern)), None) is not None
    return bool(st.glob(pattern))


def _empty_globs(st: Storage, only: Collection[str] | None = None) -> set[str]:
    used = {m.group("glob") for _, text in view_texts(only) for m in _SOURCE_CALL.finditer(text)}
    return {g for g in used if not _has_match(st, g)}


def _by_position_globs() -> set[str]:
    """Source globs read without ``union_by_name`` in ``sql/views`` (the big ones)."""
    return {m.group("glob") for p in view_files() for m in _SOURCE_CALL.finditer(p.read_text())
            if "union_by_name" not in m.group(0)}


def mixed_schema_globs(con: duckdb.DuckDBPyConnection, st: Storage, globs: set[str] | None = None) -> set[str]:
    """The source globs (of those read by position) whose files do not all have the same columns.

    Why this check exists: ``predictions`` is read without ``union_by_name`` because that
    option makes DuckDB open the footer of every part file at every query (0.75 s over
    the 2,500 files of 50 ImageNet runs, more than all else a per-run query does). Every
    part is written with ``tables.PREDICTION_SCHEMA``, so files agree, until a new
    version adds a column: then files written before and after differ, DuckDB stops with
    "schema mismatch in glob", and the views must read those files by column name.
    Costs one footer read per file (what ``union_by_name`` costs at every query), so it
    runs when a catalog is written and after such an error, not at every query.
    """
    out = set()
    for glob in sorted(_by_position_globs() if globs is None else globs):
        if not st.glob(glob):
            continue
        url = f"{_sql_literal(_root_sql(st).rstrip('/'))}/{glob}"
        n = con.execute(
            "SELECT count(DISTINCT cols) FROM (SELECT file_name, string_agg(name || ':' || coalesce(type, ''), ',' "
            f"ORDER BY name, coalesce(type, '')) AS cols FROM parquet_schema('{url}') GROUP BY file_name)").fetchall()[0][0]
        if n > 1:
            out.add(glob)
    return out


def create_views(
    con: duckdb.DuckDBPyConnection,
    st: Storage,
    *,
    root_sql: str | None = None,
    by_name_globs: set[str] | frozenset[str] = frozenset(),
    only: Collection[str] | None = None,
) -> None:
    """Create (or replace) every view of ``sql/views`` (or those named in ``only``) on ``con`` for the root
    of ``st``."""
    con.execute(render_views(root_sql if root_sql is not None else _root_sql(st), _empty_globs(st, only),
                             by_name_globs, only))
    _ROOTS[con] = (st, only)


def _root_sql(st: Storage) -> str:
    return st.root_path if st.is_local else st.url()


#: The storage root whose views each connection holds (weak keys: an entry goes with its
#: connection), so that a query that meets files of different versions can recreate the
#: views reading them by name.
_ROOTS: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, tuple[Storage, Collection[str] | None]] = weakref.WeakKeyDictionary()


def _schema_mismatch(exc: BaseException) -> bool:
    return "schema mismatch" in str(exc)


#: Times a query (or a connection's views) is tried again when a file it listed was gone when it read it.
READ_RETRIES = 3


def _vanished(exc: BaseException) -> bool:
    """A read that met a file a writer removed or replaced after the query listed it: a partition's
    summed files are superseded as parts commit, and dropped when a part is rewritten. Listing again
    (running the query again) sees the files there now."""
    return any(m in str(exc) for m in ("Cannot open file", "No files found that match the pattern", "No such file",
                                       "TProtocolException"))


def read_by_name(con: duckdb.DuckDBPyConnection) -> bool:
    """After a "schema mismatch" error: recreate the views of ``con`` (from :func:`connect`) so that
    the sources whose files differ are read by column name. False when nothing changed."""
    known = _ROOTS.get(con)
    if known is None:
        return False
    st, only = known
    mixed = mixed_schema_globs(con, st)
    if not mixed:
        return False
    create_views(con, st, by_name_globs=mixed, only=only)
    return True


def connect(root: str | Storage, storage_options: Mapping[str, Any] | None = None, *,
            reap: bool = True, only: Collection[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with all views over ``root`` (any fsspec URL).

    For a non-local root the root's fsspec filesystem is registered with DuckDB, so
    no DuckDB extension (httpfs) has to be downloaded. The views are built from the
    files present now: after new results are committed, connect again (or call
    :func:`create_views`) to pick up sources that were empty before.

    ``reap``: first write ``interrupted`` into the record of every run that says it is alive but
    whose process on this machine is gone (:func:`reap_dead_runs`): SQL cannot see processes, so
    this is how every query agrees with ``abs-eval status`` right after a run is killed.

    ``only``: create just the views and macros of these names (each with what it reads), for a reader
    that needs no more (``abs-eval status``: :data:`tasks.results.catalog.RUNS_VIEWS`); see :func:`view_texts`.
    """
    st = as_storage(root, storage_options)
    con = duckdb.connect()
    if not st.is_local:
        con.register_filesystem(st.fs)
    for attempt in range(READ_RETRIES + 1):
        try:
            create_views(con, st, only=only)
            break
        except duckdb.Error as exc:  # a file seen when the sources were checked was gone when a view was bound
            if not (_vanished(exc) and attempt < READ_RETRIES):
                con.close()
                raise
            time.sleep(0.05 * (attempt + 1))
    if reap:
        reap_dead_runs(con, st)
    return con


def reap_dead_runs(con: duckdb.DuckDBPyConnection, st: Storage) -> list[str]:
    """:func:`tasks.results.runs.reap_dead_runs` for the runs that the ``run_records`` view says are alive
    (``queued``, ``starting``, ``running``, lease not passed) on this host; returns the ids written.
    Best effort: a root that cannot be read or written changes nothing (the lease rule stays)."""
    import socket

    from tasks.results.runs import LIVE
    from tasks.results.runs import reap_dead_runs as reap

    try:
        ids = [r[0] for r in con.execute(
            f"SELECT run_id FROM run_records WHERE status IN ({', '.join('?' for _ in LIVE)}) AND host = ?",
            [*LIVE, socket.gethostname()]).fetchall()]
        return reap(st, ids) if ids else []
    except (duckdb.Error, OSError, ValueError):
        return []


def write_catalog(
    root: str | Storage,
    out_path: str | os.PathLike[str] = "results.duckdb",
    *,
    storage_options: Mapping[str, Any] | None = None,
    relative: bool = False,
    storage_version: str = CATALOG_STORAGE_VERSION,
    allow_remote: bool = False,
) -> str:
    """Write a DuckDB file holding the views (and macros) over ``root``; returns its absolute path.

    Then ``duckdb results.duckdb -c "from accuracy"`` works without knowing any path.
    The file holds no data, only view definitions with the root's absolute path in
    them (``relative=True``: paths relative to the current directory, for a catalog
    used by a shell started inside the root). It is written to a temporary name and
    moved into place, so an analyst never opens half a catalog.

    ``storage_version``: the oldest DuckDB storage format to write, so that the
    ``duckdb`` shell (``duckdb-cli`` on PyPI, which may lag the Python package) can
    open the file; the default opens in every DuckDB >= 1.4.

    Remote roots: the views would read ``s3://``-style URLs, which the duckdb shell
    can only open with its httpfs extension (downloaded at first use) and credentials
    of its own, so they need ``allow_remote=True``; ``memory://`` roots cannot be
    opened by another process at all and are refused. In Python, use :func:`connect`.
    """
    st = as_storage(root, storage_options)
    if not st.is_local:
        if st.protocol == "memory":
            raise ValueError("a memory:// root lives in this process only: use tasks.results.catalog.connect() instead of a catalog file")
        if not allow_remote:
            raise ValueError(
                f"{st.root} is not a local folder: the duckdb shell would need its httpfs extension and credentials "
                "to read it. If that is set up, pass --allow-remote (`abs-eval sql catalog --allow-remote`, or "
                "allow_remote=True in Python); otherwise query it with `abs-eval sql run` or tasks.results.catalog.connect()."
            )
    if relative and not st.is_local:
        raise ValueError("relative=True is for a local root opened by a shell started inside it")
    out = Path(out_path).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    con = duckdb.connect()
    try:
        if not st.is_local:
            con.register_filesystem(st.fs)
        con.execute(f"ATTACH '{_sql_literal(str(tmp))}' AS abs_eval_catalog (STORAGE_VERSION '{_sql_literal(storage_version)}')")
        con.execute("USE abs_eval_catalog")
        if relative:
            # Views are bound when created: resolve the relative globs against the root.
            con.execute(f"SET file_search_path = '{_sql_literal(st.root_path)}'")
        create_views(con, st, root_sql="." if relative else None, by_name_globs=mixed_schema_globs(con, st))
        con.execute("USE memory")
        con.execute("DETACH abs_eval_catalog")
    except BaseException:
        con.close()
        for p in (tmp, Path(f"{tmp}.wal")):
            p.unlink(missing_ok=True)
        raise
    con.close()
    os.replace(tmp, out)
    return str(out)


# ---------------------------------------------------------------------- rollups
#: The counts of one prediction part, grouped as ``tables.ROLLUP_SCHEMA``: what the aggregate views
#: (accuracy, per_class_accuracy, confusions and everything built on them) read instead of the part's
#: rows. The same expressions as the raw-row fallback in ``sql/views/10_sources.sql`` (a part without
#: a rollup is counted from its rows there), so both give the same numbers (tests/test_rollups.py).
ROLLUP_SQL = """
SELECT run_id,
       shard,
       method,
       label,
       any_value(class_name) AS class_name,
       pred,
       any_value(pred_name) AS pred_name,
       count(*) AS n,
       count(*) FILTER (WHERE status = 'ok') AS n_ok,
       count(*) FILTER (WHERE status = 'ok' AND pred = label) AS n_correct,
       count(*) FILTER (WHERE status = 'ok' AND coalesce(list_contains(top5, label), false)) AS n_correct5
FROM part_rows
GROUP BY run_id, shard, method, label, pred
ORDER BY method, label, pred, run_id, shard
"""


#: The summed counts of a partition's parts (``layout.partition_rollup``): the part rollups' rows summed
#: per (method, label, pred), without the computing run and shard.
PARTITION_ROLLUP_SQL = """
SELECT method,
       label,
       any_value(class_name) AS class_name,
       pred,
       any_value(pred_name) AS pred_name,
       sum(n)::BIGINT AS n,
       sum(n_ok)::BIGINT AS n_ok,
       sum(n_correct)::BIGINT AS n_correct,
       sum(n_correct5)::BIGINT AS n_correct5
FROM parts
GROUP BY method, label, pred
ORDER BY method, label, pred
"""


def rollup_table(rows: pa.Table) -> pa.Table:
    """The rollup of a prediction part's rows (``tables.PREDICTION_SCHEMA``), as ``tables.ROLLUP_SCHEMA``."""
    con = duckdb.connect()
    try:
        con.register("part_rows", rows.select(["run_id", "shard", "method", "label", "class_name", "pred",
                                               "pred_name", "status", "top5"]))
        out = _to_arrow(con.sql(ROLLUP_SQL))
    finally:
        con.close()
    return pa.Table.from_arrays([out.column(f.name).cast(f.type) for f in ROLLUP_SCHEMA], schema=ROLLUP_SCHEMA)


def error_rows_table(rows: pa.Table) -> pa.Table:
    """The error rows (status <> 'ok') of a prediction part's rows, as :data:`ERRORS_SCHEMA`, by image and method."""
    import pyarrow.compute as pc

    bad = rows.filter(pc.not_equal(rows.column("status"), "ok")).select(ERRORS_SCHEMA.names)
    if bad.num_rows:
        bad = bad.sort_by([("image_id", "ascending"), ("method", "ascending")])
    return pa.Table.from_arrays([bad.column(f.name).cast(f.type) for f in ERRORS_SCHEMA], schema=ERRORS_SCHEMA)


def errors_of_part(prediction_rel: str) -> str:
    """Where the error rows of the prediction part ``prediction_rel`` go: ``rollups/<partition>/errors-part-<n>.parquet``."""
    d, name = posixpath.split(rollup_of(prediction_rel))
    return f"{d}/errors-{name}"


def write_rollup(storage: Storage, prediction_rel: str, rows: pa.Table) -> str:
    """Commit the rollup of the prediction part ``prediction_rel`` (its ``rows``) beside it; returns its path.

    Same protocol as every data file: written under ``_tmp/``, moved into place, then its done-marker.
    Call it after the part is in place and before the part's own marker (tasks/steps/infer.py), so that a
    committed part always has its rollup; a part without one (an older root, a crash in between) is
    counted from its rows by the views. First the part's error rows (:func:`errors_of_part`, what the
    ``errors`` view reads), then its counts. Then the partition's summed counts and error rows are
    brought up to date (:func:`compact_partition`).
    """
    rel = rollup_of(prediction_rel)
    erel = errors_of_part(prediction_rel)
    table = rollup_table(rows)
    if storage.exists(rel) or storage.exists(erel):  # counts rewritten: the partition's sums held the old ones
        drop_rollup(storage, prediction_rel)
    storage.write_parquet(erel, error_rows_table(rows))
    storage.write_parquet(rel, table)
    storage.mark_done(marker_key(rel), {"rows": rows.num_rows, "groups": table.num_rows})
    compact_partition(storage, posixpath.dirname(prediction_rel))
    return rel


def _partition_rollups(storage: Storage, prediction_dir: str, kind: str = "all") -> list[str]:
    """The partition-wide files of ``kind`` of a partition (relative paths), most parts first: ``all-*.parquet``
    (summed counts), ``shards-all-*.parquet`` (rows per run, shard, method), ``errors-all-*.parquet`` (error rows)."""
    found = storage.glob(f"{rollup_of(prediction_dir)}/{kind}-*.parquet")
    return sorted((posixpath.relpath(p, storage.root_path) for p in found), reverse=True)


def _parts_in_name(rel: str) -> int:
    """k of ``[errors-]all-<k>-<md5>.parquet``."""
    return int(posixpath.basename(rel).rsplit("-", 2)[-2])


def _remove(storage: Storage, rel: str) -> bool:
    found = False
    for path in (storage.path(rel), storage.path(storage.marker_path(marker_key(rel)))):
        try:
            if storage.fs.exists(path):
                storage.fs.rm(path)
                found = True
        except FileNotFoundError:  # removed by another writer meanwhile
            pass
    return found


def drop_rollup(storage: Storage, prediction_rel: str) -> bool:
    """Remove the rollup and error rows of ``prediction_rel`` and its partition's summed counts and error
    rows (before the part is written again), when the part or its rollup is there; True when there was a
    rollup.

    Why: a part is rewritten only when it has no done-marker (a crash before it); its old counts
    must go first, so that no later crash leaves counts that disagree with the part."""
    erel = errors_of_part(prediction_rel)
    if not (storage.exists(rollup_of(prediction_rel)) or storage.exists(prediction_rel) or storage.exists(erel)):
        return False  # a new part: no counts of it anywhere (the partition's sums stay, and grow)
    pdir = posixpath.dirname(prediction_rel)
    for kind in _PARTITION_KINDS:
        for rel in _partition_rollups(storage, pdir, kind):
            _remove(storage, rel)
    _remove(storage, erel)
    return _remove(storage, rollup_of(prediction_rel))


def _sum_rollups(tables: list[pa.Table]) -> pa.Table:
    con = duckdb.connect()
    try:
        con.register("parts", pa.concat_tables([t.select(PARTITION_ROLLUP_SCHEMA.names).cast(PARTITION_ROLLUP_SCHEMA)
                                                for t in tables]))
        out = _to_arrow(con.sql(PARTITION_ROLLUP_SQL))
    finally:
        con.close()
    return pa.Table.from_arrays([out.column(f.name).cast(f.type) for f in PARTITION_ROLLUP_SCHEMA],
                                schema=PARTITION_ROLLUP_SCHEMA)


def _part_counts(tables: list[pa.Table]) -> pa.Table:
    """Rows per (computing run, shard, method) of part rollups (or of :data:`PART_COUNTS_SCHEMA` tables)."""
    con = duckdb.connect()
    try:
        con.register("parts", pa.concat_tables([t.select(PART_COUNTS_SCHEMA.names).cast(PART_COUNTS_SCHEMA)
                                                for t in tables]))
        out = _to_arrow(con.sql("SELECT run_id, shard, method, sum(n)::BIGINT AS n, sum(n_ok)::BIGINT AS n_ok "
                                "FROM parts GROUP BY run_id, shard, method ORDER BY shard, method, run_id"))
    finally:
        con.close()
    return pa.Table.from_arrays([out.column(f.name).cast(f.type) for f in PART_COUNTS_SCHEMA], schema=PART_COUNTS_SCHEMA)


def _error_rows(tables: list[pa.Table]) -> pa.Table:
    rows = pa.concat_tables([t.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA) for t in tables])
    if rows.num_rows:
        rows = rows.sort_by([("shard", "ascending"), ("image_id", "ascending"), ("method", "ascending")])
    return rows


#: The partition-wide files :func:`compact_partition` keeps up to date: kind -> (the per-part files they
#: are made of, by name prefix in the partition's rollups folder; how one is read; how they are combined).
_PARTITION_KINDS = {
    "all": ("", lambda t: t.drop_columns(["run_id", "shard"]), _sum_rollups),
    "shards-all": ("", lambda t: t, _part_counts),
    "errors-all": ("errors-", lambda t: t, _error_rows),
}


def compact_partition(storage: Storage, prediction_dir: str) -> str | None:
    """Write the partition-wide files of a partition for the parts there now: its summed counts
    (``all-<k>-<md5>.parquet``, ``layout.partition_rollup``), its rows per (computing run, shard, method)
    (``shards-all-...``, what the ``runs`` view counts shards and images from) and its error rows
    (``errors-all-...``, what the ``errors`` view reads). Returns the summed counts' path, or None when
    some part has no rollup yet (then the views read the parts' rollups one by one).

    Why: with 1,000 classes a part of 1,000 images has up to 4,000 count groups (one per image and
    method when every class is in every part), so per-part counts alone are as many rows as the
    part; summed over the partition they are one row per (method, label, pred). A completed run
    stands for its whole partition, so the aggregate views read this one file for it. Incremental:
    the largest earlier file plus the parts it does not cover (its marker lists them). Smaller
    files of the partition are removed (why not kept a while for readers: the views' globs would read
    them too, a third slower over 50 runs; a reader that listed one retries, :data:`READ_RETRIES`);
    one a concurrent writer left behind is ignored by the views (its name no longer matches the parts
    there).
    """
    names = sorted(posixpath.basename(p) for p in storage.glob(f"{prediction_dir}/part-*.parquet"))
    out = None
    for kind in _PARTITION_KINDS:
        done = _compact(storage, prediction_dir, names, kind)
        if kind == "all":
            out = done
    return out


def _partition_file(prediction_dir: str, names: list[str], kind: str) -> str:
    d, name = posixpath.split(partition_rollup(prediction_dir, names))
    return f"{d}/{kind}{name[len('all'):]}"


def _compact(storage: Storage, prediction_dir: str, names: list[str], kind: str) -> str | None:
    """One partition-wide file of ``kind`` (see :data:`_PARTITION_KINDS`) for the parts ``names``."""
    prefix, load, combine = _PARTITION_KINDS[kind]
    rdir = rollup_of(prediction_dir)
    have = {posixpath.basename(p)[len(prefix):] for p in storage.glob(f"{rdir}/{prefix}part-*.parquet")}
    if not names or not set(names) <= have:
        return None
    target = _partition_file(prediction_dir, names, kind)
    earlier = _partition_rollups(storage, prediction_dir, kind)
    if target in earlier:
        return target
    tables, covered = [], set()
    for rel in earlier:
        try:
            done = set((storage.read_marker(marker_key(rel)) or {}).get("parts") or [])
            if done and done <= set(names):
                tables, covered = [storage.read_parquet(rel)], done
                break
        except FileNotFoundError:
            continue
    try:
        for name in names:
            if name not in covered:
                tables.append(load(storage.read_parquet(f"{rdir}/{prefix}{name}")))
    except FileNotFoundError:  # dropped meanwhile (its part is being rewritten)
        return None
    table = combine(tables)
    storage.write_parquet(target, table)
    storage.mark_done(marker_key(target), {"parts": names, "rows": table.num_rows})
    # superseded (a reader that listed one a moment ago lists again: tasks.results.catalog.run_query retries)
    for rel in earlier:
        if _parts_in_name(rel) <= len(names):
            _remove(storage, rel)
    return target


def build_rollups(root: str | Storage, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Write the missing rollup (and error rows file) of every committed prediction part (done-marker and
    file), and the summed counts and error rows of every partition whose parts all have them; returns the
    paths of the part rollups and error rows files written.

    For roots written before rollups existed: the views count such parts from their rows (correct,
    slower), so this only makes them fast. Parts without a done-marker (a crashed run's, recomputed
    on resume) are left alone.
    """
    st = as_storage(root, storage_options)
    have = {posixpath.relpath(p, st.root_path) for p in st.glob("rollups/*/*/*/part-*.parquet")}
    have |= {posixpath.relpath(p, st.root_path) for p in st.glob("rollups/*/*/*/errors-part-*.parquet")}
    written = []
    partitions = set()
    for path in st.glob(f"{PREDICTIONS_DIR}/*/*/*/part-*.parquet"):
        rel = posixpath.relpath(path, st.root_path)
        partitions.add(posixpath.dirname(rel))
        rel_roll, rel_err = rollup_of(rel), errors_of_part(rel)
        if (rel_roll in have and rel_err in have) or not st.is_done(marker_key(rel)):
            continue
        rows = st.read_parquet(rel)
        if rel_err not in have:
            st.write_parquet(rel_err, error_rows_table(rows))
            written.append(rel_err)
        if rel_roll not in have:
            table = rollup_table(rows)
            st.write_parquet(rel_roll, table)
            st.mark_done(marker_key(rel_roll), {"rows": int(sum(table.column("n").to_pylist())),
                                                 "groups": table.num_rows})
            written.append(rel_roll)
    for pdir in sorted(partitions):
        compact_partition(st, pdir)
    return written


# ---------------------------------------------------------------------- queries
def _view_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}


def resolve_sql(con: duckdb.DuckDBPyConnection, name_or_sql: str) -> str:
    """A named query's text, ``SELECT * FROM <view>`` for a view name, else the SQL itself."""
    text = name_or_sql.strip()
    if _IDENT.match(text):
        if text in list_queries():
            return query_sql(text)
        if text in _view_names(con):
            return f"SELECT * FROM {text}"
        raise KeyError(f"{text!r} is neither a query ({', '.join(list_queries())}) nor a view ({', '.join(sorted(_view_names(con)))})")
    return name_or_sql


def _to_arrow(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    out = fetch()
    return out if isinstance(out, pa.Table) else out.read_all()


class QueryError(ValueError):
    """A query that DuckDB refused (unknown column or table, syntax): its first line, no traceback."""


def run_query(
    root: str | Storage | duckdb.DuckDBPyConnection,
    name_or_sql: str,
    params: Mapping[str, Any] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Run a named query (``sql/queries/<name>.sql``), a view name, or any SQL; returns an Arrow table.

    ``root``: a storage root (the views are created on a fresh connection) or a
    connection from :func:`connect` (reused; cheaper for many queries). ``params``
    become DuckDB variables for this call only (``{"run_a": "r1"}`` is
    ``SET VARIABLE run_a = 'r1'``); a ``None`` value leaves the variable unset.
    """
    own = not isinstance(root, duckdb.DuckDBPyConnection)
    con = connect(root, storage_options) if own else root
    params = dict(params or {})
    for key in params:
        if not _IDENT.match(key):
            raise ValueError(f"parameter name {key!r} is not a plain identifier")
    try:
        sql = resolve_sql(con, name_or_sql)
        for key, value in params.items():
            if value is None:
                con.execute(f"RESET VARIABLE {key}")
            else:
                con.execute(f"SET VARIABLE {key} = ?", [value])
        try:
            for attempt in range(READ_RETRIES + 1):
                try:
                    rel = con.sql(sql)
                    return _to_arrow(rel) if rel is not None else pa.table({})
                except duckdb.Error as exc:
                    if _schema_mismatch(exc) and read_by_name(con):
                        continue
                    if not (_vanished(exc) and attempt < READ_RETRIES):
                        raise
                    time.sleep(0.05 * (attempt + 1))  # a writer replaced a file we listed: list again
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QueryError(f"{first} (views: {', '.join(sorted(_view_names(con)))})") from None
    finally:
        if own:
            con.close()
        else:
            for key in params:
                con.execute(f"RESET VARIABLE {key}")


# ---------------------------------------------------------------------- output
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def export(table: pa.Table, path: str, fmt: str | None = None) -> str:
    """Write ``table`` to ``path`` (local or any fsspec URL) as csv, parquet, json (an array) or jsonl.

    ``fmt`` defaults to the file suffix. CSV and JSON are written by DuckDB (lists
    and timestamps come out as DuckDB prints them); Parquet keeps the Arrow types.
    """
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
            con.execute(f"COPY (SELECT * FROM export_table) TO '{_sql_literal(tmp)}' ({options})")
        finally:
            con.close()
        with open(tmp, "rb") as src, fsspec.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return path


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return "NaN" if v != v else f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        text = "[" + ", ".join(_cell(x) for x in v[:6]) + (", ..." if len(v) > 6 else "") + "]"
        return text
    if hasattr(v, "strftime"):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def format_table(table: pa.Table, max_rows: int = 50, width: int | None = None) -> str:
    """A plain text table of ``table`` that fits ``width`` columns (default: the terminal's).

    Columns are kept from the left, so queries put what matters first (method,
    accuracy, interval, n); columns that do not fit are named in a last line instead
    of being cut in the middle. Floats show 4 decimals; ``--out`` writes them whole.
    """
    import shutil

    width = width or shutil.get_terminal_size((100, 24)).columns
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()
    cells = [[_cell(r[n]) for n in names] for r in rows]
    widths = [min(40, max([len(n)] + [len(c[i]) for c in cells])) for i, n in enumerate(names)]
    kept, used = [], 0
    for i, w in enumerate(widths):
        if kept and used + w + 2 > width:
            break
        kept.append(i)
        used += w + 2

    def fmt_row(values: list[str]) -> str:
        out = []
        for i in kept:
            v = values[i] if len(values[i]) <= widths[i] else values[i][: widths[i] - 1] + "~"
            numeric = table.schema.field(i).type in (pa.float32(), pa.float64()) or pa.types.is_integer(
                table.schema.field(i).type)
            out.append(v.rjust(widths[i]) if numeric else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt_row(names), "  ".join("-" * widths[i] for i in kept)]
    lines += [fmt_row(c) for c in cells]
    if not rows:
        lines.append("(no rows)")
    if table.num_rows > max_rows:
        lines.append(f"({table.num_rows} rows, first {max_rows} shown)")
    hidden = [names[i] for i in range(len(names)) if i not in kept]
    if hidden:
        lines.append(f"(not shown at {width} columns: {', '.join(hidden)}; use --out FILE or a wider terminal)")
    return "\n".join(lines) + "\n"


def format_accuracy(rows: list[dict[str, Any]]) -> str:
    """The accuracy rows of one run as method, accuracy, 95% interval, n, errors: under 60 columns."""
    lines = [f"{'method':<8} {'accuracy':>8}  {'95% CI':<17} {'n':>7} {'errors':>7}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
        ci = "" if r.get("ci_low") is None else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
        lines.append(f"{r['method']:<8} {acc:>8}  {ci:<17} {r['n']:>7} {r['n_error']:>7}")
    if not rows:
        lines.append("(no prediction rows for this run)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- CLIP_benchmark export
#: The CLIP_benchmark task every exported result belongs to, and the CSV written beside the JSON files.
CLIP_BENCHMARK_TASK = "zeroshot_classification"
CLIP_BENCHMARK_CSV = "results.csv"
#: Columns of ``results.csv`` (CLIP_benchmark's keys first, its metrics flattened, then ours).
CLIP_BENCHMARK_CSV_COLUMNS = (
    "dataset", "model", "pretrained", "task", "language", "acc1", "acc5", "mean_per_class_recall",
    "method", "run_id", "n", "n_ok", "n_error", "acc1_ci_low", "acc1_ci_high", "deployment", "config",
    "model_slug", "started_at", "file",
)


class ExportError(ValueError):
    """An export that cannot be made (unknown run, nothing to export, unwritable output): one line."""


@dataclass
class ClipBenchmarkExport:
    """What :func:`export_clip_benchmark` wrote: the result objects and the files (none for ``out='-'``)."""

    results: list[dict[str, Any]]
    files: list[str]


def clip_benchmark_results(
    root: str | Storage,
    run_ids: Sequence[str] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """CLIP_benchmark result objects, one per (dataset, model, method) of each chosen run.

    The shape of CLIP_benchmark's ``eval`` output (``dataset``, ``model``, ``pretrained``,
    ``task``, ``metrics`` with ``acc1``, ``acc5``, ``mean_per_class_recall``, ``language``)
    plus ``method``, ``run_id``, counts, the acc1 interval and the run's config, so a
    result can be compared with published CLIP_benchmark tables and traced back to its run.
    Every number comes from ``sql/queries/clip_benchmark.sql``.

    ``run_ids``: the runs to export (each must exist and be completed); default: the latest
    completed run of each (dataset, model). Raises :class:`ExportError` with one line.
    """
    st = as_storage(root, storage_options)
    con = connect(st)
    try:
        status = {r["run_id"]: r["status"] for r in run_query(con, "SELECT run_id, status FROM run_records").to_pylist()}
        if not status:
            raise ExportError(f"no runs under {st.root} (runs are recorded in {st.root}/runs/); pass --root "
                              "or set ABS_EVAL_ROOT")
        wanted = list(dict.fromkeys(run_ids or []))
        unknown = [r for r in wanted if r not in status]
        if unknown:
            raise ExportError(f"unknown run id {', '.join(repr(r) for r in unknown)} under {st.root} "
                              f"(`abs-eval status --root {st.root}` lists the runs)")
        unfinished = [f"{r} ({status[r]})" for r in wanted if status[r] != "completed"]
        if unfinished:
            raise ExportError(f"run {', '.join(unfinished)} is not completed: its numbers cover only the shards it "
                              "had, not the dataset; export a completed run")
        rows = run_query(con, "clip_benchmark", {"run_ids": wanted or None}).to_pylist()
    finally:
        con.close()
    if not rows:
        raise ExportError(f"no completed run with predictions under {st.root}")
    return [_clip_benchmark_object(r) for r in rows]


def _clip_benchmark_object(r: Mapping[str, Any]) -> dict[str, Any]:
    try:
        params = json.loads(r["config_json"]) if r.get("config_json") else {}
    except ValueError:
        params = {}
    started = r.get("started_at")
    return {
        "dataset": r["dataset"],
        "model": r["model"],
        "pretrained": r["pretrained"],
        "task": r["task"],
        "metrics": {"acc1": r["acc1"], "acc5": r["acc5"], "mean_per_class_recall": r["mean_per_class_recall"]},
        "language": r["language"],
        "method": r["method"],
        "run_id": r["run_id"],
        "n": r["n"],
        "n_ok": r["n_ok"],
        "n_error": r["n_error"],
        "acc1_ci95": [r["acc1_ci_low"], r["acc1_ci_high"]],
        "deployment": r["deployment"],
        "model_slug": r["model_slug"],
        "started_at": started.isoformat() if hasattr(started, "isoformat") else started,
        "config": {"hash": r["config"], "clip_weights_digest": r.get("clip_weights_digest"),
                   "dino_model": r.get("dino_model"), "dino_pretrained": r.get("dino_pretrained"),
                   "descriptions_hash": r.get("descriptions_hash"),
                   **({"params": params} if params else {})},
    }


def clip_benchmark_filename(result: Mapping[str, Any], with_run_id: bool = False) -> str:
    """``<dataset>_<pretrained>_<model>_<language>_<task>_<method>.json``: CLIP_benchmark's default
    ``--output`` template with the method appended (a checkpoint path counts by its file name, as
    there); ``with_run_id`` appends ``_<run_id>`` (two exported runs of one dataset x model)."""
    pretrained = str(result["pretrained"]).rstrip("/").rsplit("/", 1)[-1]
    parts = [result["dataset"], pretrained, result["model"], result["language"], result["task"], result["method"]]
    if with_run_id:
        parts.append(result["run_id"])
    return "_".join(slug(str(p)) for p in parts) + ".json"


def export_clip_benchmark(
    root: str | Storage,
    out: str,
    run_ids: Sequence[str] | None = None,
    *,
    stream: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ClipBenchmarkExport:
    """Write the runs' results in CLIP_benchmark's format (see :func:`clip_benchmark_results`).

    ``out``: a folder (local or any fsspec URL) that gets one JSON file per result, named by
    :func:`clip_benchmark_filename`, plus ``results.csv`` with one row per result; or ``"-"``:
    the JSON objects as JSON lines on ``stream`` (default: stdout). Raises :class:`ExportError`
    (one line) for an unknown or unfinished run, a root without runs, an unwritable ``out``.
    """
    import csv
    import sys

    results = clip_benchmark_results(root, run_ids, storage_options=storage_options)
    if out == "-":
        stream = stream or sys.stdout
        for res in results:
            stream.write(json.dumps(res) + "\n")
        stream.flush()
        return ClipBenchmarkExport(results, [])
    names = Counter(clip_benchmark_filename(r) for r in results)
    files = [clip_benchmark_filename(r, with_run_id=names[clip_benchmark_filename(r)] > 1) for r in results]
    try:
        fs, base = fsspec.core.url_to_fs(out)
        if fs.exists(base) and not fs.isdir(base):
            raise ExportError(f"cannot write to {out}: it is a file, not a folder")
        fs.makedirs(base, exist_ok=True)
        written = []
        for res, name in zip(results, files):
            path = f"{base.rstrip('/')}/{name}"
            with fs.open(path, "w") as f:
                json.dump(res, f, indent=2)
                f.write("\n")
            written.append(fs.unstrip_protocol(path) if not _is_local(fs) else path)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CLIP_BENCHMARK_CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for res, name in zip(results, files):
            writer.writerow({**{k: res.get(k) for k in CLIP_BENCHMARK_CSV_COLUMNS}, **res["metrics"],
                             "acc1_ci_low": res["acc1_ci95"][0], "acc1_ci_high": res["acc1_ci95"][1],
                             "config": res["config"]["hash"], "file": name})
        csv_path = f"{base.rstrip('/')}/{CLIP_BENCHMARK_CSV}"
        with fs.open(csv_path, "w") as f:
            f.write(text.getvalue())
        written.append(fs.unstrip_protocol(csv_path) if not _is_local(fs) else csv_path)
    except ExportError:
        raise
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"cannot write to {out}: {reason}") from None
    return ClipBenchmarkExport(results, written)


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


# ---------------------------------------------------------------------- run progress (abs-eval status)
#: What :func:`run_progress` reads: the ``runs_of`` macro (``sql/views/21_runs.sql``) and the views it reads;
#: only these are created (binding every view costs more than the query, ~2 s over 50 ImageNet runs).
RUNS_VIEWS = ("run_records", "runs_of")
#: Columns of :func:`run_progress`, from the ``runs`` view.
PROGRESS_COLUMNS = ("run_id", "status", "dataset", "model", "config", "deployment", "shards_total", "shards_done",
                    "shards_computed", "shards_reused", "n_images", "n_ok", "n_error", "started_at", "ended_at",
                    "flow_run_id")


def run_progress(root: str | Storage, run_id: str | None = None, latest: int = 10) -> list[dict[str, Any]]:
    """Per run, newest first: status, shards done / computed / reused, images and errors (``abs-eval status``).

    Why from SQL: this is the ``runs`` view (``sql/views/21_runs.sql``) for the ``latest`` newest runs,
    so ``status`` says what every query, the export and the report say, at every moment: the same
    status (a dead process on this host is written down first, :func:`tasks.results.runs.reap_dead_runs`) and the same
    shards and images, counted from the committed parts the run stands for (its own plus those
    committed before it started; a completed run: its whole partition). ``KeyError`` for an
    unknown ``run_id``.
    """
    from tasks.results import runs as runs_mod

    st = as_storage(root)
    con = connect(st, only=RUNS_VIEWS, reap=False)  # reaped below, only when a row needs it
    cols = ", ".join(PROGRESS_COLUMNS + ("host",))

    def query() -> list[dict[str, Any]]:
        # a list of run ids, not a subquery: DuckDB then reads only those runs' files (twice as fast)
        return run_query(con, f"SELECT {cols} FROM runs_of(getvariable('ids')) ORDER BY run_id DESC",
                         {"ids": ids}).to_pylist() if ids else []

    try:
        ids = [run_id] if run_id is not None else runs_mod.list_run_ids(st)[:max(0, int(latest))]  # ids sort by start
        rows = query()
        here = [r["run_id"] for r in rows if r["status"] in runs_mod.LIVE and r["host"] == socket.gethostname()]
        if here and runs_mod.reap_dead_runs(st, here):  # a live-looking run on this host whose process is gone
            rows = query()
        if run_id is not None and not rows:
            known = [r["run_id"] for r in run_query(
                con, "SELECT run_id FROM run_records ORDER BY run_id DESC LIMIT 3").to_pylist()]
            hint = f"; latest: {', '.join(known)}" if known else "; it holds no runs"
            raise KeyError(f"no run {run_id!r} under {st.root}{hint}")
    finally:
        con.close()
    for r in rows:
        del r["host"]
    return rows
