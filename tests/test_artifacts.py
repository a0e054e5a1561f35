"""What the Prefect UI shows of a run: the accuracy table made for reading, live progress, the report's
figures and its sensitivity section (issues 20 and 21).

The rows, descriptions and progress texts are checked as plain functions (``tasks.results.artifacts``);
then on a real temporary Prefect server: two evaluations of the same deployment with other N (the second
keeping its crop features), ``abs-eval analyze`` on the second, and what Prefect and the report hold:
the table artifact's columns and description, the progress artifact of each run (on the ``evaluate``
flow run, 100% at the end), the ``variant_accuracy`` view against the ``accuracy`` view, the
sensitivity figure and table, and the gallery's note for a variant no fresh run equals.
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from common import TINY_FLOW_PARAMS, demo_source
from PIL import Image

from tasks.results import artifacts
from tasks.results.report import MAX_PLOT_PX, MIN_FONT_PT, methods_figure, per_class_figure, sensitivity_figure

ACC = [
    {
        "method": "abs",
        "accuracy": 0.125,
        "ci_low": 0.081,
        "ci_high": 0.187,
        "n": 200,
        "n_error": 2,
        "acc5": 0.5,
        "mean_per_class_recall": 0.12,
    },
    {
        "method": "clip",
        "accuracy": 0.1,
        "ci_low": 0.06,
        "ci_high": 0.15,
        "n": 200,
        "n_error": 2,
        "acc5": None,
        "mean_per_class_recall": 0.1,
    },
]
COMPARISON = [
    {"method": "abs", "accuracy_a": 0.111, "accuracy_b": 0.125, "delta": 0.014, "n_fixed": 4, "n_broken": 2},
    {"method": "clip", "accuracy_a": 0.2, "accuracy_b": 0.1, "delta": -0.1, "n_fixed": 0, "n_broken": 20},
]
TESTS = [
    {"method": "abs", "scope": "method", "regressed": False, "significant": False, "change": 0.014},
    {"method": "clip", "scope": "method", "regressed": True, "significant": True, "change": -0.1},
]
SETTINGS = [{"setting": "abs.n_crops", "before": 2, "after": 60}]


def test_table_rows_are_the_reports_numbers_in_eight_short_columns():
    rows = artifacts.accuracy_table_rows(ACC, COMPARISON, TESTS, SETTINGS, "r1")
    assert [list(r) for r in rows] == [list(artifacts.ACCURACY_TABLE_COLUMNS)] * 2
    abs_row, clip_row = rows
    assert (abs_row["accuracy"], abs_row["95% CI"], abs_row["n"], abs_row["errors"]) == ("12.5%", "8.1–18.7%", 200, 2)
    assert (abs_row["top-5"], abs_row["mean class recall"], clip_row["top-5"]) == ("50.0%", "12.0%", "–")
    # N=2 against N=60 never reads as the method's own change
    assert abs_row["vs previous run"] == "+1.4 pp, settings differ"
    assert clip_row["vs previous run"] == "⚠ -10.0 pp drop, settings differ"
    same = artifacts.accuracy_table_rows(ACC, COMPARISON, TESTS, [], "r1")
    assert [r["vs previous run"] for r in same] == ["+1.4 pp (4 fixed, 2 broken)", "⚠ -10.0 pp drop"]
    assert {r["vs previous run"] for r in artifacts.accuracy_table_rows(ACC)} == {"no previous run"}
    assert (
        artifacts.accuracy_table_rows(ACC, COMPARISON[:1], TESTS, [], "r1")[1]["vs previous run"] == "new in this run"
    )
    # every cell is short (the UI cuts cells, it does not wrap them): no snake_case dump of 19 columns
    assert max(len(str(v)) for r in rows + same for v in r.values()) <= 32


def test_description_puts_the_run_id_first_and_names_what_differs():
    run = {
        "run_id": "20261203T1200Z-ab",
        "dataset": "imagenet",
        "model": "ViT-B-16/openai",
        "config": "c0ffee",
        "deployment": "weekly",
        "status": "completed",
        "n_images": 50000,
        "n_error": 3,
    }
    text = artifacts.accuracy_table_description(run, "20261126T1200Z-cd", SETTINGS)
    assert text.startswith("Run `20261203T1200Z-ab`: accuracy by method, imagenet x ViT-B-16/openai")
    assert "config `c0ffee`" in text and "deployment `weekly`" in text and "50000 images, 3 unreadable" in text
    assert "**settings differ**: abs.n_crops 2 → 60" in text
    assert "same settings" in artifacts.accuracy_table_description(run, "20261126T1200Z-cd", [])
    many = [{"setting": f"abs.s{i}", "before": i, "after": i + 1} for i in range(6)]
    assert artifacts.settings_text(many).endswith("2 more")


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_counts_images_rate_and_time_left_and_publishes_at_most_every_few_seconds():
    clock = Clock()
    p = artifacts.RunProgress(
        "r1", "imagenet", "ViT-B-16", shards_total=4, images_total=400, min_interval=5.0, clock=clock
    )
    assert p.percent == 0 and p.due() and p.rate() is None
    p.published()
    clock.t += 1
    p.shard_done({"n_images": 100, "n_error": 0, "computed": False})  # reused: instant, not in the rate
    assert p.rate() is None and p.seconds_left() is None and p.percent == 25 and not p.due()
    clock.t += 9
    p.shard_done({"n_images": 100, "n_error": 1, "computed": True})
    p.add_counts([{"method": "abs", "n_ok": 99, "n_correct": 33}, {"method": "clip", "n_ok": 99, "n_correct": 11}])
    assert p.rate() == pytest.approx(10.0) and p.seconds_left() == pytest.approx(20.0) and p.percent == 50
    assert p.due()
    p.published()
    clock.t += 2
    text = p.description(["clip", "abs"])
    assert text.startswith("Run `r1` (imagenet x ViT-B-16): 2/4 shards, 200/400 images (1 shards reused")
    assert "images/s" in text and "left" in text and "1 unreadable images" in text
    assert "Accuracy so far (completed shards, not final): clip 11.1%, abs 33.3%" in text
    p.shard_done({"n_images": 100, "n_error": 0, "computed": True})
    assert not p.due()  # 2 s after the last update
    # from the first computed shard's commit on (10 s): the start-up before it is not the rate
    assert p.rate() == pytest.approx(100 / 2) and p.seconds_left() == pytest.approx(100 / 50)
    clock.t += 4
    p.shard_done({"n_images": 100, "n_error": 0, "computed": True})
    assert p.finished and p.due() and p.percent == 100 and p.seconds_left() == 0
    assert "done, 4/4 shards, 400/400 images" in p.description()


def _texts(fig):
    from matplotlib.text import Text

    fig.canvas.draw()
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _png_width(fig) -> int:
    from tasks.results.report.plots import _png

    return Image.open(io.BytesIO(_png(fig))).size[0]


VARIANT_ROWS = [
    {
        "method": "abs",
        "variant": v,
        "varied": f,
        "is_run": f == "run",
        "accuracy": a,
        "ci_low": a - 0.05,
        "ci_high": a + 0.05,
        "n_crops": n,
        "n_descriptions": m,
        "tau": t,
        "crop_kinds": k,
        "matching": mt,
        "equals_fresh_run": f not in ("n_crops", "matching"),
    }
    for v, f, a, n, m, t, k, mt in (
        ("run", "run", 0.6, 60, 50, 0.03, "both", "soft"),
        ("n_crops=10", "n_crops", 0.5, 10, 50, 0.03, "both", "soft"),
        ("n_crops=30", "n_crops", 0.55, 30, 50, 0.03, "both", "soft"),
        ("n_descriptions=10", "n_descriptions", 0.52, 60, 10, 0.03, "both", "soft"),
        ("tau=0.01", "tau", 0.58, 60, 50, 0.01, "both", "soft"),
        ("tau=0.1", "tau", 0.4, 60, 50, 0.1, "both", "soft"),
        ("crop_kinds=raw", "crop_kinds", 0.57, 60, 50, 0.03, "raw", "soft"),
        ("crop_kinds=feature", "crop_kinds", 0.56, 60, 50, 0.03, "feature", "soft"),
        ("matching=average", "matching", 0.45, 60, 50, 0.03, "both", "average"),
    )
]


def test_figures_keep_text_at_10_pt_and_fit_the_ui_width():
    many = [
        {"method": m, "label": c, "class_name": f"class number {c}", "accuracy": (c % 7) / 7}
        for m in ("abs", "clip", "clip-e", "cupl")
        for c in range(30)
    ]
    figs = {
        "methods": methods_figure(
            ACC,
            [{"method": "abs", "accuracy_a": 0.1, "ci_low_a": 0.05, "ci_high_a": 0.2}],
            "20261203T120000Z-abcdef12",
            "20261126T120000Z-abcdef12",
            12,
            True,
        ),
        "per_class": per_class_figure(many, 30),
        "sensitivity": sensitivity_figure(VARIANT_ROWS, {"method": "clip", "accuracy": 0.3}),
    }
    for name, fig in figs.items():
        sizes = {t.get_text(): t.get_fontsize() for t in _texts(fig)}
        assert sizes and min(sizes.values()) >= MIN_FONT_PT, (name, {k: v for k, v in sizes.items() if v < MIN_FONT_PT})
        assert _png_width(fig) <= MAX_PLOT_PX, name
    legend = [t.get_text() for t in figs["methods"].axes[0].get_legend().get_texts()]
    assert "previous run, other settings" in legend
    # the sensitivity figure: three curves and the ablation bars, the paper's values marked
    ax_n, ax_m, ax_tau, ax_bars = figs["sensitivity"].axes
    for ax, paper in ((ax_n, 60), (ax_m, 50), (ax_tau, 0.03)):
        assert any(
            ln.get_label() == f"paper: {paper:g}" and list(ln.get_xdata()) == [paper, paper] for ln in ax.get_lines()
        )
    assert [t.get_text().split("\n")[:2] for t in ax_bars.get_xticklabels()] == [
        ["both", "soft"],
        ["raw", "soft"],
        ["feature", "soft"],
        ["both", "average"],
    ]
    assert "(paper)" in ax_bars.get_xticklabels()[0].get_text()


# ---------------------------------------------------------------------- on a real Prefect server


@pytest.fixture(scope="module")
def runs(prefect_server, tmp_path_factory):
    """Run 1 (N=3), run 2 (N=6, features kept), both deployment 'uitest'; then variants of run 2."""
    from flows.analyze import analyze, parse_axes
    from flows.evaluate import evaluate

    images, desc = demo_source(tmp_path_factory, per_class=2)
    root = str(tmp_path_factory.mktemp("root-artifacts"))
    common = dict(
        TINY_FLOW_PARAMS,
        dataset="demo",
        root=root,
        images_per_shard=8,
        deployment="uitest",
        source=images,
        descriptions=desc,
    )
    first = evaluate(dict(common, abs_config={"n_crops": 3, "top_k": 5, "n_descriptions": 6}))
    second = evaluate(dict(common, abs_config={"n_crops": 6, "top_k": 5, "n_descriptions": 6}, keep_features=True))
    done = analyze(root, parse_axes(n_crops="3", m="3", tau="0.1", kinds="raw", plain_averaging=True))
    return root, first, second, done


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return asyncio.run(read())


def test_table_artifact_is_made_for_reading(runs):
    _, first, second, _ = runs
    arts = {a.description.split("`")[1]: a for a in _artifacts("accuracy-uitest-demo-abs-tiny-vit-b16")}
    assert set(arts) >= {first["run_id"], second["run_id"]}  # one version per run, run id first
    art = arts[second["run_id"]]
    assert art.type == "table" and art.flow_run_id is not None and str(art.flow_run_id) == second["flow_run_id"]
    rows = json.loads(art.data) if isinstance(art.data, str) else art.data
    assert [list(r) for r in rows] == [list(artifacts.ACCURACY_TABLE_COLUMNS)] * len(rows)
    assert {r["method"] for r in rows} == {"abs", "clip", "cupl"}
    assert all(r["accuracy"].endswith("%") and r["vs previous run"].endswith("settings differ") for r in rows)
    assert art.description.startswith(f"Run `{second['run_id']}`: accuracy by method, demo x abs-tiny-vit-b16")
    assert "abs.n_crops 3 → 6" in art.description
    assert "no previous run" in json.dumps(json.loads(arts[first["run_id"]].data), ensure_ascii=False)
    report = [a for a in _artifacts("report-uitest-demo-abs-tiny-vit-b16") if second["run_id"] in a.description][0]
    assert report.description.startswith(f"Run `{second['run_id']}`: evaluation report")


def test_progress_artifact_per_run_on_the_evaluate_flow_run(runs):
    _, first, second, _ = runs
    arts = _artifacts("progress-demo-abs-tiny-vit-b16")
    by_run = {a.description.split("`")[1]: a for a in arts}
    for out in (first, second):
        art = by_run[out["run_id"]]
        assert art.type == "progress" and float(art.data) == 100.0
        assert str(art.flow_run_id) == out["flow_run_id"]  # beside the report, not on the evaluate-shards subflow
        assert "done, 3/3 shards, 24/24 images" in art.description and "images/s" in art.description
        assert "Accuracy so far" in art.description
        # what it cost, measured in the run and logged by the evaluate-shards subflow (flows.live.ProgressCost)
        costs = _cost_lines(out["flow_run_id"], out["run_id"])
        assert len(costs) == 1, costs
        updates, shards, seconds = costs[0]
        assert shards == 3 and 2 <= updates <= 4 and seconds > 0  # created, then at most one per shard


def _cost_lines(flow_run_id: str, run_id: str) -> list[tuple[int, int, float]]:
    """(updates, shards, seconds) of every cost line the subflows of ``flow_run_id`` logged for ``run_id``."""
    import re
    import time
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    line = re.compile(rf"progress artifact of run {re.escape(run_id)}: (\d+) updates over (\d+) shards, ([\d.]+) s ")

    async def read() -> list[str]:
        async with get_client() as client:
            subs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(flow_run_id)]))
            )
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[f.id for f in subs])), limit=200
            )
            return [log.message for log in logs]

    found: list[tuple[int, int, float]] = []
    for _ in range(20):  # run logs reach the API in batches (every ~2 s): wait for the batch, not for a time
        found = [(int(m[1]), int(m[2]), float(m[3])) for msg in asyncio.run(read()) for m in [line.search(msg)] if m]
        if found:
            break
        time.sleep(0.5)
    return found


def test_variant_accuracy_view_and_the_reports_sensitivity_section(runs):
    from tasks.results.catalog import run_query
    from tasks.results.report import write_report

    root, first, second, done = runs
    rows = run_query(root, "variant_accuracy", {"run_id": second["run_id"], "method": "abs"}).to_pylist()
    names = {v.name for v in done.variants}
    assert {r["variant"] for r in rows} == names | {"run"}
    assert {r["varied"] for r in rows} == {"run", "n_crops", "n_descriptions", "tau", "crop_kinds", "matching"}
    acc = {r["run_id"]: r for r in run_query(root, "accuracy", {"method": "abs"}).to_pylist() if r["method"] == "abs"}
    for r in rows:  # the accuracy view's numbers, per variant run
        a = acc[r["run_id"]]
        assert (r["accuracy"], r["ci_low"], r["ci_high"], r["n"]) == (a["accuracy"], a["ci_low"], a["ci_high"], a["n"])
    own = next(r for r in rows if r["is_run"])
    assert (own["n_crops"], own["crop_kinds"], own["n_descriptions"], own["matching"]) == (6, "both", 6, "soft")
    prefix = next(r for r in rows if r["variant"] == "n_crops=3")
    assert prefix["n_crops"] == 3 and not prefix["equals_fresh_run"]
    assert run_query(root, "variant_accuracy", {"run_id": first["run_id"]}).num_rows == 0  # another partition

    m = write_report(root, second["run_id"], gallery_size=0)
    assert m.plots[-1].endswith("/sensitivity.png")
    section = m.markdown.split("## Sensitivity and ablations (ABS variants)")[1].split("## Gallery")[0]
    assert "![abs accuracy vs N', M', tau; ablations](sensitivity.png)" in section
    assert "| this run |" in section and all(f"| {n} |" in section for n in names)
    assert f"abs-eval sql run variant_accuracy -p run_id={second['run_id']} -p method=abs" in section
    art = m.artifact_markdown.split("## Sensitivity and ablations (ABS variants)")[1].split("## Gallery")[0]
    assert "](data:image/png;base64," in art  # in the Prefect artifact too
    # the first run has no variants of its own predictions: the section says how to get them
    m1 = write_report(root, first["run_id"], gallery_size=0)
    assert "No ABS variants of this run's predictions yet" in m1.markdown and "abs-eval analyze --root" in m1.markdown
    assert not any(p.endswith("sensitivity.png") for p in m1.plots)


def test_gallery_of_a_prefix_or_averaging_variant_says_why_no_deciding_crops(runs):
    from tasks.results.report import write_report

    _, _, second, done = runs
    by_name = {v.name: v.run_id for v in done.variants}
    prefix = write_report(runs[0], by_name["n_crops=3"], gallery_size=1)
    avg = write_report(runs[0], by_name["matching=average"], gallery_size=1)
    for m, words in (
        (prefix, "keeps the first 3 of the 6 crops of each branch"),
        (avg, "averages the descriptions plainly"),
    ):
        if not m.gallery_items:
            pytest.skip("random weights: abs and clip agree on every image")
        assert f"of run `{second['run_id']}`" in m.markdown and words in m.markdown
        assert "inputs changed" not in m.markdown


def test_the_artifact_texts_import_without_prefect_or_torch():
    """The flow hands Prefect what this module builds; the module itself is the read side's (no Prefect, no torch)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\nimport tasks.results.artifacts\n"
        "print(sorted(m for m in ('torch', 'prefect', 'flows') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
