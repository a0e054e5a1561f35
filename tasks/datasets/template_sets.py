"""Prompt-template sets of the ``clip-e`` baseline: which set a dataset uses, and template files.

Why here, beside the layouts: the set ``clip-e`` is scored with belongs to the dataset.
CLIP_benchmark, the tool people compare numbers with, uses a WebDataset's own
``zeroshot_classification_templates.txt`` and otherwise the CLIP paper's set for that
dataset; so does ``--templates auto`` (the default):

1. the dataset's own templates (the WebDataset layout keeps them in ``dataset.json``);
2. else the set its layout declares (``Layout.default_templates``, set in the layout's own
   module, e.g. ``tasks/datasets/dtd.py``), a set of ``templates/clip.json``;
3. else ``imagenet1k``, the 80 OpenAI ImageNet templates (CLIP_benchmark's fallback for its
   builtin datasets; for a WebDataset without a templates file CLIP_benchmark 1.6.2 stops with
   "Templates not specified", so there abs-eval's ``clip-e`` is the ImageNet set's number).

``--templates`` also takes a set's name (``openai-imagenet``, ``dtd``, ... or ``none``: no
``clip-e``) or a file (``.txt``: one template per line; ``.json``: a list of strings), any
fsspec URL, read where the text bank is built, like ``--source``.

A template holds ``{c}`` (CLIP_benchmark's form) or ``{}`` (CLIP's) where the class name
goes; it is filled by replacing those two (other text, braces included, stays as written)
and stored in the ``{c}`` form, so the two spellings of one set hash alike. A run records
the set it used (:meth:`TemplateSet.record`: name, sha256 of the templates, count); the
config hash covers that record, so results of different template sets never mix. Every
template of a set is used (``M`` limits descriptions, not templates), as in CLIP_benchmark.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fsspec

from .registry import get_layout, is_layout
from .webdataset import TEMPLATES_FILE

#: Where the class name goes: CLIP_benchmark's ``{c}``, CLIP's ``{}``; stored as the first.
PLACEHOLDER = "{c}"
PLACEHOLDERS = ("{c}", "{}")
#: The selection that picks the dataset's own set, else its layout's, else :data:`FALLBACK`.
AUTO = "auto"
#: The empty set: no ``clip-e`` scores.
NONE = "none"
#: The set of a dataset that has none of its own and whose layout declares none.
FALLBACK = "imagenet1k"
#: File name suffixes read as template files (anything else with a ``/`` is read by its content).
FILE_SUFFIXES = (".txt", ".json")
_DATA = ("templates", "clip.json")
_PLACEHOLDER_RE = re.compile(r"\{c?\}")
_NOT_JSON = object()


class TemplateError(ValueError):
    """A template set that cannot be used; the message names the file or set and what to write."""


def fill(template: str, classname: str) -> str:
    """``template`` with every ``{c}`` and ``{}`` replaced by ``classname`` (no other formatting)."""
    return _PLACEHOLDER_RE.sub(lambda _: classname, template)


@dataclass(frozen=True)
class TemplateSet:
    """The templates ``clip-e`` averages, in order, in the ``{c}`` form, and the name they go by.

    ``name``: a set of ``templates/clip.json`` (``imagenet1k``, ``dtd``, ...), ``none``,
    ``dataset:<file name>`` (the dataset's own) or ``file:<file name>`` (``--templates FILE``):
    file names without their folders, so a record does not depend on where a file sat.
    ``source`` says where the texts came from (a path or a citation), for messages only.
    """

    name: str
    templates: tuple[str, ...]
    source: str = ""

    @property
    def count(self) -> int:
        return len(self.templates)

    @property
    def sha256(self) -> str:
        """sha256 of the templates (JSON list, ``{c}`` form): equal sets hash alike wherever they came from."""
        return hashlib.sha256(json.dumps(list(self.templates), ensure_ascii=False).encode()).hexdigest()

    def record(self) -> dict[str, Any]:
        """What a run records and its config hash covers: ``{"name", "sha256", "count"}``."""
        return {"name": self.name, "sha256": self.sha256, "count": self.count}

    def texts(self, classname: str) -> list[str]:
        """Every template filled with ``classname`` (the class name as the dataset lists it)."""
        return [fill(t, classname) for t in self.templates]


# ---------------------------------------------------------------------- parsing
def parse_templates(items: Sequence[Any], where: str, *, skip_blank: bool = False) -> tuple[str, ...]:
    """Check templates and return them stripped, in the ``{c}`` form.

    Each must be a string holding the placeholder ``{c}`` or ``{}`` (a template without one
    gives every class the same text). Blank entries are skipped with ``skip_blank`` (lines
    of a text file), an error otherwise. Raises :class:`TemplateError` naming ``where`` and
    the first offending entries.
    """
    out: list[str] = []
    bad: list[str] = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, str):
            bad.append(f"#{i} is a {type(item).__name__}, not a string")
            continue
        text = item.strip()
        if not text:
            if not skip_blank:
                bad.append(f"#{i} is empty")
            continue
        if not any(p in text for p in PLACEHOLDERS):
            bad.append(f"#{i} {text!r} lacks the placeholder {{c}} or {{}}")
        else:
            out.append(text.replace("{}", PLACEHOLDER))
    if bad:
        raise TemplateError(
            f"{where}: {len(bad)} template(s) cannot be used: {'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}. "
            "Write one template per line (or a JSON list of strings) with {c} or {} where the class name goes"
        )
    if not out:
        raise TemplateError(
            f"{where}: no templates (empty); expected one template per line (or a JSON list of "
            "strings) with {c} or {} where the class name goes, e.g. 'a photo of a {c}.'"
        )
    return tuple(out)


def templates_from_text(text: str, where: str, *, suffix: str = "") -> tuple[str, ...]:
    """The templates of a file's text: JSON for ``.json``, lines for ``.txt``; otherwise a JSON list
    when the text parses as one (a line template may start with ``{c}``, so only ``[`` is taken as JSON).

    JSON: a list of strings, or CLIP_benchmark's ``--custom_template_file`` shape for one dataset
    (an object with one key whose value is that list).
    """
    data: Any = _NOT_JSON
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TemplateError(
                f"{where} is not valid JSON ({exc}); expected a JSON list of templates, or a .txt "
                "file with one template per line"
            ) from None
    elif suffix != ".txt" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            pass  # a template that starts with "[": read as lines
    if data is not _NOT_JSON:
        if isinstance(data, dict):
            lists = {k: v for k, v in data.items() if isinstance(v, list)}
            if len(data) != 1 or len(lists) != 1:
                raise TemplateError(
                    f"{where}: an object with keys {list(data)[:5]}; expected a JSON list of templates (or one key "
                    "holding that list). Class-specific prompts ({class: [sentences]}) are descriptions: pass them "
                    "with --descriptions"
                )
            data = next(iter(lists.values()))
        if not isinstance(data, list):
            raise TemplateError(f"{where}: a JSON {type(data).__name__}; expected a list of templates")
        return parse_templates(data, where)
    return parse_templates(text.splitlines(), where, skip_blank=True)


def read_template_file(url: str, storage_options: Mapping[str, Any] | None = None) -> TemplateSet:
    """A template file (any fsspec URL) as a :class:`TemplateSet` named ``file:<file name>``."""
    try:
        with fsspec.open(url, "rb", **dict(storage_options or {})) as f:
            blob = f.read()
    except FileNotFoundError:
        raise TemplateError(f"template file not found: {url}") from None
    except (OSError, ValueError) as exc:
        raise TemplateError(f"cannot read template file {url} ({type(exc).__name__}: {exc})") from None
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TemplateError(f"template file {url} is not UTF-8 text ({exc})") from None
    base = posixpath.basename(str(url).replace("\\", "/").rstrip("/"))
    suffix = posixpath.splitext(base)[1].lower()
    return TemplateSet(f"file:{base}", templates_from_text(text, f"template file {url}", suffix=suffix), str(url))


# ---------------------------------------------------------------------- the CLIP paper's sets
@functools.lru_cache(maxsize=1)
def _paper_sets() -> dict[str, Any]:
    ref = resources.files(__package__ or "tasks.datasets").joinpath(_DATA[0]).joinpath(_DATA[1])
    data: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return data


def builtin_names() -> list[str]:
    """Names ``--templates`` accepts as a set: the sets of ``templates/clip.json``, their aliases, ``none``."""
    data = _paper_sets()
    return sorted([*data["sets"], *data["aliases"], NONE])


def builtin_template_set(name: str) -> TemplateSet:
    """A set of ``templates/clip.json`` by name (aliases resolved: ``openai-imagenet`` is ``imagenet1k``), or ``none``."""
    if name == NONE:
        return TemplateSet(NONE, (), "no clip-e")
    data = _paper_sets()
    key = data["aliases"].get(name, name)
    entry = data["sets"].get(key)
    if entry is None:
        raise TemplateError(
            f"unknown template set {name!r}; known: {', '.join(builtin_names())}, or a .txt / .json template file"
        )
    return TemplateSet(key, parse_templates(entry["templates"], f"template set {key!r}"), entry["source"])


def is_template_file(selection: str) -> bool:
    """Whether a ``--templates`` value names a file rather than a set (a path, a URL or a .txt / .json name)."""
    return "/" in selection or "\\" in selection or selection.lower().endswith(FILE_SUFFIXES)


def selection_problem(selection: str) -> str | None:
    """What is wrong with a ``--templates`` value, from its spelling alone (no file is read)."""
    if selection == AUTO or is_template_file(selection) or selection in builtin_names():
        return None
    import difflib

    near = difflib.get_close_matches(selection, [AUTO, *builtin_names()], n=2, cutoff=0.5)
    return (
        f"unknown template set {selection!r}"
        + (f" (did you mean {' or '.join(near)}?)" if near else "")
        + f"; use auto, one of {', '.join(builtin_names())}, or a .txt / .json template file"
    )


def resolve_template_set(selection: str, dataset: Mapping[str, Any] | None = None) -> TemplateSet:
    """The template set a ``--templates`` value means for one dataset.

    ``dataset``: what its layout found (``DatasetSource.describe()``) or the committed
    ``dataset.json`` (``DatasetInfo.raw``); ``auto`` reads its ``templates`` /
    ``templates_file`` (a WebDataset's own) and ``layout``. A set's name and a file need no dataset.
    Raises :class:`TemplateError` (a ``ValueError``) with what to fix.
    """
    if selection != AUTO:
        if is_template_file(selection):
            return read_template_file(selection)
        return builtin_template_set(selection)
    dataset = dataset or {}
    own = dataset.get("templates")
    if own is not None:
        where = str(dataset.get("templates_file") or TEMPLATES_FILE)
        base = posixpath.basename(where.replace("\\", "/"))
        try:
            templates = parse_templates(list(own), where, skip_blank=True)
        except TemplateError as exc:
            raise TemplateError(
                f"{exc} (or pass --templates with a set or a file instead of the dataset's own)"
            ) from None
        return TemplateSet(f"dataset:{base}", templates, where)
    return builtin_template_set(layout_template_set_name(dataset.get("layout")) or FALLBACK)


def layout_template_set_name(layout: str | None) -> str | None:
    """The set a layout declares (``Layout.default_templates``), or ``None`` for layouts without one."""
    if not layout or not is_layout(layout):
        return None
    return get_layout(layout).default_templates


__all__ = [
    "AUTO",
    "FALLBACK",
    "NONE",
    "PLACEHOLDER",
    "PLACEHOLDERS",
    "TemplateError",
    "TemplateSet",
    "builtin_names",
    "builtin_template_set",
    "fill",
    "is_template_file",
    "layout_template_set_name",
    "parse_templates",
    "read_template_file",
    "resolve_template_set",
    "selection_problem",
    "templates_from_text",
]
