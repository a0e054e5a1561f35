"""The prediction rollups: derived Parquet files committed beside each prediction part and partition.

What they are (the storage layout: ``tasks.store.paths``; the schemas: ``tasks.store.tables``)::

    rollups/<partition>/part-<n>.parquet               the part's counts per (run, shard, method, label, pred)
    rollups/<partition>/errors-part-<n>.parquet        the part's error rows (status <> 'ok')
    rollups/<partition>/all-<k>-<md5>.parquet          the counts of the partition's k parts, summed
    rollups/<partition>/shards-all-<k>-<md5>.parquet   rows per (run, shard, method) of the k parts
    rollups/<partition>/errors-all-<k>-<md5>.parquet   the error rows of the k parts

Why in the store and not beside the views that read them: writing them is a commit of data files
(``tasks.store.commits``: file, then done-marker), done by the inference step after each part and
by ``build_rollups`` for older roots; the read side (``tasks.results``) only reads them through
``sql/views``. Here the pipeline step that writes them imports them from below it, not from the
results layer.

The rows stay the source of truth: a part without a rollup is counted from its rows by
``sql/views/10_sources.sql`` with the same expressions as :data:`ROLLUP_SQL`, so the numbers never
depend on which rollups exist (``tests/test_rollups.py``). DuckDB is imported where it is used:
importing this module costs pyarrow only.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tasks.store import commits
from tasks.store.markers import PartitionFileMarker, RollupPartMarker
from tasks.store.paths import PREDICTIONS_DIR, partition_rollup, rollup_of
from tasks.store.storage import Storage, as_storage
from tasks.store.tables import ERRORS_SCHEMA, PART_COUNTS_SCHEMA, PARTITION_ROLLUP_SCHEMA, ROLLUP_SCHEMA

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = [
    "PARTITION_ROLLUP_SQL",
    "ROLLUP_SQL",
    "build_rollups",
    "compact_partition",
    "drop_rollup",
    "error_rows_table",
    "errors_of_part",
    "rollup_table",
    "write_rollup",
]

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


#: The summed counts of a partition's parts (``paths.partition_rollup``): the part rollups' rows summed
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

#: Rows per (computing run, shard, method) of part rollups (``tables.PART_COUNTS_SCHEMA``).
PART_COUNTS_SQL = """
SELECT run_id, shard, method, sum(n)::BIGINT AS n, sum(n_ok)::BIGINT AS n_ok
FROM parts
GROUP BY run_id, shard, method
ORDER BY shard, method, run_id
"""


def _query(sql: str, name: str, table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``sql`` over ``table`` registered as ``name``, as ``schema`` (column by column, so the types are exact)."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    try:
        con.register(name, table)
        out = _arrow(con.sql(sql))
    finally:
        con.close()
    return pa.Table.from_arrays([out.column(f.name).cast(f.type) for f in schema], schema=schema)


def _arrow(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    """A relation as an Arrow table, on every DuckDB this project allows (``to_arrow_table`` or the older ``arrow``)."""
    import pyarrow as pa

    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    out = fetch()
    return out if isinstance(out, pa.Table) else out.read_all()


# ---------------------------------------------------------------------- one part
def rollup_table(rows: pa.Table) -> pa.Table:
    """The rollup of a prediction part's rows (``tables.PREDICTION_SCHEMA``), as ``tables.ROLLUP_SCHEMA``."""
    return _query(
        ROLLUP_SQL,
        "part_rows",
        rows.select(["run_id", "shard", "method", "label", "class_name", "pred", "pred_name", "status", "top5"]),
        ROLLUP_SCHEMA,
    )


def error_rows_table(rows: pa.Table) -> pa.Table:
    """The error rows (status <> 'ok') of a prediction part's rows, as ``tables.ERRORS_SCHEMA``, by image and method."""
    import pyarrow as pa
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

    Same protocol as every data file (``tasks.store.commits``): written under ``_tmp/``, moved into
    place, then its done-marker. Call it after the part is in place and before the part's own marker
    (tasks/steps/infer.py), so that a committed part always has its rollup; a part without one (an
    older root, a crash in between) is counted from its rows by the views. First the part's error
    rows (:func:`errors_of_part`, what the ``errors`` view reads; no marker of their own: the
    rollup's marker, written after them, covers both), then its counts. Then the partition's summed
    counts and error rows are brought up to date (:func:`compact_partition`).
    """
    rel = rollup_of(prediction_rel)
    erel = errors_of_part(prediction_rel)
    table = rollup_table(rows)
    if storage.exists(rel) or storage.exists(erel):  # counts rewritten: the partition's sums held the old ones
        drop_rollup(storage, prediction_rel)
    storage.write_parquet(erel, error_rows_table(rows))
    commits.commit_parquet(storage, rel, table, RollupPartMarker(rows=rows.num_rows, groups=table.num_rows))
    compact_partition(storage, posixpath.dirname(prediction_rel))
    return rel


def drop_rollup(storage: Storage, prediction_rel: str) -> bool:
    """Remove the rollup and error rows of ``prediction_rel`` and its partition's summed counts and error
    rows (before the part is written again), when the part or its rollup is there; True when there was a
    rollup.

    Why: a part is rewritten only when it has no done-marker (a crash before it); its old counts
    must go first, so that no later crash leaves counts that disagree with the part. Each file goes
    by the commit protocol's removal (marker first, then the file: ``commits.uncommit``)."""
    erel = errors_of_part(prediction_rel)
    if not (storage.exists(rollup_of(prediction_rel)) or storage.exists(prediction_rel) or storage.exists(erel)):
        return False  # a new part: no counts of it anywhere (the partition's sums stay, and grow)
    pdir = posixpath.dirname(prediction_rel)
    for kind in _PARTITION_KINDS:
        for rel in _partition_files(storage, pdir, kind):
            commits.uncommit(storage, rel)
    commits.uncommit(storage, erel)
    return bool(commits.uncommit(storage, rollup_of(prediction_rel)))


# ---------------------------------------------------------------------- a partition
def _partition_files(storage: Storage, prediction_dir: str, kind: str = "all") -> list[str]:
    """The partition-wide files of ``kind`` of a partition (relative paths), most parts first: ``all-*.parquet``
    (summed counts), ``shards-all-*.parquet`` (rows per run, shard, method), ``errors-all-*.parquet`` (error rows)."""
    found = storage.glob(f"{rollup_of(prediction_dir)}/{kind}-*.parquet")
    return sorted((posixpath.relpath(p, storage.root_path) for p in found), reverse=True)


def _parts_in_name(rel: str) -> int:
    """k of ``[errors-|shards-]all-<k>-<md5>.parquet``."""
    return int(posixpath.basename(rel).rsplit("-", 2)[-2])


def _sum_rollups(tables: list[pa.Table]) -> pa.Table:
    import pyarrow as pa

    parts = pa.concat_tables([t.select(PARTITION_ROLLUP_SCHEMA.names).cast(PARTITION_ROLLUP_SCHEMA) for t in tables])
    return _query(PARTITION_ROLLUP_SQL, "parts", parts, PARTITION_ROLLUP_SCHEMA)


def _part_counts(tables: list[pa.Table]) -> pa.Table:
    """Rows per (computing run, shard, method) of part rollups (or of ``tables.PART_COUNTS_SCHEMA`` tables)."""
    import pyarrow as pa

    parts = pa.concat_tables([t.select(PART_COUNTS_SCHEMA.names).cast(PART_COUNTS_SCHEMA) for t in tables])
    return _query(PART_COUNTS_SQL, "parts", parts, PART_COUNTS_SCHEMA)


def _error_rows(tables: list[pa.Table]) -> pa.Table:
    import pyarrow as pa

    rows = pa.concat_tables([t.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA) for t in tables])
    if rows.num_rows:
        rows = rows.sort_by([("shard", "ascending"), ("image_id", "ascending"), ("method", "ascending")])
    return rows


#: The partition-wide files :func:`compact_partition` keeps up to date: kind -> (the per-part files they
#: are made of, by name prefix in the partition's rollups folder; how one is read; how they are combined).
_PARTITION_KINDS: dict[str, tuple[str, Callable[[pa.Table], pa.Table], Callable[[list[pa.Table]], pa.Table]]] = {
    "all": ("", lambda t: t.drop_columns(["run_id", "shard"]), _sum_rollups),
    "shards-all": ("", lambda t: t, _part_counts),
    "errors-all": ("errors-", lambda t: t, _error_rows),
}


def compact_partition(storage: Storage, prediction_dir: str) -> str | None:
    """Write the partition-wide files of a partition for the parts there now: its summed counts
    (``all-<k>-<md5>.parquet``, ``paths.partition_rollup``), its rows per (computing run, shard, method)
    (``shards-all-...``, what the ``runs`` view counts shards and images from) and its error rows
    (``errors-all-...``, what the ``errors`` view reads). Returns the summed counts' path, or None when
    some part has no rollup yet (then the views read the parts' rollups one by one).

    Why: with 1,000 classes a part of 1,000 images has up to 4,000 count groups (one per image and
    method when every class is in every part), so per-part counts alone are as many rows as the
    part; summed over the partition they are one row per (method, label, pred). A completed run
    stands for its whole partition, so the aggregate views read this one file for it. Incremental:
    the largest earlier file plus the parts it does not cover (its marker lists them,
    ``markers.PartitionFileMarker.parts``). Smaller files of the partition are removed (why not kept a
    while for readers: the views' globs would read them too, a third slower over 50 runs; a reader
    that listed one retries, ``tasks.results.catalog.READ_RETRIES``); one a concurrent writer left
    behind is ignored by the views (its name no longer matches the parts there).
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
    return f"{d}/{kind}{name[len('all') :]}"


def _compact(storage: Storage, prediction_dir: str, names: list[str], kind: str) -> str | None:
    """One partition-wide file of ``kind`` (see :data:`_PARTITION_KINDS`) for the parts ``names``."""
    prefix, load, combine = _PARTITION_KINDS[kind]
    rdir = rollup_of(prediction_dir)
    have = {posixpath.basename(p)[len(prefix) :] for p in storage.glob(f"{rdir}/{prefix}part-*.parquet")}
    if not names or not set(names) <= have:
        return None
    target = _partition_file(prediction_dir, names, kind)
    earlier = _partition_files(storage, prediction_dir, kind)
    if target in earlier:
        return target
    tables: list[pa.Table] = []
    covered: set[str] = set()
    for rel in earlier:
        marker = commits.marker_of(storage, rel)  # None: gone meanwhile, or not committed (a crash before it)
        done = set(PartitionFileMarker.from_dict(marker).parts) if marker else set()
        if done and done <= set(names):
            try:
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
    commits.commit_parquet(storage, target, table, PartitionFileMarker(parts=names, rows=table.num_rows))
    # superseded (a reader that listed one a moment ago lists again: tasks.results.catalog.run_query retries)
    for rel in earlier:
        if _parts_in_name(rel) <= len(names):
            commits.uncommit(storage, rel)
    return target


# ---------------------------------------------------------------------- a whole root
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
        if (rel_roll in have and rel_err in have) or commits.marker_of(st, rel) is None:
            continue
        rows = st.read_parquet(rel)
        if rel_err not in have:
            st.write_parquet(rel_err, error_rows_table(rows))
            written.append(rel_err)
        if rel_roll not in have:
            table = rollup_table(rows)
            commits.commit_parquet(
                st,
                rel_roll,
                table,
                RollupPartMarker(rows=int(sum(table.column("n").to_pylist())), groups=table.num_rows),
            )
            written.append(rel_roll)
    for pdir in sorted(partitions):
        compact_partition(st, pdir)
    return written
