"""Match imported descriptions against a dataset's class list: a ``DescriptionSet``.

Why a separate step: the text encoder and the soft matching index descriptions by
label, so every label needs its own list, in label order, and a file written for
"the same" dataset by someone else must be checked before hours of inference are
spent on it. Problems that make a run meaningless (a class with no description,
ambiguous keys) raise ``DescriptionError`` with a message that says what to fix;
everything else (empties dropped, lists cut to M, classes with fewer than M,
class names the file can only answer once) is counted and reported.

Name matching, in order: the exact key; then the key equal after ``normalize_name``
(case, ``_``/``-`` and runs of spaces ignored), so ``apple_pie`` finds
``apple pie`` and ``abyssinian`` finds ``Abyssinian``. Nothing fuzzier is
matched silently: for the rest the error lists the nearest keys (``difflib``).

Duplicates: a class list may name two labels the same (ImageNet's
``open_clip`` / CuPL list has "missile" at 657 and 744 and "sunglasses" at 836
and 837; Places365 has 19 such names). A file keyed by name can only give them
one list, so each of those labels gets that same list, and ``duplicates`` /
``notes`` say which labels share it: their text embeddings are identical, so the
model cannot separate them and their scores tie.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.defaults import N_DESCRIPTIONS

from .formats import DescriptionError, RawDescriptions

DEFAULT_M = N_DESCRIPTIONS  # M of the paper (tasks.defaults)


class MissingClassesError(DescriptionError):
    """Some classes of the class list have no entry in the descriptions.

    ``missing`` maps each missing label index to ``(class name, nearest keys)``.
    """

    def __init__(self, message: str, missing: dict[int, tuple[str, list[str]]]):
        super().__init__(message)
        self.missing = missing


def normalize_name(name: str) -> str:
    """Key for lenient matching: casefolded, ``_`` and ``-`` as spaces, spaces collapsed."""
    return " ".join(name.replace("_", " ").replace("-", " ").casefold().split())


#: Version of the canonical form below; bump it only if that form changes.
HASH_VERSION = 1


def canonical_bytes(classnames: Sequence[str], texts: Any) -> bytes:
    """The bytes a description set's content hash is taken over: compact UTF-8 JSON of
    ``[[name, [texts]], ...]`` in label order. Why only this: the same sentences imported
    from a file or generated again share one hash (and one embedding cache); any change
    to a sentence, the order, M or the class list gives a new one."""
    doc = {"v": HASH_VERSION, "classes": [[str(n), [str(t) for t in ts]] for n, ts in zip(classnames, texts)]}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class DescriptionSet:
    """Descriptions for one class list, in label order, ready for the text encoder.

    ``texts[i]`` are the (at most ``m``) descriptions of label ``i`` =
    ``classnames[i]``, in source order, non-empty. The remaining fields are the
    report of how the set was made; they are stored with it, but only
    ``classnames`` and ``texts`` enter ``content_hash`` (what changes numbers).
    """

    classnames: tuple[str, ...]
    texts: tuple[tuple[str, ...], ...]
    m: int = DEFAULT_M
    source: str = ""
    keys: tuple[str, ...] = ()  # the description key matched by each label
    dropped_empty: dict[int, int] = field(default_factory=dict)  # label -> empties dropped
    truncated: dict[int, int] = field(default_factory=dict)  # label -> descriptions beyond m dropped
    short: dict[int, int] = field(default_factory=dict)  # label -> count, for labels with < m
    repeated: dict[int, int] = field(default_factory=dict)  # label -> repeated texts kept (as in source)
    duplicates: dict[str, tuple[int, ...]] = field(default_factory=dict)  # key -> labels sharing it
    unused_keys: tuple[str, ...] = ()  # keys no label asked for
    notes: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)  # import options or generation settings

    def __post_init__(self) -> None:
        if len(self.classnames) != len(self.texts):
            raise DescriptionError(f"{len(self.classnames)} class names but {len(self.texts)} description lists")

    # -------------------------------------------------------------- views
    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    @property
    def counts(self) -> tuple[int, ...]:
        """Number of descriptions per label (the text side masks the rest up to ``m``)."""
        return tuple(len(t) for t in self.texts)

    @property
    def n_texts(self) -> int:
        return sum(self.counts)

    @property
    def n_dropped_empty(self) -> int:
        return sum(self.dropped_empty.values())

    @property
    def content_hash(self) -> str:
        """sha256 (hex) of the canonical content (:func:`canonical_bytes`)."""
        return hashlib.sha256(canonical_bytes(self.classnames, self.texts)).hexdigest()

    def report(self) -> dict[str, Any]:
        """A small JSON-able summary (for manifests, run records and the CLI)."""
        return {
            "source": self.source,
            "n_classes": self.n_classes,
            "m": self.m,
            "n_texts": self.n_texts,
            "min_count": min(self.counts) if self.texts else 0,
            "n_dropped_empty": self.n_dropped_empty,
            "n_truncated": sum(self.truncated.values()),
            "n_short_classes": len(self.short),
            # [label, name, count], first 50 (the full map is ``short``)
            "short_classes": [[i, self.classnames[i], n] for i, n in sorted(self.short.items())[:50]],
            "n_repeated_texts": sum(self.repeated.values()),
            "duplicates": {k: list(v) for k, v in self.duplicates.items()},
            "n_unused_keys": len(self.unused_keys),
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """Human-readable report, one finding per line."""
        r = self.report()
        lines = [
            f"{r['n_classes']} classes, {r['n_texts']} descriptions (M={self.m}, fewest {r['min_count']}) from {self.source or '?'}",
        ]
        if r["n_dropped_empty"]:
            lines.append(f"dropped {r['n_dropped_empty']} empty description(s) in {len(self.dropped_empty)} class(es)")
        if r["n_truncated"]:
            lines.append(
                f"kept the first {self.m}: dropped {r['n_truncated']} beyond M in {len(self.truncated)} class(es)"
            )
        if self.short:
            shown = ", ".join(f"{self.classnames[i]!r} ({n})" for i, n in sorted(self.short.items())[:10])
            more = f" and {len(self.short) - 10} more" if len(self.short) > 10 else ""
            lines.append(f"{len(self.short)} class(es) have fewer than {self.m}: {shown}{more}")
        if r["n_repeated_texts"]:
            lines.append(f"{r['n_repeated_texts']} repeated description(s) kept as in the source")
        if self.unused_keys:
            lines.append(
                f"{len(self.unused_keys)} key(s) in the source match no class, e.g. {list(self.unused_keys[:5])}"
            )
        lines.extend(self.notes)
        return "\n".join(lines)


def _nearest(name: str, keys: Sequence[str], n: int = 3) -> list[str]:
    by_norm: dict[str, str] = {}
    for k in keys:
        by_norm.setdefault(normalize_name(k), k)
    hits = difflib.get_close_matches(normalize_name(name), list(by_norm), n=n, cutoff=0.6)
    return [by_norm[h] for h in hits]


def match_keys(
    classnames: Sequence[str], keys: Sequence[str]
) -> tuple[list[str | None], dict[int, tuple[str, list[str]]]]:
    """Key for each class (exact, else unique normalised match) and the missing ones with nearest keys."""
    keyset = set(keys)
    by_norm: dict[str, list[str]] = {}
    for k in keys:
        by_norm.setdefault(normalize_name(k), []).append(k)
    matched: list[str | None] = []
    missing: dict[int, tuple[str, list[str]]] = {}
    for i, name in enumerate(classnames):
        if name in keyset:
            matched.append(name)
            continue
        cands = by_norm.get(normalize_name(name), [])
        if len(cands) == 1:
            matched.append(cands[0])
        elif len(cands) > 1:
            raise DescriptionError(
                f"class {i} {name!r} matches several keys that differ only in case/underscores: {cands}; "
                "rename the keys or the class so exactly one matches"
            )
        else:
            matched.append(None)
            missing[i] = (name, _nearest(name, keys))
    return matched, missing


def _missing_message(
    source: str,
    classnames: Sequence[str],
    keys: Sequence[str],
    missing: dict[int, tuple[str, list[str]]],
    limit: int = 30,
) -> str:
    # A file with exactly one key per class is usually in label order (every
    # published one is), so the key at the same position is the best hint when
    # two class lists spell a class differently ("newt" vs "eft").
    positional = len(keys) == len(classnames)
    lines = [f"descriptions{f' from {source}' if source else ''} lack {len(missing)} of {len(classnames)} classes:"]
    for i, (name, near) in list(missing.items())[:limit]:
        hint = "nearest: " + ", ".join(repr(n) for n in near) if near else "no similar key"
        if positional:
            hint += f"; key at the same position: {keys[i]!r}"
        lines.append(f"  [{i}] {name!r} ({hint})")
    if len(missing) > limit:
        lines.append(f"  ... and {len(missing) - limit} more")
    lines.append("Fix the keys in the description file, or check that the class list is the dataset's.")
    return "\n".join(lines)


def validate_descriptions(
    raw: RawDescriptions | Mapping[str, Sequence[str]],
    classnames: Sequence[str],
    *,
    m: int = DEFAULT_M,
    source: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> DescriptionSet:
    """Check ``raw`` against ``classnames`` (label order) and build the ``DescriptionSet``.

    Raises ``MissingClassesError`` when a class has no entry (listing each with
    its nearest keys), and ``DescriptionError`` when a class is left with no
    non-empty description or a name matches several keys. Texts are stripped;
    empty ones are dropped and counted; the first ``m`` are kept; repeated texts
    are kept (as the published files and the reference code use them) and counted.
    """
    if m < 1:
        raise DescriptionError(f"m must be at least 1, got {m}")
    if not classnames:
        raise DescriptionError("the class list is empty")
    if isinstance(raw, RawDescriptions):
        entries, src, notes = raw.entries, raw.source, list(raw.notes)
    else:
        entries, src, notes = {str(k): list(v) for k, v in raw.items()}, "", []
    src = source if source is not None else src
    keys = list(entries)
    matched, missing = match_keys(classnames, keys)
    if missing:
        raise MissingClassesError(_missing_message(src, classnames, keys, missing), missing)

    texts: list[tuple[str, ...]] = []
    dropped: dict[int, int] = {}
    truncated: dict[int, int] = {}
    short: dict[int, int] = {}
    repeated: dict[int, int] = {}
    empty_classes: list[str] = []
    for i, key in enumerate(matched):
        assert key is not None
        stripped = [t.strip() for t in entries[key]]
        kept = [t for t in stripped if t]
        if len(kept) < len(stripped):
            dropped[i] = len(stripped) - len(kept)
        if len(kept) > m:
            truncated[i] = len(kept) - m
            kept = kept[:m]
        if not kept:
            empty_classes.append(f"[{i}] {classnames[i]!r}")
        elif len(kept) < m:
            short[i] = len(kept)
        if len(set(kept)) < len(kept):
            repeated[i] = len(kept) - len(set(kept))
        texts.append(tuple(kept))
    if empty_classes:
        raise DescriptionError(
            f"{len(empty_classes)} class(es) have no non-empty description: {', '.join(empty_classes[:20])}; "
            "every class needs at least one"
        )

    users: dict[str, list[int]] = {}
    for i, key in enumerate(matched):
        users.setdefault(key, []).append(i)  # type: ignore[arg-type]
    duplicates = {k: tuple(v) for k, v in users.items() if len(v) > 1}
    if duplicates:
        parts = "; ".join(
            f"{k!r} -> labels {', '.join(str(i) for i in v)}"
            + (f" ({', '.join(repr(classnames[i]) for i in v)})" if len({classnames[i] for i in v}) > 1 else "")
            for k, v in duplicates.items()
        )
        notes.append(
            f"{len(duplicates)} description key(s) serve more than one label: {parts}. "
            "Each of those labels gets the same descriptions, so their text embeddings and scores are identical "
            "(the class list repeats the name; the file can hold it only once)."
        )
    unused = tuple(k for k in keys if k not in users)
    return DescriptionSet(
        classnames=tuple(classnames),
        texts=tuple(texts),
        m=m,
        source=src,
        keys=tuple(k for k in matched if k is not None),
        dropped_empty=dropped,
        truncated=truncated,
        short=short,
        repeated=repeated,
        duplicates=duplicates,
        unused_keys=unused,
        notes=tuple(notes),
        provenance=dict(provenance or {}),
    )


def import_descriptions(
    path: str,
    classnames: Sequence[str],
    *,
    format: str = "auto",
    dataset_key: str | None = None,
    m: int = DEFAULT_M,
    attribute_style: str = "natural",
    storage_options: Mapping[str, Any] | None = None,
) -> DescriptionSet:
    """Load a description file (any supported format) and validate it against ``classnames``."""
    from .formats import load_description_file

    raw = load_description_file(
        path,
        format=format,
        classnames=classnames,
        dataset_key=dataset_key,
        attribute_style=attribute_style,
        storage_options=storage_options,
    )
    prov = {
        "kind": "import",
        "format": raw.format,
        "dataset_key": raw.dataset_key,
        "attribute_style": attribute_style if raw.format == "attributes" else None,
        "file_sha256": raw.file_sha256,
    }
    return validate_descriptions(raw, classnames, m=m, provenance=prov)


__all__ = [
    "canonical_bytes",
    "DEFAULT_M",
    "DescriptionError",
    "DescriptionSet",
    "MissingClassesError",
    "import_descriptions",
    "match_keys",
    "normalize_name",
    "validate_descriptions",
]
