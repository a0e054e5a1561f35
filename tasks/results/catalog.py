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

What is not here (one job per module): writing an answer to a file and the CLIP_benchmark
export (``tasks.results.export``), terminal tables (``tasks.results.formatting``), ``abs-eval
status`` (``tasks.results.progress``), and the rollups the views read, which are committed data
files like any other (``tasks.store.rollups``). This module writes no data file of the root (only a
dead run's status, through ``tasks.results.runs``: :func:`reap_dead_runs`).
"""

from __future__ import annotations

import os
import re
import time
import uuid
import weakref
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from sql import SQL_DIR  # the SQL files, shipped as package data
from tasks.store import Storage, as_storage
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
            text = "".join(
                st for st in _STATEMENT_START.split(text) if (m := _STATEMENT_NAME.match(st)) and m.group(1) in only
            )
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
            for cont in lines[i + 1 :]:
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
    return {
        m.group("glob")
        for p in view_files()
        for m in _SOURCE_CALL.finditer(p.read_text())
        if "union_by_name" not in m.group(0)
    }


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
            f"ORDER BY name, coalesce(type, '')) AS cols FROM parquet_schema('{url}') GROUP BY file_name)"
        ).fetchall()[0][0]
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
    con.execute(
        render_views(root_sql if root_sql is not None else _root_sql(st), _empty_globs(st, only), by_name_globs, only)
    )
    _ROOTS[con] = (st, only)


def _root_sql(st: Storage) -> str:
    return st.root_path if st.is_local else st.url()


#: The storage root whose views each connection holds (weak keys: an entry goes with its
#: connection), so that a query that meets files of different versions can recreate the
#: views reading them by name.
_ROOTS: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, tuple[Storage, Collection[str] | None]] = (
    weakref.WeakKeyDictionary()
)


def _schema_mismatch(exc: BaseException) -> bool:
    return "schema mismatch" in str(exc)


#: Times a query (or a connection's views) is tried again when a file it listed was gone when it read it.
READ_RETRIES = 3


def _vanished(exc: BaseException) -> bool:
    """A read that met a file a writer removed or replaced after the query listed it: a partition's
    summed files are superseded as parts commit, and dropped when a part is rewritten. Listing again
    (running the query again) sees the files there now."""
    return any(
        m in str(exc)
        for m in ("Cannot open file", "No files found that match the pattern", "No such file", "TProtocolException")
    )


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


def connect(
    root: str | Storage,
    storage_options: Mapping[str, Any] | None = None,
    *,
    reap: bool = True,
    only: Collection[str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with all views over ``root`` (any fsspec URL).

    For a non-local root the root's fsspec filesystem is registered with DuckDB, so
    no DuckDB extension (httpfs) has to be downloaded. The views are built from the
    files present now: after new results are committed, connect again (or call
    :func:`create_views`) to pick up sources that were empty before.

    ``reap``: first write ``interrupted`` into the record of every run that says it is alive but
    whose process on this machine is gone (:func:`reap_dead_runs`): SQL cannot see processes, so
    this is how every query agrees with ``abs-eval status`` right after a run is killed.

    ``only``: create just the views and macros of these names (each with what it reads), for a reader
    that needs no more (``abs-eval status``: :data:`tasks.results.progress.RUNS_VIEWS`); see :func:`view_texts`.
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
        ids = [
            r[0]
            for r in con.execute(
                f"SELECT run_id FROM run_records WHERE status IN ({', '.join('?' for _ in LIVE)}) AND host = ?",
                [*LIVE, socket.gethostname()],
            ).fetchall()
        ]
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
            raise ValueError(
                "a memory:// root lives in this process only: use tasks.results.catalog.connect() instead of a catalog file"
            )
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
        con.execute(
            f"ATTACH '{_sql_literal(str(tmp))}' AS abs_eval_catalog (STORAGE_VERSION '{_sql_literal(storage_version)}')"
        )
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
        raise KeyError(
            f"{text!r} is neither a query ({', '.join(list_queries())}) nor a view ({', '.join(sorted(_view_names(con)))})"
        )
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
    con: duckdb.DuckDBPyConnection = (
        root if isinstance(root, duckdb.DuckDBPyConnection) else connect(root, storage_options)
    )
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
