"""The descriptions step of an evaluation: import a file against the dataset's classes, or check the stored set.

Why a step of its own: the text cache and the config hash are keyed by the
description set's content hash, so the set must be stored (and checked against
the sharded dataset's class list) before anything is embedded.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks.defaults import N_DESCRIPTIONS
from tasks.descriptions import (
    import_descriptions,
    read_descriptions,
    write_descriptions,
)
from tasks.run.retries import TASK_OPTIONS
from tasks.store.datasets import read_dataset_info


def store_descriptions(
    root: str,
    dataset: str,
    name: str,
    path: str | None,
    fmt: str = "auto",
    dataset_key: str | None = None,
    m: int = N_DESCRIPTIONS,
) -> dict[str, Any]:
    """Import ``path`` against the dataset's class list as set ``name``, or check the stored set."""
    info = read_dataset_info(root, dataset)
    if path:
        ds = import_descriptions(path, list(info.text_classnames), format=fmt, dataset_key=dataset_key, m=m)
        man = write_descriptions(ds, root, name)
        return {"name": name, "content_hash": man.content_hash, "summary": ds.summary()}
    ds = read_descriptions(root, name)
    return {"name": name, "content_hash": ds.content_hash, "summary": ds.summary()}


descriptions_task = task(name="descriptions", **TASK_OPTIONS)(store_descriptions)
