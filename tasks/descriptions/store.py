"""Descriptions as Parquet under the storage root, named by a content hash.

Layout (relative to the storage root)::

    descriptions/name=<name>/descriptions=<hash16>.parquet   the set (rows below)
    descriptions/name=<name>/latest.json                     {"content_hash", "path"} of the last set written
    descriptions/name=<name>/_generation/settings=<fp>/...   generator progress (see generate.py)
    _commits/descriptions/name=<name>/descriptions=<hash16>.json   done-marker = manifest

Rows: ``class_index`` (int32, label), ``class_name``, ``index`` (int32, position
within the class, 0..count-1), ``text``, ``source``. One row per (label,
description), so labels that share a name (ImageNet's two "missile") each have
their own rows and a reader never needs the matching rules. The Parquet schema
metadata (key ``abs.descriptions``) holds the class list in label order, ``m``,
the full hash and the validation report, so ``read_descriptions`` rebuilds the
same ``DescriptionSet``.

Why a content hash: the text-embedding cache and the prediction config hash are
keyed by what the text encoder sees. The hash covers the class names in label
order and each label's texts in order, nothing else: the same sentences imported
from a file or generated again share one hash (and one embedding cache); any
change to a sentence, the order, M or the class list gives a new one. ``<hash16>``
in the path is the first 16 hex digits of the sha256.

Why ``latest.json``: a command can say ``--descriptions imagenet-cupl`` and get
the set last written under that name, while every earlier set stays readable by
its hash (runs record the hash, not the name).
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from tasks.store import COMMITS_DIR, Storage, as_storage, commits
from tasks.store.markers import DescriptionSetMarker
from tasks.store.paths import (
    SHORT_HASH,
    description_latest,
    description_set,
    description_set_dir,
    is_valid_name,
)
from tasks.store.tables import DESCRIPTIONS_SCHEMA

from .formats import DescriptionError
from .validate import HASH_VERSION, DescriptionSet

META_KEY = b"abs.descriptions"


def check_name(name: str) -> str:
    """A description set name is one safe path segment (it becomes ``name=<name>``)."""
    if not is_valid_name(name):
        raise DescriptionError(
            f"description set name {name!r} must start with a letter or digit and use only letters, digits, '.', '_', '-'"
        )
    return name


def content_hash(ds: DescriptionSet) -> str:
    """sha256 hex of ``canonical_bytes`` (class names in label order and their texts)."""
    return ds.content_hash


@dataclass(frozen=True)
class DescriptionManifest:
    """What a write produced: small, JSON-able, what a Prefect task returns."""

    name: str
    path: str
    url: str
    content_hash: str
    n_classes: int
    n_texts: int
    m: int
    source: str
    report: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_table(ds: DescriptionSet) -> pa.Table:
    """One row per (label, description), with the set's report in the schema metadata."""
    ci, cn, ix, tx = [], [], [], []
    for i, (name, texts) in enumerate(zip(ds.classnames, ds.texts)):
        for j, t in enumerate(texts):
            ci.append(i)
            cn.append(name)
            ix.append(j)
            tx.append(t)
    meta = {
        "hash_version": HASH_VERSION,
        "content_hash": ds.content_hash,
        "classnames": list(ds.classnames),
        "m": ds.m,
        "source": ds.source,
        "keys": list(ds.keys),
        "dropped_empty": ds.dropped_empty,
        "truncated": ds.truncated,
        "short": ds.short,
        "repeated": ds.repeated,
        "duplicates": {k: list(v) for k, v in ds.duplicates.items()},
        "unused_keys": list(ds.unused_keys),
        "notes": list(ds.notes),
        "provenance": ds.provenance,
    }
    arrays = [
        pa.array(ci, pa.int32()),
        pa.array(cn, pa.string()),
        pa.array(ix, pa.int32()),
        pa.array(tx, pa.string()),
        pa.array([ds.source] * len(tx), pa.string()),
    ]
    schema = DESCRIPTIONS_SCHEMA.with_metadata(
        {META_KEY: json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str).encode()}
    )
    return pa.Table.from_arrays(arrays, schema=schema)


def from_table(table: pa.Table) -> DescriptionSet:
    """Rebuild the ``DescriptionSet`` from a table written by ``to_table``; checks the hash."""
    raw_meta = (table.schema.metadata or {}).get(META_KEY)
    if raw_meta is None:
        raise DescriptionError("not a description table: schema metadata 'abs.descriptions' is missing")
    meta = json.loads(raw_meta)
    classnames = tuple(meta["classnames"])
    per: list[list[tuple[int, str]]] = [[] for _ in classnames]
    cols = table.select(["class_index", "index", "text"]).to_pydict()
    for c, j, t in zip(cols["class_index"], cols["index"], cols["text"]):
        per[c].append((j, t))
    texts = tuple(tuple(t for _, t in sorted(rows)) for rows in per)

    def ints(d: dict[str, int]) -> dict[int, int]:
        return {int(k): int(v) for k, v in d.items()}

    ds = DescriptionSet(
        classnames=classnames,
        texts=texts,
        m=int(meta["m"]),
        source=meta.get("source", ""),
        keys=tuple(meta.get("keys", ())),
        dropped_empty=ints(meta.get("dropped_empty", {})),
        truncated=ints(meta.get("truncated", {})),
        short=ints(meta.get("short", {})),
        repeated=ints(meta.get("repeated", {})),
        duplicates={k: tuple(v) for k, v in meta.get("duplicates", {}).items()},
        unused_keys=tuple(meta.get("unused_keys", ())),
        notes=tuple(meta.get("notes", ())),
        provenance=dict(meta.get("provenance", {})),
    )
    if ds.content_hash != meta["content_hash"]:
        raise DescriptionError(
            f"description table content does not match its recorded hash {meta['content_hash'][:16]} "
            f"(recomputed {ds.content_hash[:16]}): the file is damaged or was edited; write it again"
        )
    return ds


def write_descriptions(ds: DescriptionSet, root: str | Storage, name: str) -> DescriptionManifest:
    """Write ``ds`` atomically as set ``name``; a set already committed is not rewritten.

    Order: Parquet file (tmp + move), then the done-marker, then ``latest.json``,
    so a reader that finds the marker always finds the whole file.
    """
    storage = as_storage(root)
    digest = ds.content_hash
    rel = description_set(check_name(name), digest)
    existing = commits.committed(storage, rel)
    if existing is not None:
        manifest = DescriptionManifest(**{k: existing[k] for k in DescriptionManifest.__dataclass_fields__})
    else:
        manifest = DescriptionManifest(
            name=name,
            path=rel,
            url=storage.url(rel),
            content_hash=digest,
            n_classes=ds.n_classes,
            n_texts=ds.n_texts,
            m=ds.m,
            source=ds.source,
            report=ds.report(),
            provenance=ds.provenance,
        )
        commits.commit_parquet(
            storage, rel, to_table(ds), DescriptionSetMarker(**manifest.to_dict(), committed_at=time.time())
        )
    storage.write_json(description_latest(check_name(name)), {"content_hash": digest, "path": rel})
    return manifest


def list_descriptions(root: str | Storage, name: str) -> list[str]:
    """Content hashes (full) of the committed sets under ``name``."""
    storage = as_storage(root)
    out = []
    for p in storage.glob(posixpath.join(COMMITS_DIR, description_set_dir(check_name(name)), "descriptions=*.json")):
        rel = posixpath.relpath(p, storage.root_path)
        out.append(storage.read_json(rel)["content_hash"])
    return sorted(out)


def read_descriptions(root: str | Storage, name: str, content_hash: str | None = None) -> DescriptionSet:
    """Read set ``name`` (the latest written, or the one whose hash starts with ``content_hash``)."""
    storage = as_storage(root)
    if content_hash is None:
        latest = description_latest(check_name(name))
        if not storage.exists(latest):
            raise DescriptionError(
                f"no descriptions named {name!r} under {storage.root}; import or generate them first"
            )
        content_hash = storage.read_json(latest)["content_hash"]
    assert content_hash is not None
    if len(content_hash) < SHORT_HASH:
        raise DescriptionError(f"give at least {SHORT_HASH} hex digits of the content hash, got {content_hash!r}")
    rel = description_set(check_name(name), content_hash)
    if commits.committed(storage, rel) is None:
        raise DescriptionError(
            f"descriptions {name!r} with hash {content_hash[:SHORT_HASH]} are not committed under {storage.root}"
        )
    ds = from_table(storage.read_parquet(rel))
    if not ds.content_hash.startswith(content_hash):
        raise DescriptionError(f"{rel} holds hash {ds.content_hash[:16]}, not {content_hash[:16]}")
    return ds


__all__ = [
    "DescriptionManifest",
    "content_hash",
    "from_table",
    "list_descriptions",
    "read_descriptions",
    "to_table",
    "write_descriptions",
]
