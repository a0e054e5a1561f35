"""Matrix files, and the one order in which a job's parameters become its cells.

A job is datasets x models (each cell one :class:`flows.params.EvaluateParams`; a cell whose
``abs_config`` lists values is itself a sweep, ``flows.sweep``). ``abs-eval run`` with options,
``abs-eval run --matrix FILE`` and the ``reevaluate`` flow (the scheduled deployments) all build
their cells here, so one file or deployment gives the same cells whichever way it is run.

The merge order, lowest first; each layer overrides the ones before it:

1. the parameters' own defaults (``EvaluateParams``, from ``tasks.defaults`` and the paper);
2. the job: ``root`` and ``deployment`` (a matrix file's top-level keys, ``reevaluate``'s arguments);
3. ``defaults`` (of the matrix file or the deployment);
4. the dataset's entry;
5. the model's entry;
6. the options typed on the command line: only those given, an option left at its default
   overrides nothing (so ``--tau 0.05`` beside a matrix file changes tau in every cell, and a
   file's ``dino_model`` is not undone by the command line's default).

Dict-valued fields (``abs_config``, ``layout_options``) merge key by key across the layers, so a
dataset that sets ``abs_config: {n_crops: 20}`` keeps the ``tau`` its defaults set; every other
field: the highest layer that names it wins. Why one order: before it, the command line, matrix
files and ``reevaluate`` each merged in their own way (a file's ``root`` beat ``--root``, a
dataset's ``abs_config`` dropped the defaults' whole).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.params import EvaluateParams, ParameterError

__all__ = ["MATRIX_KEYS", "MERGED_FIELDS", "MatrixFile", "job_cells", "merge_layers", "read_matrix"]

#: The top-level keys of a matrix file (the ``reevaluate`` flow's parameters, less the ones only a flow has).
MATRIX_KEYS = ("datasets", "models", "defaults", "root", "deployment")
#: Fields merged key by key across the layers: the dict-valued ones of ``EvaluateParams``.
MERGED_FIELDS = tuple(
    name for name, f in EvaluateParams.model_fields.items() if typing.get_origin(f.annotation) is dict
)


def merge_layers(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The cell's fields from ``layers`` (lowest first, ``None`` skipped): later values win, dict-valued
    fields (:data:`MERGED_FIELDS`) merge key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key in MERGED_FIELDS and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = {**out[key], **value}
            elif key in MERGED_FIELDS and isinstance(value, Mapping):
                out[key] = dict(value)
            else:
                out[key] = value
    return out


def job_cells(
    datasets: Sequence[Mapping[str, Any]],
    models: Sequence[Mapping[str, Any]] | None = None,
    *,
    root: str | None = None,
    deployment: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    given: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The fields of every cell, datasets x models (dataset-major), merged in the module's order.

    ``root`` / ``deployment``: the job's (``None``: not given); ``given``: the options typed on the
    command line. An empty ``models`` is one cell per dataset with the model fields from the other layers."""
    job = {k: v for k, v in (("root", root), ("deployment", deployment)) if v is not None}
    return [merge_layers(job, defaults, d, m, given) for d in datasets for m in (models or [{}])]


@dataclass(frozen=True)
class MatrixFile:
    """A matrix file as read: the same shape as a ``reevaluate`` deployment's parameters."""

    path: str
    datasets: list[dict[str, Any]]
    models: list[dict[str, Any]] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    root: str | None = None
    deployment: str | None = None

    def cells(
        self,
        given: Mapping[str, Any] | None = None,
        extra_datasets: Sequence[Mapping[str, Any]] = (),
        models: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """:func:`job_cells` of the file; ``extra_datasets`` after its own, ``models`` instead of its own
        (the command line's, when it names models), ``given`` on top (``given["root"]`` beats the file's)."""
        return job_cells(
            [*self.datasets, *extra_datasets],
            models if models else self.models,
            root=self.root,
            deployment=self.deployment,
            defaults=self.defaults,
            given=given,
        )


def _entries(doc: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise ParameterError(f"{where}: '{key}' must be a list of mappings (one per {key[:-1]}), got {value!r:.80}")
    return [dict(e) for e in value]


def read_matrix(path: str | Path) -> MatrixFile:
    """A matrix file: YAML (.yaml/.yml, JSON is YAML too) or TOML (.toml); :class:`ParameterError`, one
    line, for a missing file, a syntax error (where), an unknown key or a malformed list."""
    path = Path(path)
    is_toml = path.suffix.lower() == ".toml"
    try:
        text = path.read_text()
        if is_toml:
            import tomllib

            doc = tomllib.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except FileNotFoundError:
        raise ParameterError(f"matrix file not found: {path}") from None
    except Exception as exc:  # a YAML or TOML syntax error: say where
        raise ParameterError(
            f"{path}: cannot be read as {'TOML' if is_toml else 'YAML'}: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(doc, dict):
        raise ParameterError(
            f"{path}: expected a mapping with 'datasets' (and optionally 'models', 'defaults', 'root')"
        )
    unknown = set(doc) - set(MATRIX_KEYS)
    if unknown:
        raise ParameterError(f"{path}: unknown keys {sorted(unknown)}; use {', '.join(MATRIX_KEYS)}")
    datasets = _entries(doc, "datasets", str(path))
    if not datasets:
        raise ParameterError(f"{path}: no datasets (a list under 'datasets:' with dataset, source, layout ...)")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ParameterError(f"{path}: 'defaults' must be a mapping of parameters, got {defaults!r:.80}")
    return MatrixFile(
        str(path),
        datasets,
        _entries(doc, "models", str(path)),
        dict(defaults),
        doc.get("root") or None,
        doc.get("deployment") or None,
    )
