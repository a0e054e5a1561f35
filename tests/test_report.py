"""The per-run report (tasks/results/report/) on the hand-built results of test_sql.py.

Checks that the report's numbers are the SQL's (and so, by test_sql, the rows'),
that it compares with the previous run of the same deployment, and that the
gallery picks exactly images ABS got right and CLIP wrong (and the reverse),
drawn from the shard bytes with the stored crop geometry and DINO attention.
"""

from __future__ import annotations

import base64
import io
import re
import uuid

import fsspec
import numpy as np
import pytest
from PIL import Image
from test_sql import (
    CLASSES,
    METHODS,
    PER_SHARD,
    build_results,
    expected_acc5,
    expected_accuracy,
    expected_mean_per_class_recall,
    make_rows,
    write_dino_cache,
    write_part,
    write_run,
)

from tasks.results import report
from tasks.store import Storage


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    fx = build_results(str(tmp_path_factory.mktemp("report")), shards=True, dino=True)
    return fx, report.write_report(fx.root, "r2", gallery_size=3)


def _png(st: Storage, rel: str) -> Image.Image:
    with st.fs.open(st.path(rel), "rb") as f:
        img = Image.open(io.BytesIO(f.read()))
        img.load()
    assert img.format == "PNG"
    return img


def _right_wrong(fx, run_id: str) -> tuple[set[str], set[str]]:
    rows = {(r["image_id"], r["method"]): r for r in fx.run_rows(run_id)}
    ok = lambda r: r["status"] == "ok" and r["pred"] == r["label"]  # noqa: E731
    ids = {i for i, _ in rows}
    abs_only = {i for i in ids if ok(rows[(i, "abs")]) and not ok(rows[(i, "clip")])}
    clip_only = {i for i in ids if ok(rows[(i, "clip")]) and not ok(rows[(i, "abs")])}
    return abs_only, clip_only


def test_report_files_next_to_run_record(built):
    fx, m = built
    st = fx.storage
    assert m.report == "runs/run=r2/report.md" and m.previous_run_id == "r1"  # the failed run is skipped
    assert m.plots == ["runs/run=r2/methods.png", "runs/run=r2/per_class_accuracy.png"]
    for rel in m.files:
        assert st.exists(rel), rel
    for rel in m.plots + m.gallery:
        assert _png(st, rel).size[0] > 100
    assert st.read_json("runs/run=r2/run.json")["run_id"] == "r2"  # the run record is untouched
    with st.fs.open(st.path(m.report), "rb") as f:
        assert f.read().decode() == m.markdown


def test_report_numbers_are_the_sql_numbers(built):
    fx, m = built
    exp = expected_accuracy(fx.run_rows("r2"))
    prev = expected_accuracy(fx.run_rows("r1"))
    assert [r["method"] for r in m.accuracy] == METHODS
    for r in m.accuracy:
        e = exp[r["method"]]
        assert (r["n"], r["n_error"], r["correct"]) == (e["n"], e["n_error"], e["correct"])
        line = next(
            ln for ln in m.markdown.splitlines() if ln.startswith(f"| {r['method']} | {100 * e['accuracy']:.1f}% |")
        )
        assert f"| {e['n']} | {e['n_error']} |" in line
    for r in m.comparison:
        assert (r["run_a"], r["run_b"]) == ("r1", "r2")
        assert r["delta"] == pytest.approx(exp[r["method"]]["accuracy"] - prev[r["method"]]["accuracy"])
        assert f"{100 * r['delta']:+.1f} pp" in m.markdown
    assert (
        "## Per-class accuracy: extremes" in m.markdown
        and "![per-class accuracy](per_class_accuracy.png)" in m.markdown
    )
    assert "| truncated | 1 |" in m.markdown and "| not_image | 1 |" in m.markdown


def test_report_shows_top5_and_mean_per_class_recall(built):
    fx, m = built
    header = next(ln for ln in m.markdown.splitlines() if ln.startswith("| method | accuracy | 95% CI | n |"))
    assert "| top-5 |" in header and "| mean per-class recall |" in header
    cols = [c.strip() for c in header.strip("|").split("|")]
    for r in m.accuracy:
        rows = [x for x in fx.run_rows("r2") if x["method"] == r["method"]]
        acc5, mpcr = expected_acc5(rows), expected_mean_per_class_recall(rows)
        assert r["acc5"] == pytest.approx(acc5) and r["mean_per_class_recall"] == pytest.approx(mpcr)
        line = next(
            ln for ln in m.markdown.splitlines() if ln.startswith(f"| {r['method']} | {100 * r['accuracy']:.1f}% |")
        )
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[cols.index("top-5")] == f"{100 * acc5:.1f}%"
        assert cells[cols.index("mean per-class recall")] == f"{100 * mpcr:.1f}%"
    # the fixture's r1 -> r2 changes are within chance: nothing flagged, every method tested
    assert f"**{report.DROP_FLAG}" not in m.markdown  # (the explanation names the flag, unbolded)
    assert {r["method"] for r in m.regressions if r["scope"] == "method"} == set(METHODS)
    assert all(not r["regressed"] for r in m.regressions)


def test_report_flags_a_significant_drop(tmp_path):
    """rA -> rB (test_regressions): abs went 30 images right -> wrong and 2 wrong -> right
    (McNemar p = 2.5e-07): flagged on top and in the comparison; cupl (3 vs 3) is not."""
    from test_regressions import build_regression_results, exact_mcnemar

    root = str(tmp_path / "reg")
    build_regression_results(root)
    m = report.write_report(root, "rB", gallery_size=0)
    assert m.previous_run_id == "rA"
    md = m.markdown
    top = md.split("## Accuracy", 1)[0]
    assert f"> **{report.DROP_FLAG}" in top and "**abs**" in top and "**cupl**" not in top
    assert "30 images right → wrong, 2 wrong → right" in top and f"p = {exact_mcnemar(30, 2):.1e}" in top
    comparison = md.split("## Comparison with the previous run", 1)[1].split("## Gallery", 1)[0]
    abs_line = next(ln for ln in comparison.splitlines() if ln.startswith("| abs |"))
    assert f"**{report.DROP_FLAG}**" in abs_line and f"| {exact_mcnemar(30, 2):.1e} |" in abs_line
    cupl_line = next(ln for ln in comparison.splitlines() if ln.startswith("| cupl |"))
    assert "within chance" in cupl_line and "| 1.000 |" in cupl_line
    assert "Classes with a significant drop" in comparison
    assert [r["method"] for r in m.regressions if r["scope"] == "method" and r["regressed"]] == ["abs"]
    # the next run changed nothing: no flag
    m2 = report.write_report(root, "rC", gallery_size=0)
    assert m2.previous_run_id == "rB" and f"**{report.DROP_FLAG}" not in m2.markdown and "within chance" in m2.markdown


def test_gallery_picks_disagreements_and_uses_stored_geometry(built):
    fx, m = built
    abs_only, clip_only = _right_wrong(fx, "r2")
    assert abs_only and clip_only
    items = m.gallery_items
    got_a = {i["image_id"] for i in items if i["kind"] == "a_only"}
    got_b = {i["image_id"] for i in items if i["kind"] == "b_only"}
    assert got_a <= abs_only and len(got_a) == min(3, len(abs_only))
    assert got_b <= clip_only and len(got_b) == min(3, len(clip_only))
    assert all(i["file"] in m.gallery for i in items)
    assert any("abs-right-clip-wrong" in f for f in m.gallery) and any("clip-right-abs-wrong" in f for f in m.gallery)
    # shard 0 has cached full attention maps; the other shards fall back to the top-K cells on the rows
    for i in items:
        assert i["heat"] == ("cache" if int(i["image_id"][4:]) < PER_SHARD else "topk"), i
    for f in m.gallery:
        assert f"]({f.split('runs/run=r2/')[1]})" in m.markdown
    # hand-built rows: no evaluation spec in the run record, so no models to rescore with; one line says so,
    # and every image still shows both methods' stored margins and its stored crops
    assert m.markdown.count("_Deciding crops and descriptions not shown: the run record holds no evaluation spec") == 1
    assert all(i["deciding"] is None for i in items)
    for i in items:
        caption = m.markdown.split(f"**`{i['image_id']}`**", 1)[1].split("\n\n", 1)[0]
        assert f"margin {i['margin_a']:+.3f})" in caption and f"margin {i['margin_b']:+.3f})" in caption
        assert "- Stored `abs` crops: " in caption and " raw crop boxes, " in caption


def test_previous_run_override_and_no_previous(tmp_path):
    fx = build_results(str(tmp_path / "root"))  # no shard files: gallery rows say why
    m = report.write_report(fx.root, "r2", previous_run_id="r3", gallery_size=1)
    assert m.previous_run_id == "r3" and {r["run_a"] for r in m.comparison} == {"r3"}
    assert m.gallery == [] and all(i["note"] for i in m.gallery_items)
    m1 = report.write_report(fx.root, "r1", gallery_size=0)
    assert m1.previous_run_id is None and m1.comparison == [] and "No earlier completed run" in m1.markdown
    with pytest.raises(KeyError):
        report.write_report(fx.root, "nope")


def test_report_on_memory_root():
    root = f"memory://abs-report-{uuid.uuid4().hex}"
    try:
        fx = build_results(root, shards=True)
        for shard in range(3):  # only another DINO's maps are cached: never drawn under ABS's boxes
            write_dino_cache(fx.storage, shard, variant="0ther", other_weights=True)
        m = report.write_report(root, "r2", gallery_size=1)
        assert len(m.gallery) == 2 and all(fx.storage.exists(f) for f in m.files)
        assert {i["heat"] for i in m.gallery_items} == {"topk"}
    finally:
        fs = fsspec.filesystem("memory")
        for p in list(fs.store):
            if "/abs-report-" in p:
                fs.rm(p)


def test_attention_maps():
    g = report.attention_grid([0, 15, 195], [0.5, 0.25, 1.0])
    assert g.shape == (14, 14) and g[0, 0] == 0.5 and g[1, 1] == 0.25 and g[13, 13] == 1.0 and g.sum() == 1.75
    assert report.attention_grid([0, 255], [1.0, 2.0]).shape == (16, 16)  # a larger grid than the default
    assert report.attention_grid([], []) is None
    full = report.full_attention(list(np.arange(196, dtype=float)), 14)
    assert full.shape == (14, 14) and full[2, 3] == 2 * 14 + 3
    assert report.full_attention([1.0, 2.0, 3.0], None) is None


def _two_panel_png(img: Image.Image, row: dict, heat=None, source: str = "topk", **kw) -> np.ndarray:
    png = report.draw_gallery_image(img, row, heat, source, **kw)
    out = Image.open(io.BytesIO(png))
    assert out.format == "PNG"
    return np.asarray(out.convert("RGB"), dtype=int)


GALLERY_ROW = {
    "image_id": "x",
    "label": 0,
    "class_name": CLASSES[0],
    "method_a": "abs",
    "pred_a": 0,
    "pred_name_a": CLASSES[0],
    "method_b": "clip",
    "pred_b": 1,
    "pred_name_b": CLASSES[1],
    "width": 100,
    "height": 50,
}


def _colour_box(px: np.ndarray, rgb: tuple[int, int, int], tol: int = 3) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero((np.abs(px - np.array(rgb)) <= tol).all(axis=2))
    return ys, xs


def test_gallery_shows_the_image_untouched_beside_the_attention_panel():
    # A solid, saturated image: with the old 45% overlay no pixel kept this colour.
    colour = (200, 30, 30)
    img = Image.new("RGB", (200, 100), colour)
    heat = report.full_attention(list(np.linspace(0, 1, 196)), 14)
    px = _two_panel_png(
        img,
        {**GALLERY_ROW, "raw_boxes": [[10, 10, 60, 40]], "feature_windows": [[0, 14, 0, 14]]},
        heat,
        "cache",
        clip_grid=(14, 224),
    )
    ys, xs = _colour_box(px, colour)
    panel_w, panel_h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert len(xs) >= 0.95 * panel_w * panel_h  # the whole left panel is the image's own colour
    assert abs(panel_w / panel_h - 2.0) < 0.1  # at the image's aspect ratio
    assert xs.max() < px.shape[1] / 2  # ... in the left half only: the right panel is the attention map
    assert px.shape[1] >= 2 * panel_w  # two panels side by side
    # the right panel, same size, is coloured by the heat map (not the image's colour, not blank)
    right = px[ys.min() + 2 : ys.max() - 2, xs.max() + 10 : xs.max() + 10 + panel_w - 4]
    assert right.std(axis=(0, 1)).max() > 20
    lay = report.gallery_layout(200, 100)
    assert lay["fig_w"] >= 2 * lay["panel_w"] and lay["panel_w"] / lay["panel_h"] == pytest.approx(2.0)


def test_boxes_are_drawn_on_the_attention_panel_scaled_to_the_decoded_image():
    colour = (10, 200, 10)
    img = Image.new("RGB", (200, 100), colour)
    plain = _two_panel_png(img, {**GALLERY_ROW, "raw_boxes": []})
    boxed = _two_panel_png(img, {**GALLERY_ROW, "raw_boxes": [[10, 10, 60, 40]]})
    assert plain.shape == boxed.shape
    ys_img, xs_img = _colour_box(plain, colour)  # the untouched image: the left panel
    left_cols = (xs_img.min(), xs_img.max())
    panel_w = left_cols[1] - left_cols[0]
    # the image panel is the same with and without boxes: they are drawn on the attention panel
    assert (
        plain[ys_img.min() : ys_img.max() + 1, left_cols[0] : left_cols[1] + 1]
        == boxed[ys_img.min() : ys_img.max() + 1, left_cols[0] : left_cols[1] + 1]
    ).all()
    bluish = (boxed[..., 2] - boxed[..., 0] > 80) & (boxed[..., 2] - boxed[..., 1] > 80)  # solid blue raw boxes
    changed = (np.abs(plain - boxed).sum(axis=2) > 100) & bluish
    changed[ys_img.max() + 5 :] = False  # below the panels: the legend's crop count differs
    ys, xs = np.nonzero(changed)
    assert len(xs) > 50 and xs.min() > left_cols[1]
    # the box spans x 20..120 of 200 (boxes were in 100-px coordinates): about half the panel's width
    frac = (xs.max() - xs.min()) / panel_w
    assert 0.45 < frac < 0.56


def test_feature_windows_map_to_the_centre_square_clip_saw():
    # 200 x 100: CLIP resizes the short side to 224 and centre-crops, so its 14 x 14 grid covers x 50..150
    assert report.feature_window_pixels([0, 14, 0, 14], 200, 100, 14, 224) == pytest.approx((50, 0, 150, 100))
    assert report.feature_window_pixels([7, 14, 0, 7], 200, 100, 14, 224) == pytest.approx((50, 50, 100, 100))
    assert report.feature_window_pixels([0, 7, 0, 7], 100, 100, 7, 224) == pytest.approx((0, 0, 100, 100))
    assert report.clip_grid_of("ViT-B-16") == (14, 224, "model config")
    assert report.clip_grid_of("ViT-L-14-336")[:2] == (24, 336)
    assert report.clip_grid_of("abs-tiny-vit-b32")[:2] == (7, 224)
    assert report.clip_grid_of("hf-hub:someone/vit-16-384") == (24, 384, "model name")
    assert report.clip_grid_of(None) == (14, 224, "assumed")
    # a dashed feature window is drawn: the panel differs from the one without it
    colour = (10, 200, 10)
    img = Image.new("RGB", (200, 100), colour)
    a = _two_panel_png(img, {**GALLERY_ROW, "raw_boxes": [], "feature_windows": []}, clip_grid=(14, 224))
    b = _two_panel_png(img, {**GALLERY_ROW, "raw_boxes": [], "feature_windows": [[2, 9, 2, 9]]}, clip_grid=(14, 224))
    ys, xs = _colour_box(a, colour)
    diff = np.abs(a - b).sum(axis=2)
    diff[ys.max() + 5 :] = 0  # below the panels: the legend's window count differs
    dy, dx = np.nonzero(diff > 100)
    assert len(dx) > 30 and dx.min() > xs.max()  # on the attention panel only
    # grid columns 2..9 of 14 over the centre square x 50..150 of 200: x 64.3..114.3, a quarter of the panel
    assert 0.22 < (dx.max() - dx.min()) / (xs.max() - xs.min()) < 0.28


def test_emphasised_crops_are_those_centred_on_the_highest_attention_cells():
    # top-K cells (D = 14) 30 (row 2, col 2) > 100 (row 7, col 2) > 150 (row 10, col 10); image 140 x 140: 10 px a cell
    cells = [(c % 14 * 10 + 5, c // 14 * 10 + 5) for c in (30, 100, 150)]
    values = [0.9, 0.5, 0.1]
    boxes = [
        (85, 85, 125, 125),
        (5, 55, 45, 95),
        (5, 5, 45, 45),
        (0, 0, 40, 70),
    ]  # centred on 150, 100, 30; the last clipped
    ranks = report._crop_ranks([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes], boxes, cells, values)
    assert ranks[:3] == pytest.approx([0.1, 0.5, 0.9])
    assert ranks[3] == pytest.approx(0.9)  # clipped at the corner: only cell 30 lies inside
    assert report.emphasised(ranks, 2) == {2, 3}  # tie: the earlier drawn first
    assert report.emphasised(ranks, 1) == {2}
    assert report.emphasised([-np.inf, 0.3], 2) == {1}  # a box with no top-K cell inside is never bold


def test_methods_plot_has_errorbars_chance_line_and_a_legend_off_the_bars():
    acc = [
        {"method": m, "accuracy": a, "ci_low": a - 0.1, "ci_high": a + 0.05}
        for m, a in (("abs", 0.93), ("clip", 0.9), ("clip-e", 0.5), ("cupl", 0.97))
    ]
    prev = [
        {"method": m, "accuracy_a": 0.95, "ci_low_a": 0.9, "ci_high_a": 0.98} for m in ("abs", "clip", "clip-e", "cupl")
    ]
    fig = report.methods_figure(acc, prev, "r2", "r1", n_classes=8)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    bars = [p for p in ax.patches]
    assert len(bars) == 8
    assert not any(legend_box.overlaps(b.get_window_extent(renderer)) for b in bars)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "chance 1/C = 1/8 = 12.5%" in texts and "95% Wilson interval" in texts
    chance = [ln for ln in ax.get_lines() if ln.get_label().startswith("chance 1/C")]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == pytest.approx([1 / 8, 1 / 8])
    # error bars: one vertical segment per bar (this run right of centre, previous left), ci_low to ci_high
    segs = {
        round(float(sg[0][0]), 3): (float(sg[0][1]), float(sg[1][1])) for c in ax.collections for sg in c.get_segments()
    }
    want = {}
    for i, r in enumerate(acc):
        want[round(i + 0.19, 3)] = (r["ci_low"], r["ci_high"])
        want[round(i - 0.19, 3)] = (0.9, 0.98)
    assert set(segs) == set(want)
    for x, (lo, hi) in want.items():
        assert segs[x] == pytest.approx((lo, hi))
    png = report.plot_methods(acc, prev, "r2", "r1", n_classes=8)
    assert Image.open(io.BytesIO(png)).format == "PNG" and len(png) < 200_000


def test_methods_plot_written_with_chance_from_the_dataset(built):
    fx, m = built
    assert "| classes scored (C) | 5 (dataset.json classnames) |" in m.markdown
    assert "chance level 1/C = 1/5 = 20.0%" in m.markdown
    for rel in m.plots:
        with fx.storage.fs.open(fx.storage.path(rel), "rb") as f:
            data = f.read()
        assert 1_000 < len(data) < 200_000, (rel, len(data))


_LINK = re.compile(r"!\[[^\]]*\]\(([^)]*)\)")


def test_artifact_markdown_embeds_the_plots(built):
    fx, m = built
    st = fx.storage
    art = m.artifact_markdown
    assert len(art.encode()) <= report.ARTIFACT_MAX_BYTES
    targets = _LINK.findall(art)
    assert targets and all(t.startswith("data:image/png;base64,") for t in targets)  # no relative link left
    for rel in ("methods.png", "per_class_accuracy.png", "gallery/"):
        assert f"]({rel}" not in art and f"]({rel}" in m.markdown  # report.md keeps its relative links
    decoded = [base64.b64decode(t.split(",", 1)[1], validate=True) for t in targets]
    for data in decoded:
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.format == "PNG" and img.size[0] > 100
    files = {}
    for rel in m.plots + m.gallery:
        with st.fs.open(st.path(rel), "rb") as f:
            files[rel] = f.read()
    assert all(files[rel] in decoded for rel in m.plots)  # the plots, byte for byte
    assert len(decoded) == len(m.plots) + len(m.gallery)  # small gallery: embedded too
    # no path of the machine that wrote it after an image: it helps no reader of the UI elsewhere
    assert st.root_path not in art.replace(f"--root {st.root}", "")
    # the text is the same report; commands in code blocks, never inline
    assert "## Accuracy" in art and "## Gallery" in art and "```bash\nabs-eval sql run accuracy -p run_id=r2" in art
    assert "`abs-eval sql run" not in art and "`abs-eval sql run" not in m.markdown
    assert "abs-eval sql <" not in m.markdown and "abs-eval sql <" not in art
    assert "markdown" not in m.to_dict() and "artifact_markdown" not in m.to_dict()


def test_artifact_markdown_names_gallery_by_path_beyond_the_cap(tmp_path, monkeypatch):
    fx = build_results(str(tmp_path / "root"), shards=True)
    m0 = report.write_report(fx.root, "r2", gallery_size=2)
    plots = sum(len(base64.b64encode(fx.storage.fs.cat_file(fx.storage.path(p)))) for p in m0.plots)
    monkeypatch.setattr(report, "ARTIFACT_MAX_BYTES", plots + len(m0.markdown) + 30_000)  # room for the plots only
    m = report.write_report(fx.root, "r2", gallery_size=2)
    assert m.gallery and len(m.artifact_markdown.encode()) <= report.ARTIFACT_MAX_BYTES
    assert len(_LINK.findall(m.artifact_markdown)) == len(m.plots)
    for rel in m.gallery:  # named by their path under the root, never the writing machine's absolute path
        assert (
            f"not embedded (the artifact stays under {report.ARTIFACT_MAX_BYTES // 1000} KB); in the run's root: `{rel}`"
            in m.artifact_markdown
        )
        assert fx.storage.url(rel) not in m.artifact_markdown


def _write_run_rows(fx, config: str, run_id: str, right: dict[str, set[int]], day: int) -> None:
    """Run ``run_id`` (config ``config``) whose ``method`` is right exactly on the labels in ``right[method]``."""
    for shard in range(3):
        rows = make_rows(config, shard, run_id)
        for r in rows:
            if r["status"] == "ok":
                ok = r["label"] in right.get(r["method"], set())
                r["pred"] = r["label"] if ok else (r["label"] + 1) % len(CLASSES)
                r["pred_name"] = CLASSES[r["pred"]]
                r["margin"] = 0.5 if ok else -0.5
        write_part(fx.storage, config, shard, rows)
    write_run(fx.storage, run_id, config, "other", day)


def test_best_classes_never_lists_a_class_at_zero(tmp_path):
    from tasks.results import catalog

    fx = build_results(str(tmp_path / "root"))
    # abs: all wrong; clip: right on cat and dog only (2 classes above 0%); cupl: all right
    _write_run_rows(fx, "c9", "r9", {"clip": {0, 1}, "cupl": set(range(len(CLASSES)))}, day=20)
    ext = catalog.run_query(fx.root, "class_extremes", {"run_id": "r9", "top_k": 5}).to_pylist()
    best = lambda m: [r for r in ext if r["method"] == m and r["extreme"] == "best"]  # noqa: E731
    worst = lambda m: [r for r in ext if r["method"] == m and r["extreme"] == "worst"]  # noqa: E731
    assert best("abs") == [] and [r["accuracy"] for r in worst("abs")] == [0.0, 0.0, 0.0]  # worst may show 0% classes
    assert {r["class_name"] for r in best("clip")} == {"cat", "dog"} and all(r["accuracy"] > 0 for r in best("clip"))
    assert [r["position"] for r in best("clip")] == [1, 2]
    assert {r["class_name"] for r in best("clip")}.isdisjoint(r["class_name"] for r in worst("clip"))
    assert len(best("cupl")) == 2 and all(r["accuracy"] == 1.0 for r in best("cupl"))
    m = report.write_report(fx.root, "r9", gallery_size=0)
    section = m.markdown.split("## Per-class accuracy: extremes")[1].split("## Most frequent confusions")[0]
    abs_part = section.split("**abs**")[1].split("**clip**")[0]
    assert "| best |" not in abs_part and "| worst | 1 |" in abs_part and "No best list" in abs_part
    for line in section.splitlines():
        if line.startswith("| best |"):
            assert "| 0.0% |" not in line, line
    # no dataset.json here: C is the number of distinct true labels
    assert "| classes scored (C) | 5 (distinct true labels of the run) |" in m.markdown
    assert "abs-eval sql run class_extremes -p run_id=r9 -p top_k=5 --root " in m.markdown


def test_per_class_plot_is_in_percent_like_the_methods_plot():
    rows = [
        {"method": m, "label": c, "class_name": CLASSES[c], "accuracy": a}
        for m, accs in (("abs", (0.2, 0.5, 1.0)), ("clip", (0.0, 0.25, 0.75)))
        for c, a in enumerate(accs)
    ]
    fig = report.per_class_figure(rows, n_classes=4)
    ax = fig.axes[0]
    assert "%" in ax.get_ylabel() and ax.get_ylim() == pytest.approx((-2, 102))
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted([20.0, 50.0, 100.0, 0.0, 25.0, 75.0])  # 0-100, not 0-1
    chance = [ln for ln in ax.get_lines() if ln.get_label().startswith("chance 1/C")]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == pytest.approx([25.0, 25.0])


def test_soft_match_terms_sum_to_the_abs_logits():
    import torch

    from abs_model import soft_match

    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(7, 16, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(5, 4, 16, generator=g), dim=-1)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[1, 2:] = False
    mask[4, 1:] = False
    for mk in (None, mask):
        terms = report.soft_match_terms(v, t, mk, 0.03)
        assert terms.shape == (7, 5, 4) and terms.dtype == torch.float64
        want = soft_match(v[None], t, mk, 0.03)[0].double()
        assert torch.allclose(terms.sum(dim=(0, 2)), want, rtol=1e-5, atol=1e-4)
    assert (terms[:, ~mask] == 0).all()  # padded descriptions add nothing


def test_deciding_crops_are_drawn_bold_and_the_others_faint():
    colour = (10, 200, 10)
    img = Image.new("RGB", (200, 100), colour)
    # boxes in the row's 100 x 50 pixels (the decoded image is twice that)
    row = {**GALLERY_ROW, "raw_boxes": [[5, 5, 30, 20], [60, 25, 95, 45]], "margin_a": 1.5, "margin_b": -0.25}
    deciding = {"class_name": CLASSES[0], "crops": [{"rank": 1, "kind": "raw", "index": 1, "box": [60, 25, 95, 45]}]}
    plain, marked = _two_panel_png(img, row), _two_panel_png(img, row, deciding=deciding)

    def blue_in_panel(px: np.ndarray) -> np.ndarray:
        """Strongly blue pixels of the attention panel (right of the untouched image, the same size)."""
        ys, xs = _colour_box(px, colour)  # the left panel
        w = xs.max() - xs.min()
        p = px[ys.min() : ys.max() + 1, xs.max() + 5 : xs.max() + 5 + w]
        return (p[..., 2] - p[..., 0] > 80) & (p[..., 2] - p[..., 1] > 80)

    # box 0 covers x 5-30% of the panel, box 1 x 60-95%: without deciding crops both are drawn alike;
    # with box 1 deciding, box 0 is faint (no strongly blue pixel left) and box 1 bold
    b_plain, b_marked = blue_in_panel(plain), blue_in_panel(marked)
    w = b_plain.shape[1]
    left_part, right_part = (slice(0, int(0.45 * w)), slice(int(0.55 * w), None))
    assert b_plain[:, left_part].sum() > 20 and b_plain[:, right_part].sum() > 20
    assert b_marked[:, left_part].sum() == 0 and b_marked[:, right_part].sum() > b_plain[:, right_part].sum()


# ---------------------------------------------------------------------- a real small run: what decided ABS's predictions
REAL_CLASSES = ["cat", "dog", "fox", "owl"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real run on the tiny random-weight models, as the flow writes it (shards, DINO cache,
    predictions, and a run record holding its evaluation spec), without Prefect; and its report."""
    import types
    from datetime import datetime, timezone

    from pipeline_fixtures import make_folder_source, make_spec, prepare_dataset

    from tasks.results.runs import COMPLETED, RunRecord
    from tasks.run.context import build_context, model_geometry
    from tasks.steps.dino_cache import dino_shard
    from tasks.steps.infer import infer_shard

    base = tmp_path_factory.mktemp("real-run")
    root, src = str(base / "root"), str(base / "src")
    make_folder_source(src, REAL_CLASSES, 6)
    prepare_dataset(root, "folder", src, "mini", images_per_shard=12, descriptions="mini-desc")
    spec = make_spec("mini", "mini-desc")
    ctx = build_context(root, spec)
    info = ctx.info
    res = []
    for sh in info.shards:
        d = dino_shard(
            ctx.storage, info.dataset, sh.index, info.fingerprint, ctx.dino, max_image_side=spec.abs.max_image_side
        )
        res.append(
            infer_shard(
                ctx.storage,
                ctx.classifier,
                dataset=info.dataset,
                model=spec.model_name,
                config=ctx.config_hash,
                shard=sh.index,
                dino_path=d.path,
                classnames=list(info.classnames),
                run_id="real1",
            )
        )
    RunRecord(
        run_id="real1",
        dataset="mini",
        model=spec.model_name,
        config=ctx.config_hash,
        status=COMPLETED,
        ended_at=datetime.now(timezone.utc),
        n_images=sum(r.n_images for r in res),
        n_ok=sum(r.n_ok for r in res),
        n_error=sum(r.n_error for r in res),
        shards_total=len(res),
        shards_computed=len(res),
        clip_model=spec.clip.name,
        clip_pretrained="random",
        clip_weights_digest=ctx.clip.weights_digest,
        dino_model=spec.dino.name,
        dino_pretrained="random",
        dino_weights_digest=ctx.dino.weights_digest,
        descriptions_hash=ctx.descriptions.content_hash,
        config_json={"spec": spec.to_dict(), "numbers": ctx.prediction_settings},
        model_geometry=model_geometry(ctx.clip, ctx.dino),
    ).write(ctx.storage)
    m = report.write_report(root, "real1", gallery_size=2)
    return types.SimpleNamespace(root=root, run_id="real1", spec=spec, info=info, manifest=m)


def _caption(md: str, image_id: str) -> str:
    """The text under one gallery image (up to the next blank line)."""
    return md.split(f"**`{image_id}`**", 1)[1].split("\n\n", 1)[0]


def test_gallery_names_margins_and_the_crops_and_descriptions_that_decided(real_run):
    from pipeline_fixtures import SMALL_ABS, simple_descriptions

    from tasks.results import catalog

    m, md = real_run.manifest, real_run.manifest.markdown
    rows = {
        r["image_id"]: r
        for r in catalog.run_query(real_run.root, "gallery", {"run_id": "real1", "top_k": 2}).to_pylist()
    }
    assert m.gallery_items and {i["image_id"] for i in m.gallery_items} == set(rows)
    assert "Deciding crops and descriptions not shown" not in md and "**Deciding crops** (bold and numbered" in md
    own = simple_descriptions(REAL_CLASSES, 5)  # what prepare_dataset stored; ABS used the first M of each class
    for item in m.gallery_items:
        r, e = rows[item["image_id"]], item["deciding"]
        assert e is not None and item["deciding_note"] is None and item["file"] in m.gallery
        text = _caption(md, r["image_id"])
        # the classes and both methods' stored margins
        for meth, pred, name, margin in (
            ("abs", r["pred_a"], r["pred_name_a"], r["margin_a"]),
            ("clip", r["pred_b"], r["pred_name_b"], r["margin_b"]),
        ):
            mark = "right" if pred == r["label"] else "wrong"
            assert f"`{meth}` predicted **{name}** ({mark}, margin {margin:+.3f})" in text, text
        assert f"true class **{r['class_name']}**" in text
        # the rescoring is the run's own: the same prediction, true-class logit and margin as stored
        assert e["pred"] == r["pred_a"] and e["class_name"] == r["pred_name_a"]
        assert e["score_true"] == pytest.approx(r["score_true_a"], rel=1e-4, abs=1e-4)
        best_other = e["runner_up_logit"] if r["pred_a"] == r["label"] else e["logit"]
        assert e["score_true"] - best_other == pytest.approx(r["margin_a"], rel=1e-4, abs=1e-3)
        # the deciding crops: the top 3 by what they add to the predicted class's logit, the stored boxes
        assert [c["rank"] for c in e["crops"]] == [1, 2, 3] and e["n_crops"] == 2 * SMALL_ABS.n_crops
        # (what every crop adds sums to the logit: the split is exact; the 3 named are the largest)
        assert len(e["crop_scores"]) == e["n_crops"] and sum(e["crop_scores"]) == pytest.approx(e["logit"], rel=1e-4)
        assert [c["score"] for c in e["crops"]] == sorted(e["crop_scores"], reverse=True)[:3]
        assert [
            e["crop_scores"][c["index"] + (SMALL_ABS.n_crops if c["kind"] == "feature" else 0)] for c in e["crops"]
        ] == [c["score"] for c in e["crops"]]
        for c in e["crops"]:
            stored = r["raw_boxes"] if c["kind"] == "raw" else r["feature_windows"]
            assert c["box"] == list(stored[c["index"]])
            assert f"{c['rank']}. {report._crop_text(c['kind'], c['box'])} ({c['score']:+.3f})" in text
        assert (
            f"Deciding crops of `abs` for **{e['class_name']}** (what each adds to its logit {e['logit']:.3f}" in text
        )
        # the deciding descriptions: 3 of the predicted class's own, named in the markdown
        assert len(e["descriptions"]) == 3
        for d in e["descriptions"]:
            assert d["text"] == own[e["class_name"]][d["index"]] and d["index"] < SMALL_ABS.n_descriptions
            assert f'"{d["text"]}" ({d["score"]:+.3f})' in text
        assert f"Best-matching descriptions of **{e['class_name']}**: " in text
    # the artifact (Prefect UI) shows the same captions
    for item in m.gallery_items:
        assert _caption(m.artifact_markdown, item["image_id"]) == _caption(md, item["image_id"])


def test_gallery_without_the_models_says_so_in_one_line_and_shows_what_is_stored(real_run, monkeypatch):
    import tasks.run.context
    from abs_model import WeightsUnavailableError

    def no_models(*_a, **_k):
        raise WeightsUnavailableError("CLIP weights ViT-B-16/openai are not cached here and cannot be downloaded")

    monkeypatch.setattr(tasks.run.context, "resolve", no_models)
    m = report.write_report(real_run.root, "real1", gallery_size=1)
    notes = [ln for ln in m.markdown.splitlines() if "not shown" in ln]
    assert len(notes) == 1 and notes[0].startswith(
        "_Deciding crops and descriptions not shown: the run's models could not be loaded (WeightsUnavailableError: CLIP weights"
    )
    assert "Deciding crops of" not in m.markdown and "Best-matching descriptions" not in m.markdown
    assert m.gallery and len(m.gallery) == len(m.gallery_items)  # the pictures are still drawn
    for item in m.gallery_items:
        assert item["deciding"] is None
        text = _caption(m.markdown, item["image_id"])
        assert f"margin {item['margin_a']:+.3f})" in text and f"margin {item['margin_b']:+.3f})" in text
        n, k = real_run.spec.abs.n_crops, real_run.spec.abs.top_k
        assert f"- Stored `abs` crops: {n} raw crop boxes, {n} feature windows, from {k} DINO top-K cells" in text
