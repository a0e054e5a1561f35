"""Importers for the description files people publish, by format name.

Why a registry: every paper ships its class descriptions in a slightly different
JSON shape, and the rest of the pipeline should not care which. An importer turns
one parsed JSON document into the same thing, a ``RawDescriptions`` (file key ->
list of sentences, in file order), and ``validate.validate_descriptions`` matches
those keys against a dataset's class list. New shapes are one decorated function.

Formats (names are what ``--format`` accepts):

``cupl``        ``{"class": ["sentence", ...], ...}`` (CuPL, WCA, ABS ``cupl.json``).
``nested``      the same one level down under a dataset key,
                ``{"imagenet1k": {"class": [...]}}`` (CLIP_benchmark ``cupl_prompts.json``).
``attributes``  ``{"class": ["attribute", ...]}`` (Menon & Vondrick ``clip-d.json``);
                each attribute becomes a sentence "{class}, which ... {attribute}",
                see ``attribute_sentence`` for the rule. Also accepts the nested shape.
``templates``   ``["a photo of a {c}.", ...]`` (CLIP prompt ensembles, ``clip-e.json``; ``{c}``
                as CLIP_benchmark writes it or ``{}`` as CLIP does), or a ``.txt`` file with one
                template per line; one sentence per class per template, so it needs the
                class list. (As descriptions the first M are kept, like any description;
                ``clip-e`` itself takes template files with ``--templates`` and uses them all.)
``auto``        picks one of the above from the JSON shape, see ``detect_format``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from tasks.datasets.listing import readable_name
from tasks.datasets.template_sets import PLACEHOLDERS, TemplateError, fill, parse_templates


class DescriptionError(ValueError):
    """A description file or set that cannot be used as asked; the message says what to do."""


@dataclass(frozen=True)
class RawDescriptions:
    """What an importer read, before matching against a class list.

    ``entries`` keeps the file's keys and sentence order untouched (sentences are
    only stripped of surrounding whitespace; empties are kept so validation can
    count them). ``source`` says where it came from, for the ``source`` column.
    """

    entries: dict[str, list[str]]
    format: str
    source: str = ""
    dataset_key: str | None = None
    notes: tuple[str, ...] = ()
    file_sha256: str | None = None  # of the file's bytes, when read from a file


@dataclass(frozen=True)
class ImportOptions:
    """What an importer may need beyond the JSON document.

    ``classnames`` is required by ``templates`` only. ``dataset_key`` picks the
    inner mapping of a nested file that holds several datasets.
    ``attribute_style`` is ``"natural"`` (default) or ``"menon"`` (the original
    Menon & Vondrick prefix rule, to reproduce published ``clip-d`` numbers).
    """

    classnames: Sequence[str] | None = None
    dataset_key: str | None = None
    attribute_style: str = "natural"
    source: str = ""


Importer = Callable[[Any, ImportOptions], RawDescriptions]
FORMATS: dict[str, Importer] = {}


def register_format(name: str) -> Callable[[Importer], Importer]:
    """Register ``fn`` as the importer for format ``name`` (later names win)."""

    def deco(fn: Importer) -> Importer:
        FORMATS[name] = fn
        return fn

    return deco


#: Class name as it should read in a sentence: underscores become spaces. Why: some class
#: lists are file-system names (Food-101's ``apple_pie``) while every published description
#: file writes ``apple pie``; CLIP should see the latter, as the reference code's ``wordify`` does.
readable = readable_name


# ---------------------------------------------------------------- shape checks
def _is_str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(s, str) for s in x)


def _is_class_map(x: Any) -> bool:
    return isinstance(x, dict) and len(x) > 0 and all(_is_str_list(v) for v in x.values())


def _is_nested_map(x: Any) -> bool:
    return isinstance(x, dict) and len(x) > 0 and all(_is_class_map(v) for v in x.values())


def _shape(x: Any) -> str:
    if isinstance(x, dict):
        v = next(iter(x.values()), None)
        return f"an object of {len(x)} keys whose first value is {type(v).__name__}"
    if isinstance(x, list):
        return f"a list of {len(x)} items, first a {type(x[0]).__name__}" if x else "an empty list"
    return f"a {type(x).__name__}"


def _clean_map(obj: Any, what: str) -> dict[str, list[str]]:
    if not _is_class_map(obj):
        raise DescriptionError(
            f"{what}: expected a JSON object mapping each class name to a list of strings, got {_shape(obj)}"
        )
    return {str(k): [s.strip() for s in v] for k, v in obj.items()}


def _unwrap(data: Any, dataset_key: str | None, what: str) -> tuple[Any, str | None]:
    """Return the class mapping of a nested file and the dataset key used (or ``data`` as is)."""
    if not _is_nested_map(data):
        if dataset_key is not None:
            raise DescriptionError(f"{what}: dataset key {dataset_key!r} given but the file is not nested")
        return data, None
    keys = list(data)
    if dataset_key is None:
        if len(keys) != 1:
            raise DescriptionError(f"{what}: the file holds several datasets {keys}; pick one with dataset_key")
        dataset_key = keys[0]
    if dataset_key not in data:
        raise DescriptionError(f"{what}: dataset key {dataset_key!r} not in the file; it has {keys}")
    return data[dataset_key], dataset_key


# ---------------------------------------------------------------- cupl / nested
@register_format("cupl")
def import_cupl(data: Any, opts: ImportOptions) -> RawDescriptions:
    """``{"class": [sentences]}``: sentences used as written (the ABS/CuPL convention).

    With ``dataset_key`` it reads that dataset of a nested file (same as ``nested``).
    """
    if opts.dataset_key is not None:
        inner, key = _unwrap(data, opts.dataset_key, "cupl")
        return RawDescriptions(_clean_map(inner, "cupl"), "cupl", opts.source, dataset_key=key)
    return RawDescriptions(_clean_map(data, "cupl"), "cupl", opts.source)


@register_format("nested")
def import_nested(data: Any, opts: ImportOptions) -> RawDescriptions:
    """``{"dataset": {"class": [sentences]}}``; a single dataset key is taken without asking."""
    if not _is_nested_map(data):
        raise DescriptionError(f"nested: expected {{dataset: {{class: [sentences]}}}}, got {_shape(data)}")
    inner, key = _unwrap(data, opts.dataset_key, "nested")
    return RawDescriptions(_clean_map(inner, "nested"), "nested", opts.source, dataset_key=key)


# ---------------------------------------------------------------- attributes
# First words after which the attribute already reads as a verb phrase:
# "has a long tail" -> "X, which has a long tail".
_VERB_WORDS = frozenset(
    "has have had is are was were may might can could will would should must does do "
    "tends looks resembles contains consists features lives grows appears comes come live grow look".split()
)
# Adverbs: "often has ..." keeps its verb ("which often has"), "often brightly
# coloured" / "usually made of" need one ("which is usually made of").
_ADVERBS = frozenset(
    "often usually typically sometimes generally commonly frequently always mostly "
    "normally also primarily mainly occasionally rarely".split()
)
# Past participles that describe what the thing is: "used for", "made of", "served cold".
_PARTICIPLES = frozenset(
    "used made served found known worn seen eaten sold held kept built grown born "
    "cooked fried baked grilled filled topped covered stuffed garnished shaped located "
    "composed designed mounted attached arranged painted surrounded decorated".split()
)
# Words that open a clause with its own subject: "the walls are painted" ->
# "X, where the walls are painted" (only when the clause has a finite verb).
_CLAUSE_OPENERS = frozenset("the there their this these those".split())
_FINITE = frozenset("is are was were has have may can might will would could".split())
_PREPOSITIONS = frozenset("in on at inside near under over from into onto".split())


def _words(text: str) -> list[str]:
    return [w.strip(",;:.!?\"'()").lower() for w in text.split()]


def attribute_sentence(classname: str, attribute: str, style: str = "natural") -> str:
    """One Menon & Vondrick style sentence for ``classname`` and ``attribute``.

    The real ``clip-d.json`` attributes are lowercase fragments without a final
    period, of several kinds: noun phrases ("a seabird", "long, webbed feet"),
    verb phrases ("has a bell-shaped end", "may have a fence"), adverb phrases
    ("usually made of leather", "often has a window"), participles ("used for
    carrying food", "served cold") and small clauses ("the walls are painted",
    "there may be a sign", "it is smooth and creamy,").

    ``style="natural"`` (default) builds "{class}, which ..." so each kind reads as
    English, by the first word (case-insensitive, whole words, not prefixes):

    - "which ..."                              -> "{c}, {attribute}"
    - "it ..."                                 -> "{c}, which {rest}"  ("it is smooth" -> "which is smooth")
    - has/is/are/may/can/... (a verb)          -> "{c}, which {attribute}"
    - often/usually/typically/... (an adverb)  -> "{c}, which {attribute}" if the next word
      is a verb (has/is/may... or a third-person "-s" verb), else "{c}, which is {attribute}"
    - a/an, a participle (used/made/served/...), or a preposition (in/on/...)
                                               -> "{c}, which is {attribute}"
    - "with ..."                               -> "{c}, {attribute}"
    - the/there/this/... opening a clause with a finite verb -> "{c}, where {attribute}"
    - anything else (noun phrases: "long, webbed feet", "no legs", "one or more walls")
                                               -> "{c}, which has {attribute}"

    Trailing ``, ; .`` are removed; no period is added (as in the reference code).

    ``style="menon"`` reproduces the original character-prefix rule of Menon &
    Vondrick's code, which WCA and ABS reuse for their ``clip-d`` baseline:
    starts with "a" -> "which is", with has/often/typically/may/can -> "which",
    with "used" -> "which is", else "which has" (so "apple-shaped" becomes "which is
    apple-shaped" and "usually made of" becomes "which has usually made of").
    Use it to reproduce published ``clip-d`` numbers.
    """
    c = readable(classname)
    a = attribute.strip()
    if style == "menon":
        if a.startswith("a"):
            return f"{c}, which is {a}"
        if a.startswith(("has", "often", "typically", "may", "can")):
            return f"{c}, which {a}"
        if a.startswith("used"):
            return f"{c}, which is {a}"
        return f"{c}, which has {a}"
    if style != "natural":
        raise DescriptionError(f"attribute style must be 'natural' or 'menon', not {style!r}")
    a = a.rstrip(",;. ")
    if not a:
        return ""
    words = _words(a)
    first = words[0]
    second = words[1] if len(words) > 1 else ""
    if first == "which":
        return f"{c}, {a}"
    if first == "it" and len(words) > 1:
        return f"{c}, which {a.split(None, 1)[1]}"
    if first in _VERB_WORDS:
        return f"{c}, which {a}"
    if first in _ADVERBS:
        verbish = second in _VERB_WORDS or (
            second.endswith("s") and not second.endswith(("ss", "ous", "ys")) and second not in _PARTICIPLES
        )
        return f"{c}, which {a}" if verbish else f"{c}, which is {a}"
    if first in ("a", "an") or first in _PARTICIPLES or first in _PREPOSITIONS:
        return f"{c}, which is {a}"
    if first == "with":
        return f"{c}, {a}"
    if first in _CLAUSE_OPENERS and _FINITE.intersection(words[1:]):
        return f"{c}, where {a}"
    return f"{c}, which has {a}"


@register_format("attributes")
def import_attributes(data: Any, opts: ImportOptions) -> RawDescriptions:
    """``{"class": [attributes]}`` (or nested one level) -> sentences via ``attribute_sentence``."""
    inner, key = _unwrap(data, opts.dataset_key, "attributes")
    raw = _clean_map(inner, "attributes")
    entries = {k: [attribute_sentence(k, a, opts.attribute_style) if a else "" for a in v] for k, v in raw.items()}
    note = f"attributes turned into sentences with the {opts.attribute_style!r} rule"
    return RawDescriptions(entries, "attributes", opts.source, dataset_key=key, notes=(note,))


# ---------------------------------------------------------------- templates
@register_format("templates")
def import_templates(data: Any, opts: ImportOptions) -> RawDescriptions:
    """``["a photo of a {c}.", ...]`` -> for each class, every template with ``{c}`` / ``{}`` filled.

    The class name is filled in with ``readable`` (underscores as spaces); the
    keys are the class list's own names, so validation matches them exactly.
    Only ``{c}`` and ``{}`` are replaced (``tasks.datasets.template_sets.fill``, not
    ``format``), so other braces in a template stay as written.
    """
    if not _is_str_list(data) or not data:
        raise DescriptionError(
            f"templates: expected a non-empty list of strings with {{c}} or {{}}, got {_shape(data)}"
        )
    try:
        templates = parse_templates(data, "templates")
    except TemplateError as exc:
        raise DescriptionError(str(exc)) from None
    if opts.classnames is None:
        raise DescriptionError("templates: the class list is needed to expand templates (pass classnames)")
    entries: dict[str, list[str]] = {}
    for name in opts.classnames:
        entries.setdefault(name, [fill(t, readable(name)) for t in templates])
    return RawDescriptions(entries, "templates", opts.source, notes=(f"{len(templates)} templates per class",))


# ---------------------------------------------------------------- auto
def _style_of(class_map: Mapping[str, list[str]]) -> str | None:
    """``cupl`` for sentences, ``attributes`` for fragments, ``None`` when unclear.

    Both are ``{class: [strings]}``, so the shape alone cannot tell them apart.
    In every published file the two differ sharply: CuPL/LLM sentences end with a
    period (100% in the shared examples), Menon & Vondrick attributes are
    lowercase fragments without one (0%). Anything in between is refused.
    """
    texts = [s.strip() for v in class_map.values() for s in v if s.strip()]
    if not texts:
        return None
    dot = sum(s.endswith(".") for s in texts) / len(texts)
    upper = sum(s[0].isupper() for s in texts) / len(texts)
    if dot >= 0.5:
        return "cupl"
    if dot <= 0.1 and upper <= 0.1:
        return "attributes"
    return None


def detect_format(data: Any) -> str:
    """Pick the format name from the JSON shape (and, for class maps, the text style).

    list of strings with ``{c}`` or ``{}`` -> ``templates``; ``{dataset: {class: [...]}}`` ->
    ``nested`` (or ``attributes`` if the inner lists are attribute fragments);
    ``{class: [...]}`` -> ``cupl`` or ``attributes`` by ``_style_of``. Raises
    ``DescriptionError`` naming the explicit formats when it cannot tell.
    """
    if _is_str_list(data):
        if data and all(any(p in t for p in PLACEHOLDERS) for t in data):
            return "templates"
        raise DescriptionError(
            "auto: a list of strings without '{}' (or '{c}') placeholders is not a known description format "
            "(a class list? descriptions need a {class: [sentences]} object, templates a placeholder each)"
        )
    if _is_nested_map(data):
        style = _style_of(next(iter(data.values())))
        return "attributes" if style == "attributes" else "nested"
    if _is_class_map(data):
        style = _style_of(data)
        if style is None:
            raise DescriptionError(
                "auto: cannot tell whether the lists hold sentences (format='cupl') or attributes "
                "(format='attributes'); pass the format explicitly"
            )
        return style
    raise DescriptionError(
        f"auto: unrecognised description file shape: {_shape(data)}; known formats: {sorted(FORMATS)}"
    )


def parse_descriptions(
    data: Any,
    *,
    format: str = "auto",
    classnames: Sequence[str] | None = None,
    dataset_key: str | None = None,
    attribute_style: str = "natural",
    source: str = "",
) -> RawDescriptions:
    """Turn an already-parsed JSON document into ``RawDescriptions`` with the named importer."""
    name = detect_format(data) if format == "auto" else format
    if name not in FORMATS:
        raise DescriptionError(f"unknown description format {format!r}; known: {['auto', *sorted(FORMATS)]}")
    opts = ImportOptions(classnames=classnames, dataset_key=dataset_key, attribute_style=attribute_style, source=source)
    raw = FORMATS[name](data, opts)
    if format == "auto":
        raw = RawDescriptions(
            raw.entries, raw.format, raw.source, raw.dataset_key, (f"format auto-detected as {name!r}", *raw.notes)
        )
    return raw


def load_description_file(
    path: str,
    *,
    format: str = "auto",
    classnames: Sequence[str] | None = None,
    dataset_key: str | None = None,
    attribute_style: str = "natural",
    storage_options: Mapping[str, Any] | None = None,
) -> RawDescriptions:
    """Read a description file from any fsspec URL and import it: JSON, or a ``.txt`` of templates.

    A ``.txt`` file holds one template per line (blank lines skipped), CLIP_benchmark's
    ``zeroshot_classification_templates.txt`` shape; it is read as the list of its lines.
    ``source`` becomes ``"<format>:<file name>"`` (plus ``#<dataset key>``), short
    and free of local directory names so stored tables do not depend on where
    the file happened to sit.
    """
    try:
        with fsspec.open(path, "rb", **dict(storage_options or {})) as f:
            blob = f.read()
    except FileNotFoundError as e:
        raise DescriptionError(f"description file not found: {path}") from e
    fname = re.split(r"[\\/]", str(path).rstrip("/"))[-1]
    try:
        if fname.lower().endswith(".txt"):
            data: Any = [ln.strip() for ln in blob.decode("utf-8-sig").splitlines() if ln.strip()]
            if not data:
                raise DescriptionError(
                    f"description file {path} is empty; a .txt file holds one template per line "
                    "with {c} or {} where the class name goes"
                )
        else:
            data = json.loads(blob)
    except UnicodeDecodeError as e:
        raise DescriptionError(f"description file {path} is not UTF-8 text: {e}") from e
    except json.JSONDecodeError as e:
        raise DescriptionError(
            f"description file {path} is not valid JSON: {e} (a template list may also be a "
            ".txt file, one template per line)"
        ) from e
    raw = parse_descriptions(
        data, format=format, classnames=classnames, dataset_key=dataset_key, attribute_style=attribute_style
    )
    src = f"{raw.format}:{fname}" + (f"#{raw.dataset_key}" if raw.dataset_key else "")
    return RawDescriptions(raw.entries, raw.format, src, raw.dataset_key, raw.notes, hashlib.sha256(blob).hexdigest())


__all__ = [
    "FORMATS",
    "DescriptionError",
    "ImportOptions",
    "RawDescriptions",
    "attribute_sentence",
    "detect_format",
    "load_description_file",
    "parse_descriptions",
    "readable",
    "register_format",
]
