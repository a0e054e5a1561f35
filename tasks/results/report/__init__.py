"""The per-run report: markdown, plots and a gallery, written next to the run record.

Why every number comes from ``sql/`` (through :func:`tasks.results.catalog.run_query`):
a figure in a report must be one that an analyst can re-run in DuckDB and get
again. This package only formats query results, draws them, and decodes images;
it aggregates nothing itself.

Written under ``runs/run=<id>/`` (each file atomically, ``report.md`` last, so a
report that exists has its pictures)::

    report.md                 accuracy table (top-1 with its interval, top-5, mean per-class recall),
                              per-class extremes, confusions, errors, comparison with the previous
                              run of the same deployment (exact McNemar test per method and class;
                              a significant drop is flagged at the top of the report)
    methods.png               accuracy per method with 95% Wilson intervals as error bars (and the
                              previous run's), and the chance level 1/C
    per_class_accuracy.png    per-class accuracy of every method, classes sorted by the first method
    sensitivity.png           with ABS variants (``abs-eval analyze``): abs accuracy vs N', M', tau and the
                              ablation bars, the paper's defaults marked (``sensitivity``)
    gallery/<kind>-<nn>-<image>.png
                              images ABS got right and the baseline wrong (and the reverse): the
                              image untouched in one panel; beside it the DINO attention map with
                              ABS's raw crop boxes and feature-space windows (see draw_gallery_image),
                              the crops that decided ABS's prediction bold and numbered; under each
                              image in report.md: both predictions, margins, deciding crops and
                              descriptions (see explain_image)

The Prefect artifact cannot follow ``report.md``'s relative image links, so
:attr:`ReportManifest.artifact_markdown` is the same report with the plots (and the
gallery images, while they fit under :data:`ARTIFACT_MAX_BYTES`) embedded as
``data:image/png;base64`` links; gallery images that do not fit are named by their
path under the root. Plots are rendered at :data:`PLOT_DPI` so each stays well under 200 KB, with text of
at least :data:`MIN_FONT_PT` and at most :data:`MAX_PLOT_PX` wide (shown unscaled in the Prefect UI).

The gallery's pictures need no recompute: the crop boxes and DINO top-K attention are
stored on the ``abs`` prediction rows, the image bytes in the shard files; when the DINO
cache (``cache/dino/...``) holds the full attention map of an image that agrees
with the row's top-K cells (the map ABS used), that is drawn instead of the top-K cells.
Each gallery image also names its predicted and true classes and both methods' stored
margins; and which crops and descriptions decided ABS's prediction. Per-crop matching
scores are not stored, so those are recomputed for the gallery images only (a handful),
with the run's own models, text bank and stored DINO top-K (:func:`explain_gallery`);
when the models cannot be loaded, the report says so in one line and shows what is stored.

The package, one job per module: :mod:`.reads` (every query of ``sql/queries`` the report
runs, the run's JSON record, the shard bytes), :mod:`.markdown` (tables, number formats, the
text and its Prefect version), :mod:`.plots` (the two figures), :mod:`.geometry` (grids,
attention maps, feature windows in pixels), :mod:`.gallery` (drawing and writing the gallery),
:mod:`.explain` (rescoring the gallery images with the run's models), :mod:`.sensitivity` (the ABS variants' curves and
ablation bars); here, :func:`write_report`
puts them together, and every name the package's users import is re-exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks import defaults
from tasks.results import catalog
from tasks.store import Storage, as_storage
from tasks.store.paths import run_dir

from .explain import (
    DECIDING_CROPS,
    DECIDING_DESCRIPTIONS,
    _crop_text,
    explain_gallery,
    explain_image,
    load_run_context,
    soft_match_terms,
)
from .gallery import (
    EMPHASISED_CROPS,
    FEATURE_WINDOW_COLOR,
    GALLERY_DPI,
    RAW_BOX_COLOR,
    _crop_ranks,
    draw_gallery_image,
    emphasised,
    gallery_layout,
    write_gallery,
)
from .geometry import attention_grid, clip_grid_of, feature_window_pixels, full_attention, run_grids
from .markdown import (
    DROP_FLAG,
    SENSITIVITY_HEADING,
    _artifact_markdown,
    _Context,
    _markdown,
    _rel,
    md_table,
    png_data_uri,
    report_shows_variants,
)
from .plots import MAX_PLOT_PX, MIN_FONT_PT, PLOT_DPI, methods_figure, per_class_figure, plot_methods, plot_per_class
from .reads import RunTables, _run_row, _setting_differences, n_classes_scored, read_tables
from .sensitivity import _run_row as _run_row_of
from .sensitivity import abs_rows, panels, plot_sensitivity, sensitivity_figure

__all__ = [
    "ARTIFACT_MAX_BYTES",
    "DECIDING_CROPS",
    "DECIDING_DESCRIPTIONS",
    "DROP_FLAG",
    "EMPHASISED_CROPS",
    "FEATURE_WINDOW_COLOR",
    "GALLERY_DPI",
    "MAX_PLOT_PX",
    "MIN_FONT_PT",
    "PLOT_DPI",
    "RAW_BOX_COLOR",
    "SENSITIVITY_HEADING",
    "ReportManifest",
    "RunTables",
    "_crop_ranks",
    "_crop_text",
    "attention_grid",
    "clip_grid_of",
    "draw_gallery_image",
    "emphasised",
    "explain_gallery",
    "explain_image",
    "feature_window_pixels",
    "full_attention",
    "gallery_layout",
    "load_run_context",
    "md_table",
    "methods_figure",
    "n_classes_scored",
    "per_class_figure",
    "plot_methods",
    "plot_per_class",
    "plot_sensitivity",
    "png_data_uri",
    "read_tables",
    "report_file",
    "report_shows_variants",
    "run_grids",
    "sensitivity_figure",
    "soft_match_terms",
    "write_gallery",
    "write_report",
]

#: Cap on the Prefect artifact markdown; gallery images beyond it are named by path, not embedded.
#: Read when a report is written (a test lowers it here to see images named instead of embedded).
ARTIFACT_MAX_BYTES = 1_500_000


@dataclass
class ReportManifest:
    """What :func:`write_report` wrote (paths relative to the root) and the headline rows."""

    root: str
    run_id: str
    previous_run_id: str | None
    report: str
    plots: list[str]
    gallery: list[str]
    markdown: str = field(repr=False)
    accuracy: list[dict[str, Any]] = field(default_factory=list, repr=False)  # rows of the accuracy query
    comparison: list[dict[str, Any]] = field(default_factory=list, repr=False)  # rows of compare_methods
    #: Rows of the regressions query for (previous run, this run): per method (scope 'method') and per
    #: class; ``regressed`` marks a significant drop (McNemar p < 0.05 and accuracy down).
    regressions: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: image_id, kind, file, heat, note, margin_a, margin_b (stored), and deciding (explain_image's explanation:
    #: the crops and descriptions that decided ABS's prediction) or deciding_note (why it is not shown)
    gallery_items: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: The report for the Prefect UI: plots (and gallery images while under ARTIFACT_MAX_BYTES)
    #: embedded as data:image/png;base64 links, other gallery images named by their path under the root.
    artifact_markdown: str = field(default="", repr=False)
    #: The run's row of the ``runs`` view (``run_details``): what the table artifact's description says.
    run: dict[str, Any] = field(default_factory=dict, repr=False)
    #: What differs between the previous run's settings and this run's (``setting_differences`` rows).
    settings: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: Rows of the ``variant_accuracy`` query: the ABS variants shown in the sensitivity section.
    variants: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def files(self) -> list[str]:
        return [*self.plots, *self.gallery, self.report]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("markdown")
        d.pop("artifact_markdown")
        return d


def report_file(run_id: str) -> str:
    """Where :func:`write_report` writes a run's ``report.md``, relative to the root."""
    return f"{run_dir(run_id)}/report.md"


def write_report(
    root: str | Storage,
    run_id: str,
    *,
    previous_run_id: str | None = None,
    gallery_size: int = defaults.GALLERY_SIZE,
    storage_options: Mapping[str, Any] | None = None,
    explain: bool = True,
) -> ReportManifest:
    """Write the markdown report, plots and gallery of ``run_id`` under ``runs/run=<id>/``.

    ``previous_run_id``: the run to compare with; by default the latest earlier
    completed run of the same deployment, dataset and model (``runs.previous_run_id``).
    ``gallery_size``: images per gallery kind (ABS right / baseline wrong, and the reverse).
    ``explain``: rescore the gallery images (only those) with the run's models to show which
    crops and descriptions decided ABS's prediction (:func:`explain_gallery`); when the models
    cannot be loaded the report says so in one line and shows what is stored.
    The returned manifest's ``markdown`` is ``report.md`` (relative image links);
    ``artifact_markdown`` embeds the images for the Prefect UI.
    """
    st = as_storage(root, storage_options)
    con = catalog.connect(st)
    try:
        return _write_report(st, con, run_id, previous_run_id, gallery_size, explain)
    finally:
        con.close()


def _write_report(
    st: Storage, con, run_id: str, previous_run_id: str | None, gallery_size: int, explain: bool = True
) -> ReportManifest:
    run = _run_row(con, run_id)
    prev_id = previous_run_id or run.get("previous_run_id")
    t = read_tables(con, run_id, prev_id)
    n_classes, n_classes_source = n_classes_scored(st, con, run)

    base = run_dir(run_id)
    settings = _setting_differences(st, prev_id, run_id) if prev_id else []
    plots = [f"{base}/methods.png", f"{base}/per_class_accuracy.png"]
    pngs: dict[str, bytes] = {
        plots[0]: plot_methods(t.accuracy, t.comparison, run_id, prev_id, n_classes, settings_differ=bool(settings)),
        plots[1]: plot_per_class(t.per_class, n_classes),
    }
    variants = abs_rows(t.variants)
    if panels(variants):
        plots.append(f"{base}/sensitivity.png")
        pngs[plots[-1]] = plot_sensitivity(variants, _run_row_of(abs_rows(t.variants, "clip")))
    for rel in plots:
        st.write_bytes(rel, pngs[rel])
    gallery, shown, explain_note = (
        write_gallery(st, con, run, size=gallery_size, explain=explain) if gallery_size > 0 else ([], [], None)
    )

    ctx = _Context(
        run,
        prev_id,
        t.accuracy,
        t.extremes,
        t.confusions,
        t.errors,
        t.comparison,
        t.class_changes,
        t.flips,
        shown,
        base,
        st.root,
        n_classes,
        n_classes_source,
        t.regressions,
        settings,
        explain_note,
        t.variants,
    )
    md = _markdown(ctx, lambda rel, alt: f"![{alt}]({_rel(rel, base)})")
    artifact = _artifact_markdown(st, ctx, pngs, gallery, len(md.encode()), ARTIFACT_MAX_BYTES)
    report = report_file(run_id)
    st.write_bytes(report, md.encode())
    return ReportManifest(
        root=st.root,
        run_id=run_id,
        previous_run_id=prev_id,
        report=report,
        plots=plots,
        gallery=gallery,
        markdown=md,
        accuracy=t.accuracy,
        comparison=t.comparison,
        regressions=t.regressions,
        run=dict(run),
        settings=settings,
        variants=t.variants,
        gallery_items=[
            {
                k: r.get(k)
                for k in (
                    "image_id",
                    "kind",
                    "shard",
                    "file",
                    "heat",
                    "note",
                    "margin_a",
                    "margin_b",
                    "deciding",
                    "deciding_note",
                )
            }
            for r in shown
        ],
        artifact_markdown=artifact,
    )
