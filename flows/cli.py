"""The ``abs-eval`` command line: thin commands over the flows and tasks.

Every command that runs work goes through Prefect (a local ephemeral API unless
PREFECT_API_URL points at a server), so runs show up in the Prefect UI when one
is running. Analysis commands (``sql``, ``status``) only read the storage root.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="ABS (Attention-Based Selection) zero-shot CLIP evaluation: shard datasets, cache DINO attention "
    "and text embeddings, run ABS + baselines per shard with Prefect, analyse with DuckDB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
describe_app = typer.Typer(help="Import or generate the class descriptions ABS matches crops against.",
                           no_args_is_help=True)
sql_app = typer.Typer(help="DuckDB views and queries over the results (sql/).", no_args_is_help=True)
app.add_typer(describe_app, name="describe")
app.add_typer(sql_app, name="sql")

DEFAULT_ROOT = os.environ.get("ABS_EVAL_ROOT", "abs-output")
RootOpt = typer.Option(DEFAULT_ROOT, "--root", "-r", help="Storage root: a folder or any fsspec URL "
                       "(memory://, s3://bucket/x, gs://bucket/x). Env: ABS_EVAL_ROOT.")


@app.callback()
def _setup() -> None:
    # Offline-friendly Prefect defaults; an explicit environment always wins.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _parse_kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            _fail(f"expected KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


def _abs_overrides(alpha, beta, top_k, n_crops, m, tau, tau_sample, seed) -> dict:
    vals = dict(alpha=alpha, beta=beta, top_k=top_k, n_crops=n_crops, n_descriptions=m, tau=tau,
                tau_sample=tau_sample, seed=seed)
    return {k: v for k, v in vals.items() if v is not None}


# ------------------------------------------------------------------------------ demo
@app.command()
def demo(
    root: str = typer.Option("abs-output/demo", "--root", "-r", help="Where the demo writes everything."),
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
    from flows.evaluate import evaluate
    from tasks.catalog import format_table, run_query, write_catalog
    from tasks.storage import Storage
    from tasks.synthetic import demo_descriptions, write_demo_dataset

    st = Storage(root)
    src = st.url("demo-source")
    classes = write_demo_dataset(src, per_class=per_class)
    desc_path = st.url("demo-descriptions.json")
    with st.fs.open(st.path("demo-descriptions.json"), "w") as f:
        json.dump(demo_descriptions(classes), f, indent=1)
    out = evaluate(
        dataset="demo", source=src, layout="folder", root=root,
        clip_model="abs-tiny-vit-b16", clip_pretrained=None, dino_model="abs-tiny-dino-vit-b16", dino_pretrained=None,
        descriptions=desc_path, abs_config={"n_crops": n_crops, "n_descriptions": 8},
        images_per_shard=images_per_shard, deployment="demo",
    )
    table = run_query(root, "select method, n, n_error, correct, round(accuracy, 4) as accuracy, "
                            "round(ci_low, 4) as ci_low, round(ci_high, 4) as ci_high from accuracy "
                            f"where run_id = '{out['run_id']}' order by method")
    typer.echo("")
    typer.echo(f"Accuracy of run {out['run_id']} (from sql/ via DuckDB):")
    typer.echo(format_table(table))
    catalog = None
    if st.protocol in ("file", "local"):
        catalog = write_catalog(root, str(Path(st.path("results.duckdb"))))
    typer.echo("")
    typer.secho("The models had RANDOM weights (no downloads here), so accuracy is at chance level "
                f"(1/{len(classes)} = {1 / len(classes):.3f}).", fg=typer.colors.YELLOW)
    typer.echo(f"Report: {st.path(out['report'])}" if out.get("report") else "")
    if catalog:
        typer.echo(f"Query it:  .venv/bin/duckdb {catalog} -c \"from accuracy\"")
    typer.echo("Real weights (needs the internet once, for open_clip/timm downloads):\n"
               "  abs-eval run --dataset imagenet --layout imagenet --source /data/imagenet/val \\\n"
               "      --descriptions cupl_prompts.json --clip-model ViT-B-16 --clip-pretrained openai \\\n"
               "      --dino-model vit_base_patch16_224.dino --dino-pretrained timm")


# ------------------------------------------------------------------------------ shard
@app.command()
def shard(
    layout: str = typer.Argument(..., help="Dataset layout (see `abs-eval layouts`)."),
    source: str = typer.Argument(..., help="The dataset as downloaded: a folder or fsspec URL."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Name to store it under."),
    root: str = RootOpt,
    images_per_shard: int = typer.Option(1000, help="Images per Parquet shard."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Layout option KEY=VALUE (repeatable)."),
) -> None:
    """Shard a dataset into Parquet under the root (resumable; bad files become error rows)."""
    from tasks.shard import shard_dataset

    try:
        m = shard_dataset(layout, source, root, dataset, images_per_shard, layout_options=_parse_kv(option))
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"{dataset}: {m.n_total} images ({m.n_ok} ok, {m.n_error} error rows) in {len(m.shards)} shards; "
               f"{len(m.written)} written, {len(m.skipped)} already committed")
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
    m: int = typer.Option(50, help="Keep at most M descriptions per class."),
) -> None:
    """Import descriptions, validate them against the dataset's classes, and store them."""
    from tasks.descriptions import DescriptionError, import_descriptions, write_descriptions
    from tasks.shard import read_dataset_info

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
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key "
                                    "(never printed or stored)."),
    m: int = typer.Option(50, help="Distinct descriptions per class."),
    seed: int = typer.Option(0), temperature: float = typer.Option(0.99), workers: int = typer.Option(1),
) -> None:
    """Generate CuPL-style descriptions with an LLM (resumable class by class)."""
    from tasks.descriptions import DescriptionError, generate_descriptions
    from tasks.shard import read_dataset_info

    try:
        info = read_dataset_info(root, dataset)
        ds = generate_descriptions(list(info.text_classnames), root, name or dataset, base_url=base_url, model=model,
                                   api_key_env=api_key_env, m=m, seed=seed, temperature=temperature, workers=workers)
    except (DescriptionError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(ds.summary())


# ------------------------------------------------------------------------------ run
@app.command()
def run(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name under the root."),
    source: Optional[str] = typer.Option(None, help="Dataset as downloaded (shards it first; omit to reuse shards)."),
    layout: str = typer.Option("folder", help="Layout of --source (see `abs-eval layouts`)."),
    root: str = RootOpt,
    descriptions: Optional[str] = typer.Option(None, help="Description file to import (omit: use the stored set)."),
    descriptions_name: Optional[str] = typer.Option(None, help="Stored description set (default: dataset name)."),
    clip_model: str = typer.Option("ViT-B-16", help="open_clip ViT name."),
    clip_pretrained: Optional[str] = typer.Option("openai", help="open_clip tag, checkpoint path, or 'random'."),
    dino_model: str = typer.Option("vit_base_patch16_224.dino", help="timm DINO ViT name."),
    dino_pretrained: Optional[str] = typer.Option("timm", help="'timm' (hub weights), a checkpoint path, or 'random'."),
    alpha: Optional[float] = typer.Option(None), beta: Optional[float] = typer.Option(None),
    top_k: Optional[int] = typer.Option(None, help="K (default 20)."),
    n_crops: Optional[int] = typer.Option(None, help="N crops per branch (default 60)."),
    m: Optional[int] = typer.Option(None, help="M descriptions per class (default 50)."),
    tau: Optional[float] = typer.Option(None), tau_sample: Optional[float] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    images_per_shard: int = typer.Option(1000),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    precision: str = typer.Option("auto", help="auto (bf16 on cuda, fp32 on cpu), fp32, bf16, fp16."),
    runner: str = typer.Option("threads", help="threads, dask or ray."),
    workers: int = typer.Option(1, help="Parallel shard tasks (threads or Dask worker processes)."),
    keep_features: bool = typer.Option(False, help="Also store crop features (re-score without images)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the CLIP trunk/head: ~30 s once, "
                                 "then ~8-20% faster; worth it for long runs."),
    deployment: str = typer.Option("manual", help="Label runs for comparison with the previous one."),
) -> None:
    """Evaluate ABS and the baselines on one dataset (resumes whatever was committed)."""
    from abs_model import WeightsUnavailableError
    from flows.evaluate import ParameterError, evaluate
    from tasks.catalog import format_table, run_query
    from tasks.descriptions import DescriptionError
    from tasks.pipeline import EvaluationError

    rnd = lambda p: None if p in (None, "random") else p  # noqa: E731
    try:
        out = evaluate(
            dataset=dataset, source=source, layout=layout, root=root, clip_model=clip_model,
            clip_pretrained=rnd(clip_pretrained), dino_model=dino_model, dino_pretrained=rnd(dino_pretrained),
            descriptions=descriptions, descriptions_name=descriptions_name,
            abs_config=_abs_overrides(alpha, beta, top_k, n_crops, m, tau, tau_sample, seed),
            images_per_shard=images_per_shard, device=device, precision=precision, runner=runner, workers=workers,
            keep_features=keep_features, compile=compile, deployment=deployment,
        )
    except (ParameterError, EvaluationError, WeightsUnavailableError, DescriptionError) as exc:
        _fail(str(exc))
    typer.echo(format_table(run_query(root, "accuracy", {"run_id": out["run_id"]})))


# ------------------------------------------------------------------------------ status
@app.command()
def status(
    root: str = RootOpt,
    run_id: Optional[str] = typer.Option(None, "--run", help="One run (default: the 10 latest)."),
) -> None:
    """Shards done / total and errors so far, per run (works while a run is in progress)."""
    from tasks.progress import run_progress

    rows = run_progress(root, run_id)
    if not rows:
        typer.echo(f"no runs under {root}")
        return
    for r in rows:
        typer.echo(f"{r['run_id']}  {r['status']:<10} {r['dataset']} x {r['model']}  shards {r['shards_done']}/"
                   f"{r['shards_total']}  images {r['n_images']}  errors {r['n_error']}")


# ------------------------------------------------------------------------------ sql
@sql_app.command("list")
def sql_list() -> None:
    """List the named queries."""
    from tasks.catalog import list_queries

    for name, head in list_queries().items():
        typer.echo(f"{name:<20} {head}")


@sql_app.command("run")
def sql_run(
    query: str = typer.Argument(..., help="A named query (see `abs-eval sql list`), a view name, or any SQL."),
    root: str = RootOpt,
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="DuckDB variable KEY=VALUE "
                                              "(e.g. run_a=..., run_b=..., run_id=..., method=abs)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write to a file (.csv, .parquet, .json, .jsonl)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Output format when --out has no suffix."),
    max_rows: int = typer.Option(50, help="Rows to print."),
) -> None:
    """Run a named query or any SQL over the results and print a table (or write a file)."""
    from tasks.catalog import export, format_table, run_query

    try:
        t = run_query(root, query, _parse_kv(param))
    except KeyError as exc:
        _fail(str(exc.args[0]) if exc.args else str(exc))
    if out:
        typer.echo(f"wrote {t.num_rows} rows to {export(t, out, fmt)}")
    else:
        typer.echo(format_table(t, max_rows))


@sql_app.command("catalog")
def sql_catalog(
    root: str = RootOpt,
    out: str = typer.Option("results.duckdb", "--out", "-o", help="DuckDB file to write."),
    relative: bool = typer.Option(False, help="Paths relative to the current folder (open the shell from there)."),
) -> None:
    """Write a DuckDB catalog of the views: `duckdb results.duckdb -c "from accuracy"`."""
    from tasks.catalog import write_catalog

    path = write_catalog(root, out, relative=relative)
    typer.echo(f"wrote {path}; try: duckdb {path} -c \"from accuracy\"")


# ------------------------------------------------------------------------------ report
@app.command()
def report(
    run_id: str = typer.Argument(..., help="Run id (see `abs-eval status`)."),
    root: str = RootOpt,
    previous: Optional[str] = typer.Option(None, help="Compare with this run (default: previous of the deployment)."),
    gallery: int = typer.Option(4, help="Gallery images per kind."),
) -> None:
    """(Re)write a run's markdown report, plots and gallery next to its run record."""
    from tasks.report import write_report

    m = write_report(root, run_id, previous_run_id=previous, gallery_size=gallery)
    typer.echo("\n".join(m.files))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
