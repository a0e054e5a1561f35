"""The storage contract: where every table lives, what columns it has, how it is committed.

- ``storage``: :class:`Storage`, one root on any fsspec filesystem with atomic commits,
  and :func:`as_storage`, the one coercion of a root URL into a ``Storage``.
- ``paths``: every relative path and done-marker key under a root.
- ``tables``: every Arrow schema the pipeline writes.
- ``images``: how image bytes are checked and decoded, and the status codes of bad ones.
- ``commits``: the commit protocol (data file, then done-marker; the skip test; removal),
  the one API every step saves and skips its units with; ``markers``: what each marker holds.
- ``rollups``: the prediction rollups (per-part and per-partition counts and error rows that the SQL
  views read instead of the rows), committed through ``commits`` after each prediction part.
- ``predictions``: which prediction parts are committed, and the one conversion of a method's logits
  into a row's score columns that inference and the variants share.
- ``datasets``: the read side of committed datasets (``read_dataset_info``, ``read_shard``,
  ``list_shards``...), importable without torch, Prefect or DuckDB.

Nothing here knows about datasets, models or Prefect; everything else builds on it.
"""

from tasks.store.storage import COMMITS_DIR, TMP_DIR, Storage, as_storage, is_local

__all__ = ["COMMITS_DIR", "TMP_DIR", "Storage", "as_storage", "is_local"]
