"""CLIP text embeddings of a description set (and the baselines' prompts), cached.

Why cached: ImageNet has 1000 x 50 descriptions plus 80 x 1000 template prompts;
encoding them costs minutes on a CPU and is the same for every run, rerun and
method variant with the same CLIP weights and descriptions. The cache key is the
CLIP model, its weights digest, the descriptions' content hash, the class list,
M, the prompt and the sha256 of the ``clip-e`` templates (``TemplateSet.sha256``: the
texts, not where they came from), so two template sets never share a bank.

Layout: ``cache/text/model=<clip>/key=<hash>/text.parquet`` with one row per
embedding (``kind`` = description / prompt / ensemble, ``class_index``,
``index``, ``embedding``), plus its done-marker (paths: ``tasks.store.paths.text_cache``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from abs_model import CLIPBackbone, TextBank
from tasks.datasets.template_sets import AUTO, FALLBACK, TemplateSet, builtin_template_set
from tasks.run.evalspec import short_hash
from tasks.store import Storage, commits
from tasks.store.markers import TextCacheMarker
from tasks.store.paths import text_cache
from tasks.store.tables import TEXT_SCHEMA


@dataclass(frozen=True)
class TextCacheEntry:
    """Where a text bank lives and what it was built from (what a task returns)."""

    path: str
    key: str
    computed: bool
    n_classes: int
    m: int
    n_embeddings: int
    templates: dict[str, Any] | None = None  # the clip-e template set's record (name, sha256, count)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def template_set(templates: TemplateSet | str) -> TemplateSet:
    """``templates`` itself, or the built-in set of that name (``openai-imagenet``, ``dtd``, ``none`` ...).

    ``auto`` depends on the dataset: resolve it first (``EvalSpec.template_set``)."""
    if isinstance(templates, TemplateSet):
        return templates
    if templates == AUTO:
        raise ValueError(
            "template set 'auto' depends on the dataset: resolve it with EvalSpec.template_set(info) "
            "or tasks.datasets.template_sets.resolve_template_set first"
        )
    return builtin_template_set(templates)  # TemplateError (a ValueError) for an unknown name


def text_key(
    clip: CLIPBackbone, descriptions_hash: str, classnames: list[str], m: int, prompt: str, templates: TemplateSet | str
) -> str:
    return short_hash(
        {
            "clip": clip.spec.name,
            "weights": clip.weights_digest,
            "descriptions": descriptions_hash,
            "classes": classnames,
            "m": m,
            "prompt": prompt,
            "templates": template_set(templates).sha256,
        }
    )


def _rows(kind: str, feats: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, list]:
    out: dict[str, list] = {"kind": [], "class_index": [], "index": [], "embedding": []}
    if feats.dim() == 2:
        feats = feats.unsqueeze(1)
    arr = feats.float().numpy()
    for c in range(arr.shape[0]):
        for i in range(arr.shape[1]):
            if mask is not None and not bool(mask[c, i]):
                continue
            out["kind"].append(kind)
            out["class_index"].append(c)
            out["index"].append(i)
            out["embedding"].append(arr[c, i])
    return out


def ensure_text_bank(
    storage: Storage,
    clip: CLIPBackbone,
    classnames: list[str],
    texts: list[list[str]] | tuple,
    descriptions_hash: str,
    *,
    m: int,
    prompt: str,
    templates: TemplateSet | str = FALLBACK,
    subset: list[int] | None = None,
    progress: bool = True,
) -> tuple[TextBank, TextCacheEntry]:
    """Load the cached text bank, or encode and commit it first.

    ``templates``: the ``clip-e`` set (a :class:`TemplateSet`, or a built-in set's name), every
    template of it used; ``none`` (an empty set) leaves ``clip-e`` out."""
    tset = template_set(templates)
    key = text_key(clip, descriptions_hash, list(classnames), m, prompt, tset)
    rel = text_cache(clip.spec.name, key)
    computed = False
    if commits.committed(storage, rel) is None:
        bank = TextBank.build(
            clip,
            classnames,
            [list(t) for t in texts],
            m=m,
            prompt=prompt or None,
            templates=list(tset.templates),
            progress=progress,
        )
        cols: dict[str, list] = {"kind": [], "class_index": [], "index": [], "embedding": []}
        parts = [_rows("description", bank.descriptions, bank.mask)]
        if bank.prompt is not None:
            parts.append(_rows("prompt", bank.prompt))
        if bank.ensemble is not None:
            parts.append(_rows("ensemble", bank.ensemble))
        for p in parts:
            for k in cols:
                cols[k].extend(p[k])
        commits.commit_parquet(
            storage,
            rel,
            pa.table(cols, schema=TEXT_SCHEMA),
            TextCacheMarker(
                path=rel,
                clip=clip.spec.name,
                weights=clip.weights_digest,
                descriptions_hash=descriptions_hash,
                m=m,
                prompt=prompt,
                templates=json.dumps(tset.record(), sort_keys=True),
                n_classes=len(classnames),
            ),
        )
        computed = True
    bank = load_text_bank(storage, rel, list(classnames), m, subset)
    n = (
        int(bank.mask.sum())
        + (len(classnames) if bank.prompt is not None else 0)
        + (len(classnames) if bank.ensemble is not None else 0)
    )
    return bank, TextCacheEntry(rel, key, computed, len(classnames), m, n, tset.record())


def load_text_bank(storage: Storage, rel: str, classnames: list[str], m: int, subset: list[int] | None) -> TextBank:
    """Rebuild a ``TextBank`` from its cached Parquet."""
    t = storage.read_parquet(rel)
    kind = np.asarray(t.column("kind").to_pylist())
    ci = t.column("class_index").to_numpy()
    ix = t.column("index").to_numpy()
    emb = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    c, d = len(classnames), emb.shape[1]
    sel = kind == "description"
    width = int(ix[sel].max()) + 1 if sel.any() else 1
    desc = torch.zeros(c, width, d)
    mask = torch.zeros(c, width, dtype=torch.bool)
    desc[ci[sel], ix[sel]] = torch.from_numpy(emb[sel])
    mask[ci[sel], ix[sel]] = True

    def per_class(k: str) -> torch.Tensor | None:
        s = kind == k
        if not s.any():
            return None
        out = torch.zeros(c, d)
        out[ci[s]] = torch.from_numpy(emb[s])
        return out

    return TextBank(list(classnames), desc, mask, per_class("prompt"), per_class("ensemble"), subset)
