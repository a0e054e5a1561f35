"""The parameters of one evaluation: one typed object for the CLI, the flow, the deployments and the checks.

Why one pydantic model: ``abs-eval run`` builds it from its options, the
``evaluate`` flow takes it (Prefect validates it and renders it as a form in its
UI), ``prefect.yaml`` deployments and ``reevaluate`` cells are its fields as
YAML, and :func:`check` turns it into the :class:`tasks.run.evalspec.EvalSpec` the
tasks run. A new option is one field here (plus its CLI flag); its default comes
from ``tasks.defaults``.

Checks come in three depths, all before any image or model is touched:
:func:`static_problems` (names only: layout, templates, models, pretrained tags,
method parameters; what the deployment test runs over ``prefect.yaml``),
:func:`check` (adds the paths), :func:`preflight` (adds the dataset's class list:
descriptions that do not fit, a one-class dataset).
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from abs_model import ABSConfig, ModelSpec
from flows.runners import RUNNERS
from tasks import defaults
from tasks.run.evalspec import EvalSpec


class ParameterError(ValueError):
    """A parameter of the job is wrong; raised before any work starts, with what to do."""


class EvaluateParams(BaseModel):
    """One dataset x CLIP model x method config. Defaults: ``tasks.defaults`` and the ABS paper."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="Name to store the dataset under (letters, digits, '.', '_', '-').")
    source: str | None = Field(None, description="The dataset as downloaded (any fsspec URL); None reuses its shards.")
    layout: str = Field(defaults.LAYOUT, description="How `source` is laid out (`abs-eval layouts`).")
    layout_options: dict[str, Any] = Field(default_factory=dict, description="Options of the layout, e.g. split.")
    root: str = Field(defaults.ROOT, description="Storage root: a folder or any fsspec URL.")
    clip_model: str = Field(defaults.CLIP_MODEL, description="open_clip ViT name.")
    clip_pretrained: str | None = Field(
        defaults.CLIP_PRETRAINED, description="open_clip tag, checkpoint path, or None for random weights."
    )
    dino_model: str = Field(defaults.DINO_MODEL, description="timm DINO ViT name.")
    dino_pretrained: str | None = Field(
        defaults.DINO_PRETRAINED, description="'timm', a checkpoint path, or 'random' (null) for random weights."
    )
    descriptions: str | None = Field(None, description="Description file to import; None uses the stored set.")
    descriptions_name: str | None = Field(None, description="Stored description set (default: the dataset name).")
    descriptions_format: str = Field(
        defaults.DESCRIPTIONS_FORMAT, description="auto, cupl, nested, attributes or templates."
    )
    descriptions_key: str | None = Field(None, description="Dataset key inside a nested description file.")
    abs_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the ABS parameters (alpha, beta, top_k, n_crops, "
        "n_descriptions, tau, tau_sample, seed, max_image_side (0: no "
        "downscale limit, the default), ...). A list of values is a "
        "sweep axis, e.g. top_k: [10, 20, 40] (every combination, one "
        "job; crop_kinds and matching are axes too: flows/sweep.py).",
    )
    prompt: str = Field(defaults.PROMPT, description="Prompt of the plain CLIP baseline.")
    templates: str = Field(
        defaults.TEMPLATES,
        description="Templates of clip-e, every one used: auto (the dataset's own "
        "zeroshot_classification_templates.txt, else the CLIP paper's set for its "
        "layout, else the 80 OpenAI ImageNet ones), a set (openai-imagenet alias "
        "imagenet1k, food101, pets, dtd, sun397, birdsnap; none: no clip-e), or a "
        "file: .txt with one template per line or a .json list, {c} or {} where "
        "the class name goes.",
    )

    images_per_shard: int = Field(defaults.IMAGES_PER_SHARD, ge=1, description="Images per Parquet shard.")
    device: str = Field(defaults.DEVICE, description="auto, cpu, cuda, cuda:1 ...")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        defaults.PRECISION, description="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16."
    )
    images_per_batch: int | None = Field(
        None,
        ge=1,
        description="Images per model batch (default: "
        f"{defaults.IMAGES_PER_BATCH_CPU} on CPU, {defaults.IMAGES_PER_BATCH_CUDA} on "
        "CUDA).",
    )
    keep_features: bool = Field(False, description="Also store crop features.")
    compile: bool = Field(False, description="torch.compile the CLIP trunk (~30 s once, then 8-20% faster: long runs).")
    deployment: str | None = Field(
        None, description="Label runs are compared by (default: the Prefect deployment, else 'manual')."
    )
    runner: Literal["threads", "dask", "ray"] = Field(
        defaults.RUNNER, description="Where shard tasks run: threads, dask or ray."
    )
    workers: int = Field(defaults.WORKERS, ge=1, description="Parallel shard tasks.")
    report: bool = Field(True, description="Write the report and publish the artifacts.")
    allow_single_class: bool = Field(False, description="Evaluate a dataset whose images all have one label.")

    @field_validator("templates")
    @classmethod
    def _known_templates(cls, v: str) -> str:
        """A set's name or a file's spelling (the file itself is read by :func:`check`)."""
        from tasks.datasets.template_sets import selection_problem

        problem = selection_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("clip_pretrained", "dino_pretrained", mode="before")
    @classmethod
    def _random_is_none(cls, v: Any) -> Any:
        """``random`` (any case) or an empty value means random weights, as on the command line: a
        matrix file or a deployment may say ``random`` where Python says ``None``."""
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "random", "none", "null")):
            return None
        return v


assert set(EvaluateParams.model_fields["runner"].annotation.__args__) == set(RUNNERS)


def make_params(**values: Any) -> EvaluateParams:
    """``EvaluateParams(**values)`` with pydantic's errors as one :class:`ParameterError` line each."""
    try:
        return EvaluateParams(**values)
    except ValidationError as exc:
        raise ParameterError(_problems_text([_pydantic_problem(e) for e in exc.errors()])) from None


def _pydantic_problem(err: dict[str, Any]) -> str:
    where = ".".join(str(x) for x in err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        known = ", ".join(EvaluateParams.model_fields)
        near = difflib.get_close_matches(where, list(EvaluateParams.model_fields), n=1)
        return f"unknown parameter {where!r}" + (f" (did you mean {near[0]!r}?)" if near else f"; known: {known}")
    return f"{where}: {err.get('msg')} (got {err.get('input')!r})"


def _problems_text(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems with the job:\n  - " + "\n  - ".join(problems)


def _exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


from flows.preflight import is_weights_path as _is_path  # noqa: E402 - one rule for both modules

#: ``abs_config`` keys only a sweep has (``flows.sweep``), beside ``ABSConfig``'s fields: which crop branches
#: a point scores and how crops meet descriptions; both are scored from stored crop features
#: (``abs_model.variants``: ``CROP_KINDS``, ``MATCHINGS``), always as an axis, even with one value.
SWEEP_ONLY_AXES: dict[str, tuple[str, ...]] = {
    "crop_kinds": ("both", "raw", "feature"),
    "matching": ("soft", "average"),
}


def abs_axes(params: EvaluateParams) -> dict[str, list[Any]]:
    """The sweep axes of ``abs_config``: each key whose value is a list (``top_k: [10, 20, 40]``), and
    ``crop_kinds`` / ``matching`` whatever their value. Empty: one evaluation, no sweep."""
    return {
        k: (list(v) if isinstance(v, (list, tuple)) else [v])
        for k, v in params.abs_config.items()
        if isinstance(v, (list, tuple)) or k in SWEEP_ONLY_AXES
    }


def abs_config(params: EvaluateParams) -> ABSConfig:
    """The paper's ABS parameters with the job's overrides (``ValueError`` names a bad one); for a sweep,
    its base: the overrides that are not axes."""
    axes = abs_axes(params)
    return ABSConfig.from_dict(
        {**defaults.ABS.to_dict(), **{k: v for k, v in params.abs_config.items() if k not in axes}}
    )


def sweep_points(params: EvaluateParams) -> list[dict[str, Any]]:
    """Every combination of the axes' values (the grid a sweep evaluates), in the order the axes and their
    values are written; ``[]`` without axes."""
    import itertools

    axes = abs_axes(params)
    if not axes:
        return []
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def point_config(base: ABSConfig, point: dict[str, Any]) -> tuple[ABSConfig, str]:
    """The ``ABSConfig`` a sweep point stands for (``base`` with its values; ``crop_kinds`` sets the
    ``raw_crops`` / ``feature_crops`` pair) and its matching (``soft`` unless the point says ``average``).
    ``ValueError`` names what is wrong (an unknown key, a value out of range)."""
    for key, allowed in SWEEP_ONLY_AXES.items():
        if key in point and point[key] not in allowed:
            raise ValueError(f"{key} {point[key]!r}: choose from {', '.join(allowed)}")
    changes = {k: v for k, v in point.items() if k not in SWEEP_ONLY_AXES}
    if "crop_kinds" in point:
        kind = point["crop_kinds"]
        changes.update(raw_crops=kind in ("both", "raw"), feature_crops=kind in ("both", "feature"))
    return ABSConfig.from_dict({**base.to_dict(), **changes}), point.get("matching", "soft")


def _sweep_problems(params: EvaluateParams) -> list[str]:
    """Axes without values, and the first point of the grid that is no valid configuration."""
    empty = [k for k, v in abs_axes(params).items() if not v]
    if empty:
        return [f"abs_config: the axes {empty} list no value"]
    base = abs_config(params)
    for point in sweep_points(params):
        try:
            config, _ = point_config(base, point)
        except (ValueError, TypeError) as exc:
            return [f"abs_config sweep point {point}: {exc}"]
        if config.n_descriptions > base.n_descriptions:  # flows.sweep.plan_sweep says why
            return [
                f"abs_config sweep: n_descriptions={config.n_descriptions} is above the base's "
                f"M={base.n_descriptions}: set abs_config.n_descriptions to the largest value"
            ]
    return []


def static_problems(params: EvaluateParams) -> list[str]:
    """Every problem visible from the names alone (no file is read)."""
    from flows.preflight import name_problems

    problems = name_problems(params.dataset, params.layout)
    try:
        abs_config(params)
        problems += _sweep_problems(params)
    except (ValueError, TypeError) as exc:
        problems.append(f"abs_config: {exc}")
    problems += _model_problems(params.clip_model, params.clip_pretrained, params.dino_model, params.dino_pretrained)
    return problems


def _model_problems(
    clip_model: str, clip_pretrained: str | None, dino_model: str, dino_pretrained: str | None
) -> list[str]:
    import open_clip
    import timm

    from abs_model.model_configs import dino_configs, register_clip_configs

    out = []
    register_clip_configs()
    clip_models = open_clip.list_models()
    if clip_model not in clip_models:
        near = difflib.get_close_matches(clip_model, clip_models, n=3)
        out.append(
            f"unknown CLIP model {clip_model!r}"
            + (
                f" (did you mean {', '.join(near)}?)"
                if near
                else " (open_clip names such as ViT-B-16, `abs-eval models`)"
            )
        )
    if dino_model not in dino_configs() and not timm.is_model(dino_model.split(".")[0]):
        out.append(f"unknown DINO model {dino_model!r} (timm names such as vit_base_patch16_224.dino)")
    if clip_pretrained and not _is_path(clip_pretrained) and clip_model in clip_models:
        tags = open_clip.list_pretrained_tags_by_model(clip_model)
        if clip_pretrained not in tags:
            near = difflib.get_close_matches(clip_pretrained, tags, n=3, cutoff=0.3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            out.append(
                f"unknown pretrained tag {clip_pretrained!r} for {clip_model}: its tags are "
                f"{', '.join(tags) or 'none (use a checkpoint path or random)'}{hint}"
            )
    if dino_pretrained and not _is_path(dino_pretrained) and dino_pretrained != "timm":
        out.append(
            f"dino_pretrained {dino_pretrained!r}: use 'timm' (the hub weights of the timm name), "
            "a checkpoint path, or random"
        )
    return out


def check(params: EvaluateParams) -> EvalSpec:
    """Every check that needs no model and no image; returns the evaluation the tasks run."""
    problems = static_problems(params)
    if params.source is not None and not _exists(params.source):
        problems.append(f"dataset source not found: {params.source}")
    if params.descriptions and not _exists(params.descriptions):
        problems.append(f"descriptions file not found: {params.descriptions}")
    problems += _template_file_problems(params.templates)
    for what, p in (("clip_pretrained", params.clip_pretrained), ("dino_pretrained", params.dino_pretrained)):
        if p and _is_path(p) and not os.path.exists(p):
            problems.append(f"{what}: checkpoint file not found: {p}")
    if problems:
        raise ParameterError(_problems_text(problems))
    return EvalSpec(
        dataset=params.dataset,
        clip=ModelSpec(params.clip_model, params.clip_pretrained),
        dino=ModelSpec(params.dino_model, params.dino_pretrained),
        descriptions=params.descriptions_name or params.dataset,
        abs=abs_config(params),
        prompt=params.prompt,
        templates=params.templates,
        device=params.device,
        precision=params.precision,
        images_per_batch=params.images_per_batch,
        keep_features=params.keep_features,
        compile=params.compile,
    )


def _template_file_problems(templates: str) -> list[str]:
    """A ``--templates`` file that is missing or malformed, read now (before any work)."""
    from tasks.datasets.template_sets import is_template_file, read_template_file

    if not is_template_file(templates):
        return []
    try:
        read_template_file(templates)
    except ValueError as exc:
        return [f"templates: {exc}"]
    return []


def preflight(params: EvaluateParams) -> EvalSpec:
    """:func:`check`, then the checks that need the dataset's class list (no image, no model).

    With a ``source``: list it through its layout (file names and index files only)
    and check the description file against its classes, so descriptions made for
    another class list fail before 50,000 images are sharded. Without one: the
    dataset must already be sharded under the root, and the stored description set
    must fit it. A dataset whose images all carry one label is refused unless
    ``allow_single_class`` (every method scores 100% there, which tells nothing).
    """
    from tasks.datasets import LayoutError, load_source
    from tasks.descriptions import (
        DescriptionError,
        import_descriptions,
        read_descriptions,
    )
    from tasks.store.datasets import read_dataset_info

    spec = check(params)
    from flows.preflight import model_problems  # a model ABS cannot use (grid, unsplittable tower)

    arch = model_problems(params.clip_model, params.dino_model)
    if arch:
        raise ParameterError("; ".join(arch))
    if params.source is not None:
        try:
            src = load_source(params.layout, params.source, **params.layout_options)
        except (LayoutError, ValueError, TypeError, KeyError, FileNotFoundError) as exc:
            raise ParameterError(f"{params.layout} layout at {params.source}: {exc}") from None
        text_classnames = list(src.text_classnames or src.classnames)
        single = src.n_classes_present == 1
        described = src.describe()
    else:
        try:
            info = read_dataset_info(params.root, spec.dataset)
        except FileNotFoundError:
            raise ParameterError(
                f"dataset {spec.dataset!r} is not sharded under {params.root}: pass --source (and --layout) to shard it"
            ) from None
        text_classnames = list(info.text_classnames)
        single = False  # checked (and warned about) when it was sharded
        described = info.raw
    try:
        spec.template_set(described)  # auto: the dataset's own templates must be usable
    except ValueError as exc:
        raise ParameterError(f"templates: {exc}") from None
    try:
        if params.descriptions:
            import_descriptions(
                params.descriptions,
                text_classnames,
                format=params.descriptions_format,
                dataset_key=params.descriptions_key,
                m=spec.abs.n_descriptions,
            )
        else:
            stored = read_descriptions(params.root, spec.descriptions)
            if list(stored.classnames) != text_classnames:
                raise DescriptionError(
                    f"stored description set {spec.descriptions!r} has {len(stored.classnames)} classes, the dataset "
                    f"{len(text_classnames)}: pass the description file for this dataset with --descriptions"
                )
    except DescriptionError as exc:
        raise ParameterError(f"descriptions: {exc}") from None
    if single and not params.allow_single_class:
        raise ParameterError(
            f"every image of {spec.dataset!r} has the same label: every method scores 100% on a one-class dataset. "
            "Point --source at the folder holding all class folders, or pass --allow-single-class."
        )
    return spec
