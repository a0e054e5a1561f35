"""The ``abs-eval`` command line: thin commands over the flows and tasks.

Every command that runs work goes through Prefect (a local ephemeral API unless
PREFECT_API_URL points at a server), so runs show up in the Prefect UI when one
is running. Analysis commands (``sql``, ``status``) only read the storage root.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from tasks import defaults

app = typer.Typer(
    help="ABS (Attention-Based Selection) zero-shot CLIP evaluation: shard datasets, cache DINO attention "
    "and text embeddings, run ABS + baselines per shard with Prefect, analyse with DuckDB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
describe_app = typer.Typer(
    help="Import or generate the class descriptions ABS matches crops against.", no_args_is_help=True
)
sql_app = typer.Typer(help="DuckDB views and queries over the results (sql/).", no_args_is_help=True)
app.add_typer(describe_app, name="describe")
app.add_typer(sql_app, name="sql")

RootOpt = typer.Option(
    defaults.ROOT,
    "--root",
    "-r",
    help="Storage root: a folder or any fsspec URL (memory://, s3://bucket/x, gs://bucket/x). Env: ABS_EVAL_ROOT.",
)


@app.callback()
def _setup() -> None:
    # Offline-friendly Prefect defaults and a start-up timeout for Prefect's temporary
    # API that holds on a cold 2-core machine; must run before prefect is imported.
    from flows.prefect_env import configure_prefect

    configure_prefect(announce=False)


def _announce_local_api() -> None:
    """Say at once that a local Prefect API is starting (the first start can take a minute).

    Also starts the guardian that ends every process this one starts (Prefect's temporary API
    server, Dask's local workers) once this one is gone, even after a SIGKILL (flows/lifetime.py).
    """
    from flows.lifetime import start_guardian
    from flows.prefect_env import configure_prefect

    start_guardian()
    configure_prefect(announce=True)


def _fail(msg: str) -> None:
    """One red line on stderr (several for a list of problems), exit code 2, no traceback."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _job_mistakes():
    """Around the checks of ``flows/preflight.py``: a mistake is one ``error:`` line, exit code 2.

    The checks named inside import no torch, open_clip or Prefect, so a path typo is
    reported in about a second; commands import their heavy modules after this block.
    """
    from flows.preflight import PreflightError

    try:
        yield
    except PreflightError as exc:
        _fail(str(exc))


def _parse_kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            _fail(f"expected KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


def _abs_overrides(alpha, beta, top_k, n_crops, m, tau, tau_sample, seed, max_image_side=None) -> dict:
    vals = dict(
        alpha=alpha,
        beta=beta,
        top_k=top_k,
        n_crops=n_crops,
        n_descriptions=m,
        tau=tau,
        tau_sample=tau_sample,
        seed=seed,
        max_image_side=max_image_side,
    )
    return {k: v for k, v in vals.items() if v is not None}


# ------------------------------------------------------------------------------ demo
@app.command()
def demo(
    root: str = typer.Option(defaults.DEMO_ROOT, "--root", "-r", help="Where the demo writes everything."),
    per_class: int = typer.Option(6, help="Generated images per class (12 classes)."),
    n_crops: int = typer.Option(20, help="Crops per branch (the paper uses 60; fewer keeps the demo quick)."),
    images_per_shard: int = typer.Option(16, help="Images per Parquet shard."),
) -> None:
    """Run the whole pipeline offline on a generated image set with tiny random-weight models.

    Generates 12 classes of coloured shapes, shards them, imports CuPL-style descriptions, caches DINO
    attention and text embeddings, runs ABS + baselines per shard on the local Prefect API, writes the
    report and a DuckDB catalog, and prints the accuracy table. Random weights give chance accuracy;
    the point is that every stage runs.
    """
    from flows import preflight as pf

    with _job_mistakes():
        pf.check_writable_dir(root, "--root")
    _announce_local_api()
    from flows.evaluate import evaluate
    from flows.params import EvaluateParams
    from tasks.results.catalog import write_catalog
    from tasks.steps.demo_data import demo_descriptions, write_demo_dataset
    from tasks.store import Storage

    st = Storage(root)
    src = st.url("demo-source")
    classes = write_demo_dataset(src, per_class=per_class)
    desc_path = st.url("demo-descriptions.json")
    with st.fs.open(st.path("demo-descriptions.json"), "w") as f:
        json.dump(demo_descriptions(classes), f, indent=1)
    out = evaluate(
        EvaluateParams(
            dataset="demo",
            source=src,
            layout="folder",
            root=root,
            clip_model=defaults.TINY_CLIP_MODEL,
            clip_pretrained=None,
            dino_model=defaults.TINY_DINO_MODEL,
            dino_pretrained=None,
            descriptions=desc_path,
            abs_config={"n_crops": n_crops, "n_descriptions": 8},
            images_per_shard=images_per_shard,
            deployment="demo",
        )
    )
    catalog = None
    if st.is_local:
        catalog = write_catalog(root, str(Path(st.path("results.duckdb"))))
    typer.echo("")
    _print_accuracy(root, out)
    typer.secho(
        "The models had RANDOM weights (no downloads here), so accuracy is at chance level "
        f"(1/{len(classes)} = {1 / len(classes):.3f}).",
        fg=typer.colors.YELLOW,
    )
    if out.get("report"):
        typer.echo(f"Report: {st.path(out['report'])}")
    if catalog:
        typer.echo(f'Query it:  {Path(sys.executable).parent / "duckdb"} {catalog} -c "from accuracy"')
    typer.echo(
        "Real weights (needs the internet once, for open_clip/timm downloads):\n"
        "  abs-eval run --dataset imagenet --layout imagenet --source /data/imagenet/val \\\n"
        "      --descriptions cupl_prompts.json --clip-model ViT-B-16 --clip-pretrained openai \\\n"
        "      --dino-model vit_base_patch16_224.dino --dino-pretrained timm"
    )


def _print_accuracy(root: str, out: dict) -> None:
    """The number the user came for first: method, accuracy, its 95% interval, n; fits 80 columns."""
    from tasks.results.catalog import run_query
    from tasks.results.formatting import format_accuracy

    rows = run_query(root, "accuracy", {"run_id": out["run_id"]}).to_pylist()
    reused = out.get("shards_reused", 0)
    typer.echo(
        f"Run {out['run_id']}: {out['dataset']} x {out['model']}, {out.get('n_images', 0)} images, "
        f"shards computed {out.get('shards_computed', 0)}, reused {reused} (accuracy from sql/ via DuckDB):"
    )
    typer.echo(format_accuracy(rows))
    for line in regression_lines(out.get("regressions") or []):
        typer.echo(line)


def regression_lines(regressions: list[dict]) -> list[str]:
    """One line per significant drop the flow announced (``flows.evaluate.announce_regressions``):
    the method, the accuracy change, the p-value and the run it is compared with."""
    out = []
    for r in regressions:
        a, b = r.get("accuracy_a"), r.get("accuracy_b")
        change = (
            f"{100 * a:.1f}% -> {100 * b:.1f}% ({100 * (b - a):+.1f} pp)" if a is not None and b is not None else ""
        )
        out.append(
            f"REGRESSION {r.get('method')}: {change}, McNemar p={r.get('p_value'):.2g}, "
            f"{r.get('n_broken')} right -> wrong, {r.get('n_fixed')} wrong -> right, since run {r.get('run_a')}"
        )
    return out


def _regression_cell(r: dict) -> str:
    """The matrix table's regression column: regressed methods and their change, or empty."""
    regs = r.get("regressions") or []
    return ", ".join(
        f"{g.get('method')} {100 * ((g.get('accuracy_b') or 0) - (g.get('accuracy_a') or 0)):+.1f}pp" for g in regs
    )


# ------------------------------------------------------------------------------ shard
@app.command()
def shard(
    layout: str = typer.Argument(..., help="Dataset layout (see `abs-eval layouts`)."),
    source: str = typer.Argument(..., help="The dataset as downloaded: a folder or fsspec URL."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Name to store it under."),
    root: str = RootOpt,
    images_per_shard: int = typer.Option(defaults.IMAGES_PER_SHARD, help="Images per Parquet shard."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Layout option KEY=VALUE (repeatable)."),
) -> None:
    """Shard a dataset into Parquet under the root (resumable; bad files become error rows)."""
    from flows import preflight as pf

    with _job_mistakes():
        pf.check_exists(source, "dataset source")
        pf.check_writable_dir(root, "--root")
    from tasks.steps.shard import shard_dataset

    try:
        m = shard_dataset(layout, source, root, dataset, images_per_shard, layout_options=_parse_kv(option))
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(
        f"{dataset}: {m.n_total} images ({m.n_ok} ok, {m.n_error} error rows) in {len(m.shards)} shards; "
        f"{len(m.written)} written, {len(m.skipped)} already committed"
    )
    if m.n_error:
        typer.echo(f"error rows by status: {m.status_counts}")


@app.command()
def layouts() -> None:
    """List the dataset layouts."""
    from tasks.datasets import get_layout, list_layouts

    for name in list_layouts():
        doc = (get_layout(name).__doc__ or "").strip().splitlines()
        typer.echo(f"{name:<18} {doc[0] if doc else ''}")


# ------------------------------------------------------------------------------ describe
@describe_app.command("import")
def describe_import(
    path: str = typer.Argument(..., help="Description file (CuPL JSON, nested, attribute lists, templates)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Sharded dataset whose class list to match."),
    root: str = RootOpt,
    name: Optional[str] = typer.Option(None, help="Name to store the set under (default: the dataset name)."),
    fmt: str = typer.Option("auto", "--format", help="auto, cupl, nested, attributes or templates."),
    key: Optional[str] = typer.Option(None, help="Dataset key inside a nested file."),
    m: int = typer.Option(defaults.N_DESCRIPTIONS, help="Keep at most M descriptions per class."),
) -> None:
    """Import descriptions, validate them against the dataset's classes, and store them."""
    from flows import preflight as pf

    with _job_mistakes():
        pf.check_exists(path, "description file")
        pf.check_writable_dir(root, "--root")
    from tasks.descriptions import (
        DescriptionError,
        import_descriptions,
        write_descriptions,
    )
    from tasks.store.datasets import read_dataset_info

    try:
        info = read_dataset_info(root, dataset)
        ds = import_descriptions(path, list(info.text_classnames), format=fmt, dataset_key=key, m=m)
    except (DescriptionError, FileNotFoundError) as exc:
        _fail(str(exc))
    man = write_descriptions(ds, root, name or dataset)
    typer.echo(ds.summary())
    typer.echo(f"stored as {man.name!r}: {man.path} (content hash {man.content_hash[:16]})")


@describe_app.command("generate")
def describe_generate(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Sharded dataset whose classes to describe."),
    base_url: str = typer.Option(..., help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"),
    model: str = typer.Option(..., help="Chat model name at that endpoint."),
    root: str = RootOpt,
    name: Optional[str] = typer.Option(None, help="Name to store the set under (default: the dataset name)."),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", help="Environment variable holding the API key (never printed or stored)."
    ),
    m: int = typer.Option(defaults.N_DESCRIPTIONS, help="Distinct descriptions per class."),
    seed: int = typer.Option(0),
    temperature: float = typer.Option(defaults.LLM_TEMPERATURE),
    workers: int = typer.Option(1),
) -> None:
    """Generate CuPL-style descriptions with an LLM (resumable class by class)."""
    from flows import preflight as pf

    with _job_mistakes():
        pf.check_writable_dir(root, "--root")
    from tasks.descriptions import DescriptionError, generate_descriptions
    from tasks.store.datasets import read_dataset_info

    try:
        info = read_dataset_info(root, dataset)
        ds = generate_descriptions(
            list(info.text_classnames),
            root,
            name or dataset,
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            m=m,
            seed=seed,
            temperature=temperature,
            workers=workers,
        )
    except (DescriptionError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(ds.summary())


# ------------------------------------------------------------------------------ run
_P_DATA, _P_MODELS, _P_METHOD, _P_EXEC = (
    "Dataset and descriptions",
    "Models",
    "ABS method (paper defaults)",
    "Execution",
)


def _field_option(name: str, panel: str, *decls: str, help_suffix: str = ""):
    """A ``run`` option whose default and help are those of ``EvaluateParams``' field ``name``.

    Why: the CLI, the flows, matrix files and deployments take the same parameters; written
    twice, a default or its help drifts (``tests/test_cli.py`` checks the two agree).
    """
    from flows.params import EvaluateParams

    field = EvaluateParams.model_fields[name]
    return typer.Option(field.default, *decls, help=(field.description or "") + help_suffix, rich_help_panel=panel)


@app.command()
def run(
    ctx: typer.Context,
    dataset: Optional[list[str]] = typer.Option(
        None, "--dataset", "-d", help="Name to store the dataset under (repeat for several).", rich_help_panel=_P_DATA
    ),
    source: Optional[list[str]] = typer.Option(
        None, help="Dataset as downloaded (one per --dataset); omit to reuse shards.", rich_help_panel=_P_DATA
    ),
    layout: Optional[list[str]] = typer.Option(
        None,
        help="Layout of --source (`abs-eval layouts`; one, or one per --dataset). Default: folder.",
        rich_help_panel=_P_DATA,
    ),
    matrix: Optional[Path] = typer.Option(
        None,
        help="YAML or TOML file: datasets (each with source, layout, "
        "descriptions ...), models, defaults, root, deployment; options typed here "
        "override it (flows/matrix.py). A list in abs_config is a sweep axis.",
        rich_help_panel=_P_DATA,
    ),
    option: Optional[list[str]] = typer.Option(
        None, "--option", "-o", help="Layout option KEY=VALUE (repeatable), e.g. split=test2.", rich_help_panel=_P_DATA
    ),
    root: str = RootOpt,
    descriptions: Optional[list[str]] = typer.Option(
        None,
        help="Description file to import (one per --dataset); omit to use the stored set.",
        rich_help_panel=_P_DATA,
    ),
    descriptions_name: Optional[str] = _field_option("descriptions_name", _P_DATA),
    descriptions_format: str = _field_option("descriptions_format", _P_DATA),
    descriptions_key: Optional[str] = _field_option("descriptions_key", _P_DATA),
    images_per_shard: int = _field_option("images_per_shard", _P_DATA),
    allow_single_class: bool = _field_option("allow_single_class", _P_DATA, help_suffix=" (every method scores 100%)"),
    clip_model: Optional[list[str]] = typer.Option(
        None,
        help=f"open_clip ViT name (`abs-eval models`; repeat for several). Default: {defaults.CLIP_MODEL}.",
        rich_help_panel=_P_MODELS,
    ),
    clip_pretrained: Optional[list[str]] = typer.Option(
        None,
        help="open_clip tag, checkpoint path or 'random' "
        "(one, or one per --clip-model). Default: "
        f"{defaults.CLIP_PRETRAINED}.",
        rich_help_panel=_P_MODELS,
    ),
    dino_model: str = _field_option("dino_model", _P_MODELS),
    dino_pretrained: Optional[str] = _field_option("dino_pretrained", _P_MODELS),
    prompt: str = _field_option("prompt", _P_MODELS),
    templates: str = _field_option("templates", _P_MODELS),
    alpha: Optional[float] = typer.Option(
        None, help=f"Smallest crop side, fraction of the side ({defaults.ABS.alpha}).", rich_help_panel=_P_METHOD
    ),
    beta: Optional[float] = typer.Option(
        None, help=f"Largest crop side, fraction of the side ({defaults.ABS.beta}).", rich_help_panel=_P_METHOD
    ),
    top_k: Optional[int] = typer.Option(
        None,
        help=f"K: crop centres from the K most attended patches ({defaults.ABS.top_k}).",
        rich_help_panel=_P_METHOD,
    ),
    n_crops: Optional[int] = typer.Option(
        None, help=f"N: crops per branch ({defaults.ABS.n_crops}).", rich_help_panel=_P_METHOD
    ),
    m: Optional[int] = typer.Option(
        None, help=f"M: descriptions per class ({defaults.ABS.n_descriptions}).", rich_help_panel=_P_METHOD
    ),
    tau: Optional[float] = typer.Option(
        None, help=f"Soft-matching temperature ({defaults.ABS.tau}).", rich_help_panel=_P_METHOD
    ),
    tau_sample: Optional[float] = typer.Option(
        None, help=f"Temperature over the top-K attention ({defaults.ABS.tau_sample}).", rich_help_panel=_P_METHOD
    ),
    seed: Optional[int] = typer.Option(
        None,
        help=f"Crop seed; each image draws from (seed, image id) ({defaults.ABS.seed}).",
        rich_help_panel=_P_METHOD,
    ),
    max_image_side: Optional[int] = typer.Option(
        None,
        min=0,
        help="Downscale an image whose longer side exceeds this many pixels before any view is made "
        f"(bounds the work and memory per image). 0: no limit ({defaults.ABS.max_image_side}): every view resized "
        "once from the original, as open_clip, CLIP_benchmark and the ABS authors' code do.",
        rich_help_panel=_P_METHOD,
    ),
    device: str = _field_option("device", _P_EXEC),
    precision: str = _field_option("precision", _P_EXEC),
    images_per_batch: Optional[int] = _field_option("images_per_batch", _P_EXEC),
    runner: str = _field_option("runner", _P_EXEC),
    workers: int = _field_option("workers", _P_EXEC),
    keep_features: bool = _field_option("keep_features", _P_EXEC),
    compile: bool = _field_option("compile", _P_EXEC, "--compile"),
    deployment: Optional[str] = _field_option("deployment", _P_EXEC),
) -> None:
    """Evaluate ABS and the baselines on one dataset, or on a matrix of datasets x CLIP models.

    Resumes whatever was committed. Every mistake in the job (layout, paths, models, descriptions
    for another class list) is reported before any work starts. Several --dataset / --clip-model
    values, or --matrix FILE, run every cell through the `reevaluate` flow (the one the scheduled
    deployments use): a failing cell does not stop the others, and a table of every cell ends the run.
    Progress per shard and per image shows in the terminal and in the Prefect logs.
    """
    from flows.params import ParameterError, make_params, preflight
    from flows.preflight import PreflightError

    try:  # paths, roots and names of every cell first: no torch, open_clip or Prefect imported yet
        cells = run_cells(ctx)
        params = [make_params(**c) for c in cells]
        _check_paths(params)
    except (ParameterError, PreflightError) as exc:
        _fail(str(exc))
    try:  # then every other job-level check of every cell, before Prefect or any model starts
        _check_models_and_classes(params, preflight)
    except (ParameterError, PreflightError) as exc:
        _fail(str(exc))
    from abs_model import WeightsUnavailableError
    from tasks.descriptions import DescriptionError
    from tasks.results.runs import announce_runs
    from tasks.run.evalspec import EvaluationError

    announce_runs(params)  # `starting` records now: status and SQL show the run while Prefect starts
    _announce_local_api()
    if len(params) > 1:
        _run_matrix(params, params[0].root)
        return
    from flows.evaluate import evaluate

    try:
        out = evaluate(params[0])
    except (ParameterError, EvaluationError, WeightsUnavailableError, DescriptionError) as exc:
        _fail(str(exc))
    typer.echo("")
    if out.get("points"):
        _print_sweep(params[0].root, out)
    else:
        _print_accuracy(params[0].root, out)


def _print_sweep(root: str, out: dict) -> None:
    """A sweep's points: which ran the models and which were scored from stored crop features, with accuracy."""
    import pyarrow as pa

    from flows.sweep import COMPUTED_BY_FEATURES, sweep_rows
    from tasks.results.formatting import format_table

    points = out["points"]
    n_features = sum(p["computed_by"] == COMPUTED_BY_FEATURES for p in points)
    typer.echo(
        f"Sweep of {out['dataset']} x {out['model']}: {len(points)} points, {len(points) - n_features} ran "
        f"the models, {n_features} scored from stored crop features (no model forward); shards, DINO "
        "cache and text bank computed once:"
    )
    typer.echo(format_table(pa.Table.from_pylist(sweep_rows(root, out))))
    for line in regression_lines(out.get("regressions") or []):
        typer.echo(line)


def _check_paths(params: list) -> None:
    """The cheap checks of every cell (``flows.preflight``): roots writable, inputs present, names
    and layouts valid. Needs no torch, open_clip or Prefect, so a path typo fails within a second."""
    from flows import preflight as pf

    problems = []
    for root in dict.fromkeys(p.root for p in params):
        try:
            pf.check_writable_dir(root, "--root")
        except pf.PreflightError as exc:
            problems.append(str(exc))
    for p in params:
        problems += [f"{p.dataset} x {p.clip_model}: {x}" if len(params) > 1 else x for x in pf.job_problems(p)]
    if problems:
        raise pf.PreflightError(pf.problems_text(list(dict.fromkeys(problems))))


def _check_models_and_classes(params: list, preflight) -> None:
    """Every other check of every cell, all problems listed together: model names and tags, class
    lists and descriptions (``flows.params.preflight``), models ABS cannot use (built on the meta
    device, no weights), then the pretrained weights fetched into the local cache (offline and
    not cached: one line now, not a traceback from a worker after Prefect started)."""
    from flows import preflight as pf
    from flows.params import ParameterError

    problems, checked = [], {}
    for p in params:
        try:
            preflight(p)
        except ParameterError as exc:
            problems.append(f"{p.dataset} x {p.clip_model}: {exc}" if len(params) > 1 else str(exc))
            continue
        key = (p.clip_model, p.dino_model)
        if key not in checked:
            checked[key] = pf.model_problems(*key)
        if checked[key]:
            text = pf.problems_text(checked[key])
            problems.append(f"{p.dataset} x {p.clip_model}: {text}" if len(params) > 1 else text)
    if problems:
        raise ParameterError("\n".join(dict.fromkeys(problems)))
    weights = dict.fromkeys(
        [("CLIP", p.clip_model, p.clip_pretrained) for p in params]
        + [("DINO", p.dino_model, p.dino_pretrained) for p in params]
    )
    for kind, model, pretrained in weights:
        pf.fetch_weights(kind, model, pretrained)


def _per_dataset(values: list[str] | None, n: int, what: str, default=None, of: str = "--dataset") -> list:
    """One value for every ``of`` (dataset or model), one value for all, or the default."""
    from flows.params import ParameterError

    values = list(values or [])
    if not values:
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ParameterError(f"{len(values)} {what} values for {n} {of} values: give one, or one per {of}")
    return values


#: ``run`` options that are one ``EvaluateParams`` field each, for every cell (the per-dataset and
#: per-model options, the layout options and the method options are gathered on their own).
_CELL_OPTIONS = (
    "root",
    "descriptions_name",
    "descriptions_format",
    "descriptions_key",
    "images_per_shard",
    "allow_single_class",
    "dino_model",
    "dino_pretrained",
    "prompt",
    "templates",
    "device",
    "precision",
    "images_per_batch",
    "runner",
    "workers",
    "keep_features",
    "compile",
    "deployment",
)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was typed (or set by its environment variable), not left at its default."""
    source = ctx.get_parameter_source(name)  # by name: typer may bring its own copy of click's enum
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def run_cells(ctx: typer.Context) -> list[dict]:
    """``EvaluateParams`` fields of every cell of ``abs-eval run``: datasets x models from the options
    and/or the matrix file, merged in the one order of ``flows.matrix`` (the typed options on top)."""
    from flows.matrix import job_cells, read_matrix
    from flows.params import ParameterError

    o = ctx.params
    given = {name: o[name] for name in _CELL_OPTIONS if _given(ctx, name)}
    method = _abs_overrides(
        o["alpha"],
        o["beta"],
        o["top_k"],
        o["n_crops"],
        o["m"],
        o["tau"],
        o["tau_sample"],
        o["seed"],
        o["max_image_side"],
    )
    given["abs_config"] = method  # dict-valued: merged key by key, so an empty one overrides nothing
    given["layout_options"] = _parse_kv(o["option"])
    models: list[dict] = []
    if o["clip_model"] or o["clip_pretrained"]:
        names = o["clip_model"] or [None]
        for name, tag in zip(
            names, _per_dataset(o["clip_pretrained"], len(names), "--clip-pretrained", of="--clip-model")
        ):
            models.append({k: v for k, v in (("clip_model", name), ("clip_pretrained", tag)) if v is not None})
    datasets: list[dict] = []
    if o["dataset"]:
        n = len(o["dataset"])
        for values in zip(
            o["dataset"],
            _per_dataset(o["source"], n, "--source"),
            _per_dataset(o["layout"], n, "--layout"),
            _per_dataset(o["descriptions"], n, "--descriptions"),
        ):
            datasets.append(
                {k: v for k, v in zip(("dataset", "source", "layout", "descriptions"), values) if v is not None}
            )
    if o["matrix"] is not None:
        return read_matrix(o["matrix"]).cells(given, extra_datasets=datasets, models=models)
    if not datasets:
        raise ParameterError("give --dataset NAME (and --source ...), or --matrix FILE")
    return job_cells(datasets, models, given=given)


def _run_matrix(params: list, root: str) -> None:
    """Every cell through the reevaluate flow; a table of every cell at the end (exit 1 if one failed)."""
    from flows.evaluate import reevaluate
    from tasks.results.catalog import run_query
    from tasks.results.formatting import format_table

    cells = [p.model_dump() for p in params]
    results = reevaluate(datasets=cells, root=root, raise_on_failure=False)
    import pyarrow as pa

    rows = []
    for p, r in zip(params, results):
        # a sweep cell: one row per point, saying whether it ran the models or came from stored features
        for name, run_id in (
            [(f"{r['job']} [{x['point']} <- {x['computed_by']}]", x["run_id"]) for x in r["points"]]
            if r.get("points")
            else [(r["job"], r.get("run_id"))]
        ):
            acc = {}
            if run_id:
                acc = {a["method"]: a for a in run_query(p.root, "accuracy", {"run_id": run_id}).to_pylist()}
            rows.append(
                {
                    "cell": name,
                    "status": r["status"],
                    "abs": (acc.get("abs") or {}).get("accuracy"),
                    "clip": (acc.get("clip") or {}).get("accuracy"),
                    "acc5_abs": (acc.get("abs") or {}).get("acc5"),
                    "n": (acc.get("abs") or {}).get("n"),
                    "regressed": _regression_cell(r),
                    "run_id": run_id or "",
                    "error": (r.get("error") or "")[:60],
                }
            )
    typer.echo("")
    typer.echo(f"{len(results)} cells ({sum(r['status'] == 'completed' for r in results)} completed):")
    typer.echo(format_table(pa.Table.from_pylist(rows)))
    for r in results:
        for line in regression_lines(r.get("regressions") or []):
            typer.echo(f"{r['job']}: {line}")
    if any(r["status"] != "completed" for r in results):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------ models
@app.command()
def models(
    all_tags: bool = typer.Option(
        False, "--all", help="Also list architectures ABS cannot split (ResNets, timm towers)."
    ),
) -> None:
    """The open_clip architectures with their pretrained tags, and the DINO models ABS can use."""
    import open_clip
    import timm

    from abs_model.model_configs import dino_configs, register_clip_configs

    register_clip_configs()
    tags: dict[str, list[str]] = {}
    for name, tag in open_clip.list_pretrained():
        tags.setdefault(name, []).append(tag)
    typer.echo("CLIP (open_clip; --clip-model NAME --clip-pretrained TAG):")
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision = cfg.get("vision_cfg", {})
        usable = isinstance(vision.get("layers"), int) and not vision.get("timm_model_name")
        if not usable and not all_tags:
            continue
        note = "" if usable else "  (not a plain ViT: ABS cannot split it)"
        shown = ", ".join(tags.get(name, [])) or "no pretrained tags (checkpoint path or random)"
        typer.echo(f"  {name}: {shown}{note}")
    typer.echo("DINO (timm; --dino-model NAME --dino-pretrained timm):")
    for name in sorted(set(dino_configs()) | set(timm.list_models("vit_*_patch16_224.dino", pretrained=True))):
        typer.echo(f"  {name}")
    typer.echo(
        "ABS needs a DINO ViT with a 14x14 patch grid (patch 16 at 224 px; the shipped abs-micro-dino: "
        "patch 4 at 56 px). Shipped random-weight configs: abs-tiny-* (tests, demo), abs-micro-* (rehearsals)."
    )


# ------------------------------------------------------------------------------ status
@app.command()
def status(
    root: str = RootOpt,
    run_id: Optional[str] = typer.Option(None, "--run", help="One run (default: the 10 latest)."),
    latest: int = typer.Option(10, help="How many of the latest runs to show."),
) -> None:
    """Per run: running / completed / failed / interrupted, shards done, computed and reused, errors.

    Works while a run is in progress (from another terminal). A run whose process died (killed,
    machine lost) shows as interrupted: on its own machine at once, elsewhere once its heartbeat
    is 5 minutes old.
    """
    from flows import preflight as pf

    with _job_mistakes():
        pf.check_root_exists(root)
    from tasks.results.progress import run_progress

    try:
        rows = run_progress(root, run_id, latest=latest)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    if not rows:
        typer.echo(f"no runs under {root} (runs are recorded in {root}/runs/; pass --root or set ABS_EVAL_ROOT)")
        return
    for r in rows:
        typer.echo(f"{r['run_id']}  {r['status']:<11} {r['dataset']} x {r['model']}  [{r['deployment']}]")
        typer.echo(
            f"    shards {r['shards_done']}/{r['shards_total']} (computed {r['shards_computed']}, "
            f"reused {r['shards_reused']})  images {r['n_images']}  errors {r['n_error']}"
        )


# ------------------------------------------------------------------------------ analyze
@app.command()
def analyze(
    root: str = RootOpt,
    run_id: Optional[str] = typer.Option(
        None,
        "--run",
        help="The run to analyse (default: the latest completed "
        "run that kept its crop features, `run --keep-features`).",
    ),
    n_crops: Optional[str] = typer.Option(
        None,
        "--n-crops",
        help="N' values, e.g. 10,20,30 (<= the run's N): the "
        "first N' crops of each branch, a statistically equivalent sample.",
    ),
    m: Optional[str] = typer.Option(
        None, "--m", help="M' values, e.g. 10,25 (<= the run's M): each class's first M' descriptions."
    ),
    tau: Optional[str] = typer.Option(None, "--tau", help="Soft-matching temperatures, e.g. 0.01,0.05."),
    kinds: Optional[str] = typer.Option(None, "--kinds", help="Crop branches: raw, feature, both (comma-separated)."),
    plain_averaging: bool = typer.Option(
        False, "--plain-averaging", help="Also plain description averaging instead of soft matching."
    ),
    cross: bool = typer.Option(
        False,
        "--cross",
        help="Every combination of the values given (default: one setting at a time, the others as in the run).",
    ),
    device: str = typer.Option("cpu", help="Where the matching runs: cpu, cuda, auto."),
    report: Optional[bool] = typer.Option(
        None,
        "--report/--no-report",
        help="Rewrite the run's report (runs/run=<id>/report.md) with the sensitivity section "
        "(default: when this call computed a variant or the report lacks one).",
    ),
    publish: Optional[bool] = typer.Option(
        None,
        "--publish/--no-publish",
        help="Publish the rewritten report as one more version of the run's Prefect report artifact "
        "(default: when a Prefect API is configured, PREFECT_API_URL; --publish without one starts a "
        "temporary local server, ~45 s).",
    ),
) -> None:
    """ABS variants of a completed run, scored from the crop features it kept: no model runs again.

    Each variant (N' crops, one crop branch, M' descriptions, another tau, plain averaging) becomes
    prediction rows of its own: a run record named '<deployment>:<what differs>' and a config=
    partition hashed like any configuration, so every SQL view, regressions, export and the report
    read it. Variants that change no crop draw (tau, M', raw-only, feature-only) equal a fresh run
    with that setting and share its partition. Rerunning computes nothing already committed.
    Then the run's report is rewritten with the sensitivity section (and its Prefect artifact
    published again where an API is configured); the last lines say where it went.
    """
    from flows import preflight as pf

    with _job_mistakes():
        pf.check_root_exists(root)
        pf.check_writable_dir(root, "--root")
    from flows.analyze import VariantError, parse_axes, summary_rows
    from flows.analyze import analyze as analyze_run
    from tasks.results.formatting import format_table

    try:
        axes = parse_axes(n_crops, m, tau, kinds, plain_averaging)
        done = analyze_run(root, axes, run_id=run_id, cross=cross, device=device, report=report, publish=publish)
    except VariantError as exc:
        _fail(str(exc))
    import pyarrow as pa

    typer.echo(
        f"Variants of run {done.run.run_id} ({done.run.dataset} x {done.run.model}, N={done.run.abs.n_crops}, "
        f"M={done.run.abs.n_descriptions}, tau={done.run.abs.tau:g}), from its stored crop features:"
    )
    typer.echo(format_table(pa.Table.from_pylist(summary_rows(root, done))))
    if done.report is not None:
        r = done.report
        typer.echo(f"Report: {r.report} ({'rewritten with the sensitivity section' if r.written else r.note})")
        if r.written:
            typer.echo(f"Prefect report artifact: {r.artifact_key} (a new version)" if r.artifact_key else r.note)


# ------------------------------------------------------------------------------ sql
@sql_app.command("list")
def sql_list() -> None:
    """List the named queries, what each answers, and its parameters (-p NAME=VALUE)."""
    from tasks.results.catalog import list_queries, query_parameters

    for name, head in list_queries().items():
        typer.echo(f"{name:<20} {head}")
        params = query_parameters(name)
        if params:
            typer.echo(f"{'':<20} parameters: {params}")


@sql_app.command("run")
def sql_run(
    query: str = typer.Argument(..., help="A named query (see `abs-eval sql list`), a view name, or any SQL."),
    root: str = RootOpt,
    param: Optional[list[str]] = typer.Option(
        None, "--param", "-p", help="DuckDB variable KEY=VALUE (e.g. run_a=..., run_b=..., run_id=..., method=abs)."
    ),
    out: Optional[str] = typer.Option(
        None, "--out", help="Write to a file (.csv, .parquet, .json, .jsonl) or '-' for stdout."
    ),
    fmt: Optional[str] = typer.Option(
        None,
        "--format",
        help="csv, parquet, json or jsonl: the format of --out (needed for '-' and for names without a known suffix).",
    ),
    max_rows: int = typer.Option(50, help="Rows to print."),
) -> None:
    """Run a named query or any SQL over the results and print a table (or write a file)."""
    from flows import preflight as pf

    if fmt and not out:
        _fail("--format is the format of --out: add --out FILE (or --out - for stdout)")
    with _job_mistakes():
        pf.check_root_exists(root)
    out_format = ""
    if out:
        try:
            out_format = _output_format(out, fmt)
        except ValueError as exc:
            _fail(str(exc))
        with _job_mistakes():
            pf.check_writable_file(out, "--out")
    from tasks.results.catalog import QueryError, run_query
    from tasks.results.export import export
    from tasks.results.formatting import format_table

    try:
        t = run_query(root, query, _parse_kv(param))
    except (KeyError, ValueError, QueryError) as exc:
        _fail(str(exc.args[0]) if exc.args else str(exc))
    if t.num_rows == 0:
        _explain_empty(root, query, _parse_kv(param))
    if out == "-":
        sys.stdout.write(_to_text(t, out_format))
    elif out:
        typer.echo(f"wrote {t.num_rows} rows to {export(t, out, out_format)}")
    else:
        typer.echo(format_table(t, max_rows))


def _output_format(out: str, fmt: str | None) -> str:
    from tasks.results.export import FORMATS

    if fmt:
        if fmt not in set(FORMATS.values()):
            raise ValueError(f"unknown --format {fmt!r}: choose csv, parquet, json or jsonl")
        return fmt
    if out == "-":
        return "csv"
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"unknown output extension {suffix or '(none)'!r} in {out!r}: use .csv, .parquet, .json or "
            ".jsonl, or give --format"
        )
    return FORMATS[suffix]


def _to_text(t, fmt: str) -> str:
    import tempfile

    from tasks.results.export import export

    if fmt == "parquet":
        _fail("parquet is binary: write it to a file with --out FILE.parquet")
    with tempfile.TemporaryDirectory() as d:
        path = export(t, str(Path(d) / f"out.{fmt}"), fmt)
        return Path(path).read_text()


def _explain_empty(root: str, query: str, params: dict[str, str]) -> None:
    """Say why an answer is empty: no runs under this root, or a parameter the query needs."""
    from tasks.results.catalog import list_queries, query_parameters
    from tasks.results.runs import list_run_ids
    from tasks.store import Storage

    st = Storage(root)
    n_runs = len(list_run_ids(st))
    if n_runs == 0:
        typer.secho(
            f"note: no runs under {st.root_path} (read {st.root_path}/runs/); pass --root or set ABS_EVAL_ROOT",
            fg=typer.colors.YELLOW,
            err=True,
        )
        return
    if query.strip() in list_queries():
        required = [p for p in query_parameters(query.strip(), required_only=True) if p not in params]
        if required:
            typer.secho(
                f"note: query {query.strip()!r} needs {', '.join(f'-p {p}=...' for p in required)}",
                fg=typer.colors.YELLOW,
                err=True,
            )
            return
    typer.secho(f"note: empty answer over {n_runs} run(s) under {st.root}", fg=typer.colors.YELLOW, err=True)


@sql_app.command("catalog")
def sql_catalog(
    root: str = RootOpt,
    out: str = typer.Option("results.duckdb", "--out", help="DuckDB file to write."),
    relative: bool = typer.Option(False, help="Paths relative to the current folder (open the shell from there)."),
    allow_remote: bool = typer.Option(
        False,
        "--allow-remote",
        help="Write a catalog over an s3://, gs:// ... root (the duckdb shell then needs httpfs and credentials).",
    ),
) -> None:
    """Write a DuckDB catalog of the views: `duckdb results.duckdb -c "from accuracy"`."""
    from flows import preflight as pf

    with _job_mistakes():
        pf.check_root_exists(root)
        pf.check_writable_file(out, "--out", make_parents=True)
    from tasks.results.catalog import write_catalog

    try:
        path = write_catalog(root, out, relative=relative, allow_remote=allow_remote)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f'wrote {path}; try: duckdb {path} -c "from accuracy"')


# ------------------------------------------------------------------------------ report
@app.command()
def report(
    run_id: str = typer.Argument(..., help="Run id (see `abs-eval status`)."),
    root: str = RootOpt,
    previous: Optional[str] = typer.Option(None, help="Compare with this run (default: previous of the deployment)."),
    gallery: int = typer.Option(defaults.GALLERY_SIZE, help="Gallery images per kind."),
) -> None:
    """(Re)write a run's markdown report, plots and gallery next to its run record."""
    from flows import preflight as pf

    with _job_mistakes():
        pf.check_root_exists(root)
        pf.check_writable_dir(root, "--root")
    from tasks.results.report import write_report
    from tasks.results.runs import read_run
    from tasks.store import Storage

    st = Storage(root)
    try:
        for rid in (run_id, previous):
            if rid:
                read_run(st, rid)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    m = write_report(root, run_id, previous_run_id=previous, gallery_size=gallery)
    typer.echo("\n".join(m.files))


# ------------------------------------------------------------------------------ export
@app.command("export")
def export_results(
    root: str = RootOpt,
    run_ids: Optional[list[str]] = typer.Option(
        None,
        "--run",
        help="A run to export (repeat for more; default: the latest completed run of each dataset x model).",
    ),
    out: str = typer.Option(
        "clip_benchmark_results",
        "--out",
        help="Folder for one JSON file per result, "
        "results.csv and configs/ (local or any fsspec URL), or '-' for JSON lines on stdout.",
    ),
    dataset_names: Optional[list[str]] = typer.Option(
        None,
        "--dataset-name",
        help="NAME=CB_NAME: write dataset NAME as CB_NAME (repeat for more; default: "
        "wds/NAME for a WebDataset, CLIP_benchmark's builtin name for a named layout, e.g. imagenet1k).",
    ),
) -> None:
    """Write results in CLIP_benchmark's format: one JSON per dataset x model x method (acc1, acc5,
    mean_per_class_recall, plus method, run and config; pretrained is WEIGHTS+METHOD, so each method
    is its own model_fullname), results.csv as `clip_benchmark build` makes it, configs/ per run."""
    from flows import preflight as pf

    with _job_mistakes():
        pf.check_root_exists(root)
        if out != "-":
            pf.check_writable_dir(out, "--out")
    from tasks.results.export import export_clip_benchmark, parse_dataset_names

    try:
        done = export_clip_benchmark(root, out, run_ids, dataset_names=parse_dataset_names(dataset_names or []))
    except ValueError as exc:  # ExportError, or a malformed --dataset-name: one line
        _fail(str(exc))
    if out != "-":
        typer.echo(f"wrote {len(done.results)} CLIP_benchmark results to {out}:")
        typer.echo("\n".join(f"  {p}" for p in done.files))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
