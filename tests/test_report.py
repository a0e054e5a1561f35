"""The per-run report (tasks/report.py) on the hand-built results of test_sql.py.

Checks that the report's numbers are the SQL's (and so, by test_sql, the rows'),
that it compares with the previous run of the same deployment, and that the
gallery picks exactly images ABS got right and CLIP wrong (and the reverse),
drawn from the shard bytes with the stored crop geometry and DINO attention.
"""

from __future__ import annotations

import io
import uuid

import fsspec
import numpy as np
import pytest
from PIL import Image

from tasks import report
from tasks.storage import Storage

try:
    from test_sql import CLASSES, METHODS, PER_SHARD, build_results, expected_accuracy, write_dino_cache
except ImportError:  # pragma: no cover - when run as a package
    from tests.test_sql import CLASSES, METHODS, PER_SHARD, build_results, expected_accuracy, write_dino_cache  # type: ignore[no-redef]


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
        line = next(ln for ln in m.markdown.splitlines() if ln.startswith(f"| {r['method']} | {e['n']} |"))
        assert f"| {100 * e['accuracy']:.1f}% |" in line and f"| {e['correct']} |" in line
    for r in m.comparison:
        assert (r["run_a"], r["run_b"]) == ("r1", "r2")
        assert r["delta"] == pytest.approx(exp[r["method"]]["accuracy"] - prev[r["method"]]["accuracy"])
        assert f"{100 * r['delta']:+.1f} pp" in m.markdown
    assert "## Per-class accuracy: extremes" in m.markdown and "![per-class accuracy](per_class_accuracy.png)" in m.markdown
    assert "| truncated | 1 |" in m.markdown and "| not_image | 1 |" in m.markdown


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


def test_boxes_are_drawn_scaled_to_the_decoded_image():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    row = {"image_id": "x", "label": 0, "class_name": CLASSES[0], "method_a": "abs", "pred_a": 0, "pred_name_a": CLASSES[0],
           "method_b": "clip", "pred_b": 1, "pred_name_b": CLASSES[1], "width": 100, "height": 50}
    plain = report.draw_gallery_image(img, {**row, "raw_boxes": []}, None, "topk")
    boxed = report.draw_gallery_image(img, {**row, "raw_boxes": [[10, 10, 60, 40]]}, None, "topk")
    a = np.asarray(Image.open(io.BytesIO(plain)).convert("L"), dtype=int)
    b = np.asarray(Image.open(io.BytesIO(boxed)).convert("L"), dtype=int)
    assert a.shape == b.shape
    ys, xs = np.nonzero(np.abs(a - b) > 100)  # the white outline on the black image
    assert len(xs) > 50
    # the box spans x 20..120 of 200 (boxes were in 100-px coordinates): about half the image's width
    img_cols = np.nonzero((a < 10).sum(axis=0) > 10)[0]  # columns of the black image area
    frac = (xs.max() - xs.min()) / (img_cols.max() - img_cols.min())
    assert 0.45 < frac < 0.55
