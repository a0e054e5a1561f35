"""The report's text: markdown tables, number formats, every section of ``report.md``, the
caption under each gallery image, and the same report with its images embedded for Prefect.

Why the text is one function of a :class:`_Context` and an ``image`` renderer: ``report.md``
(relative image links) and the Prefect artifact (images as ``data:`` URIs, or their storage
paths past :data:`tasks.results.report.ARTIFACT_MAX_BYTES`) must say exactly the same, so both
are the same call with another way to show a picture.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.defaults import ABS as ABS_DEFAULT
from tasks.store import Storage

from .explain import DECIDING_CROPS, DECIDING_DESCRIPTIONS, _crop_text
from .gallery import EMPHASISED_CROPS
from .reads import _method_key
from .sensitivity import abs_rows, panels


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _pp(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} pp"


def _p(x: float | None) -> str:
    """A p-value: 3 decimals, scientific notation below 0.001."""
    if x is None:
        return "–"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


#: The flag a significant drop gets in the report (the comparison table and the banner on top).
DROP_FLAG = "⚠ significant drop"


def _verdict(test: Mapping[str, Any] | None) -> str:
    """What the McNemar test says about a method's change (rows of the regressions query)."""
    if not test:
        return "–"
    if test["regressed"]:
        return f"**{DROP_FLAG}**"
    if test["significant"] and (test.get("change") or 0) > 0:
        return "significant gain"
    return "within chance"


def _ci(row: Mapping[str, Any], lo: str = "ci_low", hi: str = "ci_high") -> str:
    if row.get(lo) is None:
        return "–"
    return f"[{100 * row[lo]:.1f}, {100 * row[hi]:.1f}]"


def _cell(v: Any) -> str:
    return ("–" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, Any]]) -> str:
    """A markdown table; ``columns`` are (header, key or function of the row)."""
    if not rows:
        return "_none_\n"
    out = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_cell(f(r) if callable(f) else r.get(f)) for _, f in columns) + " |")
    return "\n".join(out) + "\n"


@dataclass
class _Context:
    """Everything the markdown is made of (query rows, the run, where it lives)."""

    run: Mapping[str, Any]
    prev_id: str | None
    accuracy: list[dict[str, Any]]
    extremes: list[dict[str, Any]]
    confusions: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    comparison: list[dict[str, Any]]
    class_changes: list[dict[str, Any]]
    flips: list[dict[str, Any]]
    shown: list[dict[str, Any]]
    base: str
    root: str
    n_classes: int | None
    n_classes_source: str
    regressions: list[dict[str, Any]] = field(default_factory=list)
    #: ``tasks.results.runs.setting_differences`` of (previous run, this run): what changed, by name
    settings: list[dict[str, Any]] = field(default_factory=list)
    #: why no gallery image shows its deciding crops and descriptions (models not loaded ...), or None
    explain_note: str | None = None
    #: rows of the variant_accuracy query (every method): the sensitivity section
    variants: list[dict[str, Any]] = field(default_factory=list)

    def method_tests(self) -> dict[str, dict[str, Any]]:
        """The regressions rows of scope 'method', by method."""
        return {r["method"]: r for r in self.regressions if r["scope"] == "method"}

    def regressed(self, scope: str = "method") -> list[dict[str, Any]]:
        """Rows of ``scope`` whose accuracy dropped significantly (method order, then most significant)."""
        rows = [r for r in self.regressions if r["scope"] == scope and r["regressed"]]
        return sorted(
            rows, key=lambda r: (_method_key(r["method"]), r["p_value"], r["label"] if r["label"] is not None else -1)
        )


def _both(r: Mapping[str, Any]) -> bool:
    """Both runs scored this method (a comparison row of a method one run lacks is no comparison)."""
    return r.get("accuracy_a") is not None and r.get("accuracy_b") is not None


def _absent(r: Mapping[str, Any]) -> str:
    return "absent from the previous run" if r.get("accuracy_a") is None else "absent from this run"


def _setting(v: Any) -> str:
    """A setting's value in the comparison table; a long one (a hash, a fingerprint) cut in the middle so the
    table fits the ~850 px the Prefect UI gives it (the full values: ``abs-eval sql run regressions``)."""
    if v is None:
        return "(none)"
    text = str(v)
    return f"`{text if len(text) <= 28 else text[:14] + '…' + text[-8:]}`"


def _sql_line(query: str, ctx: _Context, **params: Any) -> str:
    """The command line that reproduces a table of the report."""
    ps = "".join(f" -p {k}={v}" for k, v in params.items())
    return f"abs-eval sql run {query}{ps} --root {ctx.root}"


def _commands(*lines: str) -> str:
    """Commands as a fenced code block of their own.

    Why not inline code: the default Prefect UI renders inline code as inline-block, so a command of
    ~100 characters jumped to a line of its own and left ". Up to 5 ..." behind; a block reads the
    same in both UIs and in any markdown viewer, and copies whole."""
    return "```bash\n" + "\n".join(lines) + "\n```\n"


def _markdown(ctx: _Context, image: Callable[[str, str], str]) -> str:
    """The report; ``image(path relative to the root, alt text)`` renders each picture."""
    run, prev_id, base, run_id = ctx.run, ctx.prev_id, ctx.base, ctx.run["run_id"]
    out = [f"# Evaluation report: run `{run_id}`\n"]
    facts = [
        ("deployment", run.get("deployment")),
        ("dataset", run.get("dataset")),
        ("model", run.get("model")),
        ("config", run.get("config")),
        ("status", run.get("status")),
        ("started", run.get("started_at")),
        ("ended", run.get("ended_at")),
        ("CLIP", f"{run.get('clip_model')} / {run.get('clip_pretrained')}"),
        ("DINO", f"{run.get('dino_model')} / {run.get('dino_pretrained')}"),
        ("descriptions", run.get("descriptions_hash")),
        ("classes scored (C)", f"{ctx.n_classes} ({ctx.n_classes_source})" if ctx.n_classes else "unknown"),
        ("shards computed by this run", f"{run.get('shards_computed')} of {run.get('shards_total')}"),
    ]
    # a header row of its own, never an empty one (an empty header renders as a blank band)
    out.append(md_table([{"k": k, "v": v} for k, v in facts], [("run", "k"), (f"`{run_id}`", "v")]))
    dropped = ctx.regressed("method")
    if dropped:
        out.append(
            f"> **{DROP_FLAG} since the previous run `{prev_id}`** (exact McNemar test, p < 0.05, accuracy down):\n>"
        )
        for r in dropped:
            out.append(
                f"> - **{r['method']}**: {_pct(r['accuracy_a'])} → {_pct(r['accuracy_b'])} ({_pp(r['change'])}); "
                f"{r['n_broken']} images right → wrong, {r['n_fixed']} wrong → right, p = {_p(r['p_value'])}"
            )
        out.append(
            "> \n> Details: section *Comparison with the previous run*"
            + ("; **the settings differ** between the two runs (listed there)" if ctx.settings else "")
            + ".\n"
        )
        out.append(_commands(_sql_line("regressions", ctx, run_a=prev_id, run_b=run_id)))
    out.append(
        "All numbers below come from the SQL in `sql/` over the run's full prediction set (rows reused from an "
        "earlier run of the same config included); each section ends with the commands that print its tables "
        "(`abs-eval sql list` lists the queries).\n"
    )

    out.append("## Accuracy\n")
    out.append(
        'Accuracy is over the images that could be classified (ok); "errors as wrong" also counts '
        "unreadable images as wrong.\n"
    )
    # 8 short columns: the table fits the ~850 px the Prefect UI gives markdown at a 1,400 px window
    out.append(
        md_table(
            ctx.accuracy,
            [
                ("method", "method"),
                ("accuracy", lambda r: _pct(r["accuracy"])),
                ("95% CI", _ci),
                ("n", "n"),
                ("errors", "n_error"),
                ("top-5", lambda r: _pct(r.get("acc5"))),
                ("mean per-class recall", lambda r: _pct(r.get("mean_per_class_recall"))),
                ("errors as wrong", lambda r: _pct(r["accuracy_all"])),
            ],
        )
    )
    out.append(
        "_top-5: the true class among the 5 highest-scoring classes (ok images); mean per-class recall: the "
        "average over classes of each class's accuracy, so every class weighs the same (CLIP_benchmark's "
        "`acc5` and `mean_per_class_recall`; `abs-eval export` writes them in its format)._\n"
    )
    out.append(_commands(_sql_line("accuracy", ctx, run_id=run_id)))
    chance = (
        f"; dashed grey line: chance level 1/C = 1/{ctx.n_classes} = {_pct(1 / ctx.n_classes)}" if ctx.n_classes else ""
    )
    out.append("\n" + image(f"{base}/methods.png", "accuracy by method") + "\n")
    out.append(
        f"_Bars: accuracy per method; black whiskers: 95% Wilson interval"
        f"{f'; grey: the previous run `{prev_id}`' if ctx.comparison else ''}"
        f"{' (other settings, see the comparison below)' if ctx.comparison and ctx.settings else ''}{chance}. Methods whose intervals overlap "
        "are not clearly different on this many images._\n"
    )

    out.append("## Per-class accuracy: extremes\n")
    out.append("Up to 5 worst and 5 best classes per method; a class at 0% is never listed as best.\n")
    for method in sorted({r["method"] for r in ctx.extremes}, key=_method_key):
        rows = [r for r in ctx.extremes if r["method"] == method]
        out.append(f"**{method}**\n")
        out.append(
            md_table(
                rows,
                [
                    ("list", "extreme"),
                    ("#", "position"),
                    ("class", "class_name"),
                    ("ok images", "n_ok"),
                    ("accuracy", lambda r: _pct(r["accuracy"])),
                    ("95% CI", _ci),
                ],
            )
        )
        if not any(r["extreme"] == "best" for r in rows):
            out.append("_No best list: no class of this method is above 0% accuracy._\n")
    out.append("\n" + image(f"{base}/per_class_accuracy.png", "per-class accuracy") + "\n")
    out.append("_Per-class accuracy of every method, classes sorted by the first method's accuracy._\n")
    out.append(
        _commands(
            _sql_line("class_extremes", ctx, run_id=run_id, top_k=5),
            _sql_line("per_class_accuracy", ctx, run_id=run_id),
        )
    )

    out.append("## Most frequent confusions\n")
    shown_conf: list[dict[str, Any]] = []
    for method in sorted({r["method"] for r in ctx.confusions}, key=_method_key):
        shown_conf += [r for r in ctx.confusions if r["method"] == method][:5]  # the query orders by rank
    out.append("Up to 5 per method, most frequent first; equal counts share a rank.\n")
    out.append(
        md_table(
            shown_conf,
            [
                ("method", "method"),
                ("rank", "rank"),
                ("true class", "class_name"),
                ("predicted", "pred_name"),
                ("images", "n"),
                ("share of class", lambda r: _pct(r["share"])),
            ],
        )
    )
    out.append(_commands(_sql_line("confusions", ctx, run_id=run_id, top_k=5)))

    out.append("## Errors (images that could not be classified)\n")
    out.append(md_table(ctx.errors, [("status", "status"), ("images", "n_images"), ("example", "example_error")]))
    out.append("Counts per status, then every failing image:\n")
    out.append(_commands(_sql_line("error_counts", ctx, run_id=run_id), _sql_line("errors", ctx, run_id=run_id)))

    out.append("## Comparison with the previous run\n")
    if not prev_id:
        out.append(f"No earlier completed run of deployment `{run.get('deployment')}` on this dataset and model.\n")
    else:
        pair = {"run_a": prev_id, "run_b": run_id}
        tests = ctx.method_tests()
        out.append(
            f"Previous run: `{prev_id}` (before) vs `{run_id}` (this run). "
            "fixed = wrong before, right now; broken = the reverse. "
            "McNemar p: exact two-sided McNemar test of broken vs fixed over the images both runs classified "
            "(the chance of a split at least this uneven if the method had not changed); "
            f"{DROP_FLAG} = p < 0.05 and accuracy down.\n"
        )
        if ctx.settings:
            out.append(
                "**The settings differ** between the two runs, so a change may come from them rather than "
                "from a regression of the method (the verdicts below say *settings differ*):\n"
            )
            out.append(
                md_table(
                    ctx.settings,
                    [
                        ("setting", "setting"),
                        ("before", lambda r: _setting(r["before"])),
                        ("this run", lambda r: _setting(r["after"])),
                    ],
                )
            )
            out.append("")
        else:
            out.append("Same settings in both runs (method parameters, models and weights, descriptions, dataset).\n")
        out.append(
            md_table(
                ctx.comparison,
                [
                    ("method", "method"),
                    ("before", lambda r: _pct(r["accuracy_a"])),
                    ("now", lambda r: _pct(r["accuracy_b"])),
                    ("delta", lambda r: _pp(r["delta"])),
                    ("changed", "n_changed"),
                    ("fixed", "n_fixed"),
                    ("broken", "n_broken"),
                    ("McNemar p", lambda r: _p((tests.get(r["method"]) or {}).get("p_value")) if _both(r) else "-"),
                    (
                        "verdict",
                        lambda r: (
                            (_verdict(tests.get(r["method"])) + ("; settings differ" if ctx.settings else ""))
                            if _both(r)
                            else _absent(r)
                        ),
                    ),
                ],
            )
        )
        class_drops = ctx.regressed("class")
        if class_drops:
            out.append("\nClasses with a significant drop (p < 0.05, accuracy down):\n")
            out.append(
                md_table(
                    class_drops,
                    [
                        ("method", "method"),
                        ("class", "class_name"),
                        ("before", lambda r: _pct(r["accuracy_a"])),
                        ("now", lambda r: _pct(r["accuracy_b"])),
                        ("delta", lambda r: _pp(r["change"])),
                        ("broken", "n_broken"),
                        ("fixed", "n_fixed"),
                        ("McNemar p", lambda r: _p(r["p_value"])),
                    ],
                )
            )
        out.append("\nLargest per-class changes (up to 5 per method; unchanged classes left out):\n")
        out.append(
            md_table(
                [r for r in ctx.class_changes if r["delta"] != 0],
                [
                    ("method", "method"),
                    ("class", "class_name"),
                    ("before", lambda r: _pct(r["accuracy_a"])),
                    ("now", lambda r: _pct(r["accuracy_b"])),
                    ("delta", lambda r: _pp(r["delta"])),
                ],
            )
        )
        out.append(f"\nFlipped images: {len(ctx.flips)} (image x method); the first 20:\n")
        out.append(
            md_table(
                ctx.flips[:20],
                [
                    ("method", "method"),
                    ("image", "image_id"),
                    ("true", "class_name"),
                    ("before", "pred_name_a"),
                    ("now", "pred_name_b"),
                    ("change", "change"),
                ],
            )
        )
        out.append("\nThe comparison, the tests per method and per class, the class changes and every flipped image:\n")
        out.append(
            _commands(
                _sql_line("compare_methods", ctx, **pair),
                _sql_line("regressions", ctx, **pair),
                _sql_line("regressions", ctx, **pair, scope="class"),
                _sql_line("compare_classes", ctx, **pair, top_k=5),
                _sql_line("compare_flips", ctx, **pair),
            )
        )

    out.append(_sensitivity_section(ctx, image))

    out.append("## Gallery\n")
    if not ctx.shown:
        out.append("No image where `abs` and `clip` disagree on rightness (or one of them is missing).\n")
    else:
        out.append(
            "Images one method got right and the other wrong, most confident winner first "
            "(query below). Left: the image, untouched. Right: DINO's attention "
            "(light yellow = low, dark red = high; only the stored top-K cells unless the DINO cache holds the "
            "full map) over a dimmed grey copy, with ABS's crops: **solid blue** = raw crop boxes (regions cut "
            "from the image), **dashed black** = feature-space windows (regions of CLIP's token grid, which "
            "covers the image's centre square).\n"
        )
        out.append(
            "Under each image: the true and predicted classes and each method's stored **margin** (its score "
            "of the true class minus its best other class's score: > 0 means right; `abs` scores are "
            "soft-matching logits, `clip` scores 100 x cosine similarity).\n"
        )
        if any(r.get("deciding") for r in ctx.shown):
            out.append(
                f"**Deciding crops** (bold and numbered in the picture): the {DECIDING_CROPS} crops that add most "
                "to ABS's logit of the class it predicted. ABS's logit of a class is a sum over its crops: each "
                "crop's similarity to each of the class's descriptions (cosine / tau), weighted by the softmax of "
                "that crop's similarities over every (class, description) pair. **Deciding descriptions**: the "
                f"{DECIDING_DESCRIPTIONS} descriptions of the predicted class that add most to that logit, summed "
                "over all crops. Per-crop scores are not stored: the gallery images (only these) were rescored "
                "with the run's models from the stored DINO top-K cells; the crops and the prediction were "
                "checked against the stored row.\n"
            )
        if ctx.explain_note:
            out.append(
                f"_Deciding crops and descriptions not shown: {ctx.explain_note}. Shown instead: the stored "
                f"margins and crops; bold marks the {EMPHASISED_CROPS} crops of each kind centred on the "
                "highest-attention DINO cells (the centres ABS sampled most readily), not necessarily the crops "
                "that decided the prediction._\n"
            )
        out.append(_commands(_sql_line("gallery", ctx, run_id=run_id)))
    for kind, title in (("a_only", "ABS right, CLIP wrong"), ("b_only", "CLIP right, ABS wrong")):
        rows = [r for r in ctx.shown if r["kind"] == kind]
        if not rows:
            continue
        out.append(f"### {title}\n")
        for r in rows:
            if r.get("file"):
                out.append(image(r["file"], r["image_id"]) + "\n")
            else:
                out.append(f"- `{r['image_id']}`: {r.get('note')}\n")
            out.append(_gallery_caption(r) + "\n")
    return "\n".join(out)


#: The sensitivity section's heading (``report_shows_variants`` finds the section by it).
SENSITIVITY_HEADING = "## Sensitivity and ablations (ABS variants)"


def report_shows_variants(markdown: str, names: Sequence[str]) -> bool:
    """Whether a written ``report.md`` has the sensitivity section with a table row for each variant in ``names``
    (``abs-eval analyze`` rewrites a report only when it does not: a rerun that computed nothing writes nothing)."""
    start = markdown.find(SENSITIVITY_HEADING)
    if start < 0:
        return False
    end = markdown.find("\n## ", start + len(SENSITIVITY_HEADING))
    section = markdown[start : end if end >= 0 else len(markdown)]
    return all(f"\n| {_cell(name)} |" in section for name in names)


def _sensitivity_section(ctx: _Context, image: Callable[[str, str], str]) -> str:
    """ABS accuracy against N', M' and tau and the ablations, from the run's variants (``abs-eval analyze``);
    without variants, how to get them."""
    run_id = ctx.run["run_id"]
    out = [SENSITIVITY_HEADING + "\n"]
    rows = abs_rows(ctx.variants)
    if not any(not r["is_run"] for r in rows):
        out.append(
            "No ABS variants of this run's predictions yet. From a run evaluated with `--keep-features`, "
            "`abs-eval analyze` scores N', M', tau, one crop branch and plain averaging from the stored crop "
            "features, with no model run again; this section then shows the curves:\n"
        )
        out.append(
            _commands(
                f"abs-eval analyze --root {ctx.root} --run {run_id} --n-crops 10,20,30 --m 10,25 "
                "--tau 0.01,0.05 --kinds raw,feature --plain-averaging"
            )
        )
        return "\n".join(out)
    of_run = rows[0]["of_run"]
    if of_run != run_id:
        out.append(f"Variants of run `{of_run}`: the same predictions as this run (same dataset, model and config).\n")
    p = ABS_DEFAULT
    out.append(
        f"`abs` accuracy of each variant, one setting changed at a time, the others as in the run. Paper "
        f"defaults: N = {p.n_crops}, M = {p.n_descriptions}, tau = {p.tau:g}, both crop branches, soft "
        "matching.\n"
    )
    if panels(rows):
        out.append("\n" + image(f"{ctx.base}/sensitivity.png", "abs accuracy vs N', M', tau; ablations") + "\n")
        out.append(
            "_Whiskers: 95% Wilson interval; red diamond / red bar: this run's setting; dashed line: the "
            "paper's value; black outline: the paper's setting (both branches, soft matching); dotted green: "
            "`clip` in this run. N' < N keeps the first N' crops of each branch: a statistically equivalent "
            "N'-crop sample, not the crops a fresh N'-run draws._\n"
        )
    fresh = {True: "yes", False: "no"}
    out.append(
        md_table(
            rows,
            [
                ("variant", lambda r: "this run" if r["is_run"] else r["variant"]),
                ("accuracy", lambda r: _pct(r["accuracy"])),
                ("95% CI", _ci),
                ("N", "n_crops"),
                ("crops", "crop_kinds"),
                ("M", "n_descriptions"),
                ("tau", lambda r: f"{r['tau']:g}"),
                ("matching", "matching"),
                ("= fresh run", lambda r: fresh.get(r["equals_fresh_run"], "–")),
            ],
        )
    )
    out.append(
        "_= fresh run: the variant equals a fresh run with its setting (tau, M', one crop branch); N' prefixes "
        'and plain averaging are no run\'s (README: "Ablations and sensitivity from one run")._\n'
    )
    out.append(_commands(_sql_line("variant_accuracy", ctx, run_id=run_id, method="abs")))
    return "\n".join(out)


def _margin(v: Any) -> str:
    return "margin –" if v is None else f"margin {v:+.3f}"


def _gallery_caption(r: Mapping[str, Any]) -> str:
    """The text under one gallery image: classes and margins, then what decided ABS's prediction
    (or what is stored about its crops, and why no more is shown)."""

    def verdict(method: str, name: Any, pred: Any, margin: Any) -> str:
        mark = "right" if pred is not None and pred == r.get("label") else "wrong"
        return f"`{method}` predicted **{name if name is not None else pred}** ({mark}, {_margin(margin)})"

    lines = [
        f"**`{r['image_id']}`**: true class **{r.get('class_name')}**; "
        f"{verdict(r['method_a'], r.get('pred_name_a'), r.get('pred_a'), r.get('margin_a'))}; "
        f"{verdict(r['method_b'], r.get('pred_name_b'), r.get('pred_b'), r.get('margin_b'))}."
    ]
    e = r.get("deciding")
    if e:
        runner = (
            f", runner-up **{e['runner_up']}** {e['runner_up_logit']:.3f}" if e.get("runner_up") is not None else ""
        )
        crops = "; ".join(f"{c['rank']}. {_crop_text(c['kind'], c['box'])} ({c['score']:+.3f})" for c in e["crops"])
        descs = "; ".join(f'"{_cell(d["text"])}" ({d["score"]:+.3f})' for d in e["descriptions"])
        lines.append(
            f"- Deciding crops of `abs` for **{e['class_name']}** (what each adds to its logit "
            f"{e['logit']:.3f}{runner}; {e['n_crops']} crops in all): {crops}"
        )
        lines.append(f"- Best-matching descriptions of **{e['class_name']}**: {descs}")
    else:
        n_raw, n_win, n_cells = (len(r.get(k) or []) for k in ("raw_boxes", "feature_windows", "dino_topk_indices"))
        stored = (
            f"- Stored `{r['method_a']}` crops: {n_raw} raw crop boxes, {n_win} feature windows, "
            f"from {n_cells} DINO top-K cells"
        )
        lines.append(stored + (f"; deciding crops not shown: {r['deciding_note']}" if r.get("deciding_note") else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------- the Prefect artifact
def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _artifact_markdown(
    st: Storage, ctx: _Context, pngs: Mapping[str, bytes], gallery: Sequence[str], text_bytes: int, max_bytes: int
) -> str:
    """The report with its images embedded as data URIs, for the Prefect UI (which cannot
    resolve report.md's relative links). The plots always; gallery images in report order
    while the whole stays under ``max_bytes`` (``ARTIFACT_MAX_BYTES``); any other image by its path under the root
    (never the absolute path of the machine that wrote it: a reader of the UI elsewhere cannot use it)."""
    budget = [max_bytes - text_bytes - 2048 * (len(pngs) + len(gallery))]  # link text grows a little

    def image(rel: str, alt: str) -> str:
        data = pngs.get(rel)
        if data is None and rel in gallery:
            try:
                with st.fs.open(st.path(rel), "rb") as f:
                    data = f.read()
            except OSError:
                data = None
        uri = png_data_uri(data) if data is not None else None
        if uri is not None and len(uri) <= budget[0]:
            budget[0] -= len(uri)
            return f"![{alt}]({uri})"  # nothing after it: a path of the machine that wrote it helps no reader elsewhere
        return f"- {alt}: not embedded (the artifact stays under {max_bytes // 1000} KB); in the run's root: `{rel}`"

    return _markdown(ctx, image)


def _rel(path: str, base: str) -> str:
    return path[len(base) + 1 :] if path.startswith(base + "/") else path
