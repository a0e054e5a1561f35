"""Sharding: bad input becomes rows, commits are atomic, reruns write only what is missing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import uuid
import warnings
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest
from dataset_fixtures import (
    Tree,
    jpeg_bytes,
    make_bad_folder,
    make_class_folders,
    make_cub,
    make_dtd,
    make_food101,
    make_pets,
    make_places365,
    png_bytes,
    png_header_bomb,
    put_bytes_name,
)

from tasks.datasets import DatasetSizeWarning, LayoutError, SingleClassWarning, layout_classes, load_source
from tasks.steps.shard import (
    iter_shards,
    list_datasets,
    list_shards,
    plan_shards,
    prepare_shards,
    read_dataset_info,
    read_shard,
    shard_dataset,
    write_shard,
)
from tasks.store import COMMITS_DIR, Storage
from tasks.store.images import check_image
from tasks.store.paths import dataset_dir, dataset_info, marker_key, shard_part
from tasks.store.tables import SHARD_SCHEMA


class Crash(RuntimeError):
    pass


def all_rows(root: str, dataset: str) -> list[dict]:
    return [row for _, table in iter_shards(root, dataset) for row in table.to_pylist()]


def make_images(root: str, n: int, classes=("a", "b", "c")) -> list[str]:
    t = Tree(root)
    return [t.put(f"{classes[i % len(classes)]}/{i:03d}.jpg", jpeg_bytes(i)) for i in range(n)]


# ---------------------------------------------------------------------- bad input
def test_every_bad_file_gets_exactly_one_row(tmp_path):
    src = str(tmp_path / "src")
    expected = make_bad_folder(src)
    root = str(tmp_path / "out")
    m = shard_dataset("folder", src, root, "bad", images_per_shard=4, progress=False)

    rows = all_rows(root, "bad")
    ids = [r["image_id"] for r in rows]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    by_id = {r["image_id"]: r for r in rows}
    assert {i: r["status"] for i, r in by_id.items()} == expected

    reasons = {
        "mixed/truncated.jpg": "truncated",
        "mixed/empty.jpg": "zero-byte file",
        "mixed/text.jpg": "not a recognised image format (starts with b'hello, this is n'",
        "mixed/bomb.png": "decompression bomb",
        "mixed/broken_link.jpg": "not a regular file",
        "mixed/fifo.jpg": "not a regular file",
    }
    for image_id, reason in reasons.items():
        assert reason in by_id[image_id]["error"], (image_id, by_id[image_id]["error"])
    for image_id, status in expected.items():
        row = by_id[image_id]
        assert (row["error"] is None) == (status == "ok")
        assert row["label"] == (0 if image_id.startswith("mixed/") else 1)
        assert row["class_name"] == image_id.split("/")[0]
        assert row["source"] == image_id

    # ok rows: original bytes (never re-encoded), hash, size and mode recorded
    for image_id in [i for i, s in expected.items() if s == "ok"]:
        raw = (tmp_path / "src" / image_id).read_bytes()
        row = by_id[image_id]
        assert row["image"] == raw and row["sha256"] == hashlib.sha256(raw).hexdigest()
        assert row["width"] >= 1 and row["height"] >= 1
    modes = {i.split("/")[1]: by_id[i]["mode"] for i in expected if expected[i] == "ok"}
    assert modes["cmyk.jpg"] == "CMYK" and modes["gray16.png"] == "I;16"
    assert modes["palette_transparent.png"] == "P" and modes["gray.jpg"] == "L"
    assert (by_id["mixed/tiny_1x1.png"]["width"], by_id["mixed/tiny_1x1.png"]["height"]) == (1, 1)
    # error rows keep whatever bytes were read; unreadable ones have none
    assert by_id["mixed/empty.jpg"]["image"] == b""
    assert by_id["mixed/text.jpg"]["image"].startswith(b"hello")
    assert by_id["mixed/fifo.jpg"]["image"] is None and by_id["mixed/fifo.jpg"]["sha256"] is None
    assert by_id["mixed/fifo.jpg"]["n_bytes"] is None

    n_ok = sum(s == "ok" for s in expected.values())
    assert (m.n_total, m.n_ok, m.n_error) == (len(expected), n_ok, len(expected) - n_ok)
    info = read_dataset_info(root, "bad")
    assert (info.n_total, info.n_ok, info.n_error) == (m.n_total, m.n_ok, m.n_error)
    assert info.status_counts["truncated"] == 1 and info.status_counts["unreadable"] >= 2
    assert info.raw["n_ignored"] == 1 and info.raw["ignored_sample"][0]["path"] == "mixed/.DS_Store"
    for shard in info.shards:
        assert shard.n_total == shard.n_ok + shard.n_error
        assert sum(shard.status_counts.values()) == shard.n_total


def test_caller_pixel_limit_and_direct_checks():
    assert check_image(jpeg_bytes(size=(8, 8)), max_image_pixels=100).status == "ok"
    over = check_image(jpeg_bytes(size=(12, 12)), max_image_pixels=100)
    assert (over.status, over.width, over.height) == ("decompression_bomb", 12, 12)
    assert "144 pixels exceeds the limit of 100" in over.error
    bomb = check_image(png_header_bomb())  # Pillow's default limit
    assert bomb.status == "decompression_bomb"
    assert check_image(b"").status == "empty"
    assert check_image(png_bytes("RGBA", (1, 1))).status == "ok"


# ---------------------------------------------------------------------- resume
def test_interrupted_run_resumes_with_only_missing_shards(tmp_path):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    files = make_images(src, 11)
    committed = []

    def crash_after_two(result):
        committed.append(result.index)
        if len(committed) == 2:
            raise Crash("injected after two shards")

    with pytest.raises(Crash):
        shard_dataset("folder", src, root, "d", images_per_shard=3, progress=False, on_shard_done=crash_after_two)

    st = Storage(root)
    visible = st.glob("shards/dataset=d/*")
    assert visible == [st.path(shard_part("d", 0)), st.path(shard_part("d", 1))]
    assert not st.glob("_tmp/*")
    with pytest.raises(FileNotFoundError, match="not \\(completely\\) sharded"):
        list_shards(root, "d")
    first = {
        i: (st.fs.cat_file(st.path(shard_part("d", i))), st.read_marker(marker_key(shard_part("d", i)))) for i in (0, 1)
    }

    m = shard_dataset("folder", src, root, "d", images_per_shard=3, progress=False)
    assert m.skipped == [0, 1] and m.written == [2, 3]
    for i in (0, 1):  # untouched: same bytes, same marker
        assert st.fs.cat_file(st.path(shard_part("d", i))) == first[i][0]
        assert st.read_marker(marker_key(shard_part("d", i))) == first[i][1]
    rows = all_rows(root, "d")
    assert sorted(r["image_id"] for r in rows) == sorted(files) and len(rows) == 11
    assert [s.n_total for s in list_shards(root, "d")] == [3, 3, 3, 2]

    again = shard_dataset("folder", src, root, "d", images_per_shard=3, progress=False)
    assert again.written == [] and again.skipped == [0, 1, 2, 3]


def test_crash_inside_a_shard_leaves_nothing_visible(tmp_path):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    make_images(src, 6)
    plan = plan_shards("folder", src, "d", images_per_shard=3)
    seen = []

    def crash_on_second_image(row):
        seen.append(row["image_id"])
        if len(seen) == 2:
            raise Crash("injected while reading")

    with pytest.raises(Crash):
        write_shard(plan, 0, root, on_image=crash_on_second_image)
    st = Storage(root)
    assert not st.exists(shard_part("d", 0)) and not st.is_done(marker_key(shard_part("d", 0)))


def test_missing_marker_rewrites_only_that_shard(tmp_path):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    make_images(src, 7)
    shard_dataset("folder", src, root, "d", images_per_shard=2, progress=False)
    st = Storage(root)
    st.fs.rm(st.path(st.marker_path("shards/dataset=d/part-00002")))  # crash between file and marker
    m = shard_dataset("folder", src, root, "d", images_per_shard=2, progress=False)
    assert m.written == [2] and m.skipped == [0, 1, 3]
    assert len(all_rows(root, "d")) == 7


def test_changed_source_or_shard_size_replaces_stale_shards(tmp_path):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    make_images(src, 9)
    first = shard_dataset("folder", src, root, "d", images_per_shard=2, progress=False)
    assert len(first.shards) == 5
    second = shard_dataset("folder", src, root, "d", images_per_shard=4, progress=False)
    assert second.fingerprint != first.fingerprint and second.written == [0, 1, 2]
    st = Storage(root)
    assert len(st.glob("shards/dataset=d/part-*.parquet")) == 3
    assert len(st.glob(f"{COMMITS_DIR}/{dataset_dir('d')}/part-*.json")) == 3
    assert len(all_rows(root, "d")) == 9

    Tree(src).put("a/new.jpg", jpeg_bytes(99))  # the download grew
    third = shard_dataset("folder", src, root, "d", images_per_shard=4, progress=False)
    assert third.source_fingerprint != second.source_fingerprint and third.written == [0, 1, 2]
    rows = all_rows(root, "d")
    assert len(rows) == 10 and len({r["image_id"] for r in rows}) == 10
    assert read_dataset_info(root, "d").fingerprint == third.fingerprint


def test_sharding_is_deterministic(tmp_path):
    src = str(tmp_path / "src")
    make_images(src, 8)
    a = shard_dataset("folder", src, str(tmp_path / "a"), "d", images_per_shard=3, progress=False, workers=1)
    b = shard_dataset("folder", src, str(tmp_path / "b"), "d", images_per_shard=3, progress=False, workers=4)
    assert a.fingerprint == b.fingerprint
    cols = ["image_id", "label", "sha256", "status"]
    assert [t.to_pylist() for _, t in iter_shards(str(tmp_path / "a"), "d", cols)] == [
        t.to_pylist() for _, t in iter_shards(str(tmp_path / "b"), "d", cols)
    ]


# ---------------------------------------------------------------------- memory://
def test_memory_source_and_memory_output():
    tag = uuid.uuid4().hex
    src, root = f"memory://src-{tag}/CUB_200_2011", f"memory://out-{tag}"
    mem = fsspec.filesystem("memory")
    try:
        minis = make_cub(src)
        with pytest.warns(DatasetSizeWarning):
            m = shard_dataset("cub", src, root, images_per_shard=4, progress=False)
        assert m.dataset == "cub" and m.n_total == 6 and m.n_error == 0 and len(m.shards) == 2
        assert list_datasets(root) == ["cub"]
        info = read_dataset_info(root, "cub")
        assert info.classnames == minis["test"].classnames and info.text_classnames == info.classnames
        assert info.subset_indices is None and info.expected_size == 5_794 and info.layout == "cub"
        rows = all_rows(root, "cub")
        assert [(r["source"], r["label"], r["image_id"]) for r in rows] == minis["test"].expected
        assert all(r["image"] == mem.cat_file(f"/src-{tag}/CUB_200_2011/{r['source']}") for r in rows)
        assert not mem.glob(f"/out-{tag}/_tmp/*")
        table = read_shard(root, "cub", 1, columns=["image_id", "status"])
        assert table.column_names == ["image_id", "status"] and table.num_rows == 2
        with pytest.warns(DatasetSizeWarning):
            again = shard_dataset("cub", src, root, images_per_shard=4, progress=False)
        assert again.written == [] and again.skipped == [0, 1]
    finally:
        for p in (f"/src-{tag}", f"/out-{tag}"):
            if mem.exists(p):
                mem.rm(p, recursive=True)


# ---------------------------------------------------------------------- every layout end to end
@pytest.mark.parametrize(
    "layout,build",
    [
        ("cub", lambda r: make_cub(r)["test"]),
        ("pets", make_pets),
        ("dtd", lambda r: make_dtd(r)["test1"]),
        ("food101", make_food101),
        ("places365", make_places365),
        ("imagenet-a", None),
    ],
)
def test_each_layout_shards(tmp_path, layout, build):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    if build is None:
        from tasks.datasets.imagenet import imagenet_classnames, imagenet_wnids

        wnids = imagenet_wnids()
        mini = make_class_folders(src, [wnids[11], wnids[6]], per_class=2, label_of=[wnids[6], wnids[11]].index)
        mini.classnames = [imagenet_classnames()[6], imagenet_classnames()[11]]
    else:
        mini = build(src)
    with pytest.warns(DatasetSizeWarning):
        m = shard_dataset(layout, src, root, images_per_shard=2, progress=False)
    rows = all_rows(root, m.dataset)
    assert [(r["source"], r["label"], r["image_id"]) for r in rows] == mini.expected
    assert [r["class_name"] for r in rows] == [mini.classnames[r["label"]] for r in rows]
    assert all(r["status"] == "ok" for r in rows)
    info = read_dataset_info(root, m.dataset)
    assert info.classnames == mini.classnames
    if layout == "imagenet-a":
        assert info.subset_indices == [6, 11] and len(info.text_classnames) == 1000
    table = read_shard(root, m.dataset, 0)
    assert table.schema.remove_metadata() == SHARD_SCHEMA
    assert table.schema.metadata[b"abs.fingerprint"].decode() == m.fingerprint


def test_progress_bar_shows_images_and_shards(tmp_path, capsys):
    src = str(tmp_path / "src")
    make_images(src, 5)
    shard_dataset("folder", src, str(tmp_path / "out"), "d", images_per_shard=2, progress=True)
    err = capsys.readouterr().err
    assert "shard d" in err and "5/5" in err and "shards 3/3" in err


def test_bad_dataset_name_and_unknown_dataset(tmp_path):
    src = str(tmp_path / "src")
    make_images(src, 2)
    with pytest.raises(ValueError, match="dataset name"):
        shard_dataset("folder", src, str(tmp_path / "out"), "../escape", progress=False)
    with pytest.raises(FileNotFoundError, match="run shard_dataset"):
        read_dataset_info(str(tmp_path / "out"), "nothing")


def test_dataset_json_is_committed_next_to_shards(tmp_path):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    make_images(src, 3)
    m = shard_dataset("folder", src, root, "d", images_per_shard=2, progress=False)
    st = Storage(root)
    raw = st.read_json(dataset_info("d"))
    assert raw["classnames"] == ["a", "b", "c"] and raw["layout"] == "folder" and raw["source"] == src
    assert raw["fingerprint"] == m.fingerprint and raw["n_total"] == 3 and raw["n_shards"] == 2
    assert [s["path"] for s in raw["shards"]] == [shard_part("d", 0), shard_part("d", 1)]
    assert isinstance(read_shard(root, "d", 0), pa.Table)


# ---------------------------------------------------------------------- undecodable file names
def test_undecodable_file_names_become_rows_not_a_lost_dataset(tmp_path):
    src, root = tmp_path / "src", str(tmp_path / "out")
    make_images(str(src), 4, classes=("a", "b"))
    good = put_bytes_name(str(src / "a"), b"bad\xff.jpg", jpeg_bytes(42))
    put_bytes_name(str(src / "b"), b"text\xfe.jpg", b"not an image")
    os.symlink(
        os.path.join(os.fsencode(str(src)), b"nowhere\xfd.jpg"),
        os.path.join(os.fsencode(str(src / "b")), b"gone\xfd.jpg"),
    )

    m = shard_dataset("folder", str(src), root, "u", images_per_shard=2, progress=False)
    assert m.n_total == 7
    by_id = {r["image_id"]: r for r in all_rows(root, "u")}
    assert len(by_id) == 7
    ok = by_id["a/bad\\xff.jpg"]
    assert ok["status"] == "ok" and ok["image"] == jpeg_bytes(42) and ok["source"] == "a/bad\\xff.jpg"
    assert (src / "a" / good).read_bytes() == ok["image"]
    assert by_id["b/text\\xfe.jpg"]["status"] == "not_image"
    gone = by_id["b/gone\\xfd.jpg"]
    assert gone["status"] == "unreadable" and "gone\\xfd.jpg" in gone["error"]

    again = shard_dataset("folder", str(src), root, "u", images_per_shard=2, progress=False)
    assert again.written == [] and again.fingerprint == m.fingerprint  # ids stable: resume works


# ---------------------------------------------------------------------- unusable sources fail before writing
def test_empty_sources_raise_layout_error_before_any_shard(tmp_path):
    root = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no class folders"):
        plan_shards("folder", str(tmp_path / "empty"), "e")
    with pytest.raises(LayoutError, match=str(tmp_path / "empty")):
        shard_dataset("folder", str(tmp_path / "empty"), str(root), "e", progress=False)

    (tmp_path / "m.csv").write_text("path,class_name\na.jpg,cat\n")
    with pytest.raises(LayoutError, match=r"lacks column\(s\) \['label'\]"):
        plan_shards("manifest", str(tmp_path / "m.csv"), "m")
    with pytest.raises(LayoutError, match=r"m\.csv lacks column"):
        shard_dataset("manifest", str(tmp_path / "m.csv"), str(root), "m", progress=False)

    # A layout that loads but finds no image of the split (every CUB image here is a test image).
    make_cub(str(tmp_path / "cub"), per_class=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetSizeWarning)
        src = load_source("cub", str(tmp_path / "cub"), split="train")
    with pytest.raises(LayoutError, match="no images found") as e:
        plan_shards(src, dataset_name="c")
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    assert not root.exists() or not list(root.rglob("*.parquet")) and not list(root.rglob("*.json"))


# ---------------------------------------------------------------------- class list before sharding
@pytest.mark.parametrize("layout", ["folder", "imagenet-a", "pets"])
def test_layout_classes_equal_dataset_info_after_sharding(tmp_path, layout):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    if layout == "folder":
        make_class_folders(src, ["tabby__cat", "golden_retriever", "zebra"], per_class=1)
    elif layout == "imagenet-a":
        from tasks.datasets.imagenet import imagenet_wnids

        make_class_folders(
            src, [imagenet_wnids()[6], imagenet_wnids()[11]], per_class=1, label_of=imagenet_wnids().index
        )
    else:
        make_pets(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetSizeWarning)
        names, text = layout_classes(layout, src)
        m = shard_dataset(layout, src, root, "d", progress=False)
    info = read_dataset_info(root, m.dataset)
    assert (names, text) == (info.classnames, info.text_classnames)
    if layout == "imagenet-a":
        assert len(names) == 2 and len(text) == 1000
    if layout == "folder":
        assert names == ["golden retriever", "tabby cat", "zebra"]


# ---------------------------------------------------------------------- one class present
def test_one_class_dataset_is_detected_and_warned(tmp_path):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    make_images(src, 3, classes=("only",))
    plan = plan_shards("folder", src, "one")
    assert plan.n_classes_present == 1 and plan.source.n_classes_present == 1
    with pytest.warns(SingleClassWarning, match="one class present is scored trivially at 100% by every method") as rec:
        shard_dataset("folder", src, root, "one", progress=False)
    assert issubclass(SingleClassWarning, UserWarning)
    assert rec[0].filename == __file__  # points at the caller's line

    two = str(tmp_path / "two")
    make_images(two, 4, classes=("x", "y"))
    assert plan_shards("folder", two, "two").n_classes_present == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingleClassWarning)
        shard_dataset("folder", two, root, "two", progress=False)


# ---------------------------------------------------------------------- concurrent runs on one root
def shard_files(root: str, dataset: str) -> dict[str, bytes]:
    st = Storage(root)
    return {Path(p).name: st.fs.cat_file(p) for p in st.glob(f"shards/dataset={dataset}/part-*.parquet")}


def markers(root: str, dataset: str) -> dict[str, dict]:
    st = Storage(root)
    return {
        Path(p).name: st.read_json(p.removeprefix(st.root_path + "/"))
        for p in st.glob(f"{COMMITS_DIR}/{dataset_dir(dataset)}/part-*.json")
    }


class PausingStorage(Storage):
    """A real Storage that calls hooks before moving a part and before marking it, to force one interleaving."""

    before_write = None
    before_mark = None

    def write_parquet(self, rel_path, table, **kwargs):
        if self.before_write is not None:
            self.before_write(rel_path)
        return super().write_parquet(rel_path, table, **kwargs)

    def mark_done(self, key, manifest):
        if self.before_mark is not None:
            self.before_mark(key)
        super().mark_done(key, manifest)


def test_second_run_does_not_delete_a_part_moved_into_place_but_not_yet_marked(tmp_path):
    """Run B starts while run A has moved its last part into place but not marked it yet.

    B must not delete that part: A then commits it and finalizes, and A's dataset
    must be readable at once; B finishes too, and both equal a single run.
    """
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    make_images(src, 7)
    single = shard_dataset("folder", src, str(tmp_path / "single"), "d", images_per_shard=3, progress=False)
    a_paused, b_prepared, a_done = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, object] = {}

    st_a = PausingStorage(root)

    def a_before_mark(key):
        if key == marker_key(shard_part("d", 2)):  # part 2 is in place, its marker not yet written
            a_paused.set()
            assert b_prepared.wait(60), "run B never got past prepare_shards"

    st_a.before_mark = a_before_mark
    st_b = PausingStorage(root)

    def b_before_write(rel):
        b_prepared.set()  # B's prepare_shards is done; it now rewrites part 2 (no marker yet)
        assert a_done.wait(60), "run A never finished"

    st_b.before_write = b_before_write

    def run(name, st):
        try:
            results[name] = shard_dataset("folder", src, st, "d", images_per_shard=3, progress=False, workers=1)
        except BaseException as e:  # reported below
            results[name] = e
        finally:
            if name == "a":
                if not isinstance(results[name], BaseException):
                    try:  # A's finished dataset, read while B is still running
                        results["a_rows"] = [r for _, t in iter_shards(root, "d") for r in t.to_pylist()]
                    except BaseException as e:
                        results["a_rows"] = e
                a_done.set()

    ta = threading.Thread(target=run, args=("a", st_a))
    ta.start()
    assert a_paused.wait(60)
    tb = threading.Thread(target=run, args=("b", st_b))
    tb.start()
    ta.join(120)
    tb.join(120)
    assert not ta.is_alive() and not tb.is_alive()
    for key in ("a", "b", "a_rows"):
        assert not isinstance(results[key], BaseException), (key, results[key])
    assert len(results["a_rows"]) == 7
    assert results["a"].written == [0, 1, 2]
    assert results["b"].skipped == [0, 1] and results["b"].written == [2]
    assert_same_as_single(root, str(tmp_path / "single"), single.fingerprint)


def assert_same_as_single(root: str, single_root: str, fingerprint: str) -> None:
    files, marks = shard_files(root, "d"), markers(root, "d")
    assert files == shard_files(single_root, "d")  # byte for byte
    assert sorted(marks) == [f"part-{i:05d}.json" for i in range(len(files))]
    assert all(mk["fingerprint"] == fingerprint for mk in marks.values())
    assert read_dataset_info(root, "d").fingerprint == fingerprint
    assert all_rows(root, "d") == all_rows(single_root, "d")
    assert not Storage(root).glob("_tmp/*")


_WORKER = """
import sys
from tasks.steps.shard import shard_dataset
m = shard_dataset("folder", sys.argv[1], sys.argv[2], "d", images_per_shard=2, progress=False, workers=1)
print(len(m.written), len(m.skipped))
"""


def test_two_processes_shard_the_same_source_on_one_root(tmp_path):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    make_images(src, 24)
    single = shard_dataset("folder", src, str(tmp_path / "single"), "d", images_per_shard=2, progress=False)
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, src, root],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        written, skipped = map(int, out.split())
        assert written + skipped == 12
    assert_same_as_single(root, str(tmp_path / "single"), single.fingerprint)


def test_prepare_keeps_unmarked_parts_and_write_shard_replaces_them(tmp_path):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    make_images(src, 5)
    plan = plan_shards("folder", src, "d", images_per_shard=2)
    st = Storage(root)
    st.write_bytes(shard_part("d", 1), b"an unmarked part: in flight or stale")
    st.write_bytes(shard_part("d", 7), b"beyond the plan")
    st.write_json(st.marker_path(marker_key(shard_part("d", 7))), {"fingerprint": plan.fingerprint})
    st.write_bytes(shard_part("d", 2), b"another fingerprint's part")
    st.write_json(st.marker_path(marker_key(shard_part("d", 2))), {"fingerprint": "other"})
    st.write_json(dataset_info("d"), {"fingerprint": "other"})
    st.write_json(st.marker_path(marker_key(dataset_info("d"))), {"fingerprint": "other"})

    removed = prepare_shards(plan, st)
    assert sorted(removed) == sorted([
        st.marker_path(marker_key(dataset_info("d"))), dataset_info("d"),
        st.marker_path(marker_key(shard_part("d", 2))),
        st.marker_path(marker_key(shard_part("d", 7))), shard_part("d", 7),
    ])  # fmt: skip
    assert st.fs.cat_file(st.path(shard_part("d", 1))) == b"an unmarked part: in flight or stale"
    assert st.exists(shard_part("d", 2)) and not st.is_done(
        marker_key(shard_part("d", 2))
    )  # rewritten below, not deleted
    assert prepare_shards(plan, st) == []  # idempotent: a second run's prepare removes nothing

    res = write_shard(plan, 1, st)
    assert not res.skipped and res.n_total == 2
    assert [r["image_id"] for r in read_shard(root, "d", 1, columns=["image_id"]).to_pylist()] == [
        e.image_id for e in plan.entries(1)
    ]
    m = shard_dataset("folder", src, root, "d", images_per_shard=2, progress=False)
    assert m.skipped == [1] and m.written == [0, 2]
    assert sorted(shard_files(root, "d")) == [f"part-{i:05d}.parquet" for i in range(3)]
    assert len(all_rows(root, "d")) == 5

    forced = prepare_shards(plan, st, force=True)  # markers go, part files within the plan stay
    assert sorted(forced) == sorted(
        [
            st.marker_path(marker_key(dataset_info("d"))),
            dataset_info("d"),
            *(st.marker_path(marker_key(shard_part("d", i))) for i in range(3)),
        ]
    )
    assert sorted(shard_files(root, "d")) == [f"part-{i:05d}.parquet" for i in range(3)]


# ---------------------------------------------------------------------- worker processes
@pytest.fixture
def processes_for_small_sets(monkeypatch):
    """Worker processes even for a handful of images, in tasks of 3 with few in flight (to cross shard edges)."""
    import tasks.steps.shard as shard_mod

    monkeypatch.setattr(shard_mod, "MIN_IMAGES_FOR_PROCESSES", 1)
    monkeypatch.setattr(shard_mod, "IMAGES_PER_TASK", 3)
    monkeypatch.setattr(shard_mod, "TASKS_IN_FLIGHT_PER_WORKER", 2)
    pools = []
    real_init = shard_mod._ProcessRows.__init__

    def counting_init(self, plan, processes, schedule):
        pools.append(processes)
        real_init(self, plan, processes, schedule)

    monkeypatch.setattr(shard_mod._ProcessRows, "__init__", counting_init)
    return pools


def _without_times(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("committed_at", "finalized_at")}


def _assert_same_output(a: str, b: str, dataset: str) -> None:
    assert shard_files(a, dataset) == shard_files(b, dataset)  # byte for byte
    ma, mb = markers(a, dataset), markers(b, dataset)
    assert {k: _without_times(v) for k, v in ma.items()} == {k: _without_times(v) for k, v in mb.items()}
    info_a, info_b = Storage(a).read_json(dataset_info(dataset)), Storage(b).read_json(dataset_info(dataset))
    assert _without_times({**info_a, "source": None}) == _without_times({**info_b, "source": None})


def test_worker_processes_write_the_same_bytes_as_in_process(tmp_path, processes_for_small_sets):
    src = tmp_path / "src"
    expected = make_bad_folder(str(src))
    make_images(str(src / "more"), 7, classes=("x", "y"))
    put_bytes_name(str(src / "normal"), b"bad\xff.jpg", jpeg_bytes(42))
    one, procs = str(tmp_path / "in-process"), str(tmp_path / "processes")
    a = shard_dataset("folder", str(src), one, "d", images_per_shard=4, progress=False, workers=0)
    assert processes_for_small_sets == []
    b = shard_dataset("folder", str(src), procs, "d", images_per_shard=4, progress=False, workers=2)
    assert processes_for_small_sets == [2]
    assert a.fingerprint == b.fingerprint and a.status_counts == b.status_counts and len(a.shards) == 6
    _assert_same_output(one, procs, "d")
    by_id = {r["image_id"]: r for r in all_rows(procs, "d")}
    for image_id, status in expected.items():  # error rows recorded by the workers too
        assert by_id[image_id]["status"] == status, image_id
    assert "truncated" in by_id["mixed/truncated.jpg"]["error"]
    assert by_id["normal/bad\\xff.jpg"]["status"] == "ok"


def test_worker_processes_check_unlisted_files_like_this_process(tmp_path, processes_for_small_sets):
    """A manifest lists no sizes or kinds: the workers stat each file first (a FIFO must not block)."""
    src = tmp_path / "src"
    expected = make_bad_folder(str(src))
    rows = [f"{p},{0 if p.startswith('mixed/') else 1}" for p in sorted(expected)] + ["mixed/gone.jpg,0", "normal,1"]
    (src / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    one, procs = str(tmp_path / "in-process"), str(tmp_path / "processes")
    shard_dataset("manifest", str(src / "m.csv"), one, "m", images_per_shard=5, progress=False, workers=1)
    shard_dataset("manifest", str(src / "m.csv"), procs, "m", images_per_shard=5, progress=False, workers=2)
    assert processes_for_small_sets == [2]
    _assert_same_output(one, procs, "m")
    by_id = {r["source"]: r for r in all_rows(procs, "m")}
    assert (
        by_id["mixed/fifo.jpg"]["status"] == "unreadable" and "not a regular file" in by_id["mixed/fifo.jpg"]["error"]
    )
    assert by_id["mixed/gone.jpg"]["status"] == "missing"
    assert by_id["normal"]["status"] == "unreadable"  # a folder
    assert by_id["mixed/truncated.jpg"]["status"] == "truncated"


def test_worker_processes_resume_and_skip_like_this_process(tmp_path, processes_for_small_sets):
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    make_images(src, 11)
    single = str(tmp_path / "single")
    shard_dataset("folder", src, single, "d", images_per_shard=3, progress=False, workers=0)
    committed = []

    def crash_after_two(result):
        committed.append(result.index)
        if len(committed) == 2:
            raise Crash("injected after two shards")

    with pytest.raises(Crash):
        shard_dataset(
            "folder", src, root, "d", images_per_shard=3, progress=False, workers=2, on_shard_done=crash_after_two
        )
    st = Storage(root)
    st.fs.rm(st.path(st.marker_path(marker_key(shard_part("d", 0)))))  # shard 0 to redo, 1 committed
    m = shard_dataset("folder", src, root, "d", images_per_shard=3, progress=False, workers=2)
    assert m.written == [0, 2, 3] and m.skipped == [1]
    _assert_same_output(single, root, "d")


def test_process_rows_in_any_order_equal_build_row(tmp_path, processes_for_small_sets):
    """Rows asked for out of schedule (a shard committed meanwhile by another run, or one never scheduled)."""
    from tasks.steps.shard import _ProcessRows, build_row

    src = str(tmp_path / "src")
    make_images(src, 10)
    plan = plan_shards("folder", src, "d", images_per_shard=3)

    def expected(i):
        return [
            build_row(plan.source, e, max_image_pixels=plan.max_image_pixels, max_file_bytes=plan.max_file_bytes)
            for e in plan.entries(i)
        ]

    with _ProcessRows(plan, 2, [0, 1, 2]) as rows:
        assert list(rows.rows(1)) == expected(1)  # shard 0 skipped
        assert list(rows.rows(3)) == expected(3)  # never scheduled: first, then the rest as planned
        assert list(rows.rows(2)) == expected(2)
        assert list(rows.rows(0)) == expected(0)


_IMPORTS = """
import sys
import tasks.store.images
heavy = sorted(m for m in ("torch", "prefect", "pyarrow", "timm", "open_clip", "tasks.steps.shard", "tasks.datasets") if m in sys.modules)
import tasks.steps.shard
print(heavy, sorted(m for m in ("torch", "prefect", "timm", "open_clip") if m in sys.modules))
"""


def test_shard_workers_import_neither_torch_nor_prefect(tmp_path, processes_for_small_sets):
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", _IMPORTS], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "[]"]  # the worker module, then tasks.steps.shard itself

    from tasks.steps.shard import _ProcessRows

    src = str(tmp_path / "src")
    make_images(src, 2)
    plan = plan_shards("folder", src, "d", images_per_shard=2)
    with _ProcessRows(plan, 1, []) as rows:  # what a real worker process has imported
        modules = rows.pool.submit(eval, "sorted(__import__('sys').modules)").result(timeout=120)
    assert "tasks.store.images" in modules or "PIL.Image" in modules
    assert not {"torch", "prefect", "pyarrow", "tasks.steps.shard", "tasks.datasets", "timm", "open_clip"} & set(
        modules
    )


def test_worker_count_default_env_and_small_sets(tmp_path, monkeypatch):
    import tasks.steps.shard as shard_mod

    src = str(tmp_path / "src")
    make_images(src, 4)
    plan = plan_shards("folder", src, "d", images_per_shard=2)
    monkeypatch.setenv("ABS_EVAL_SHARD_WORKERS", "0")
    assert shard_mod.default_workers() == 0 and shard_mod._process_count(plan, None, 10_000) == 0
    monkeypatch.setenv("ABS_EVAL_SHARD_WORKERS", "3")
    assert shard_mod._process_count(plan, None, 10_000) == 3
    assert shard_mod._process_count(plan, None, shard_mod.MIN_IMAGES_FOR_PROCESSES - 1) == 0  # small: in-process
    assert shard_mod._process_count(plan, 1, 10_000) == 0
    monkeypatch.delenv("ABS_EVAL_SHARD_WORKERS")
    assert shard_mod.default_workers() >= 1


def test_row_group_images_equal_the_shard_column_and_hold_one_group(tmp_path, monkeypatch):
    """``RowGroupImages`` (what the DINO cache and inference read images through) gives every
    row's bytes, in any order, reading one Parquet row group at a time."""
    import tasks.steps.shard as shard_mod
    from tasks.store.images import RowGroupImages

    monkeypatch.setattr(shard_mod, "ROWS_PER_GROUP", 4)
    monkeypatch.setitem(shard_mod._PARQUET_OPTIONS, "row_group_size", 4)
    src, root = str(tmp_path / "src"), str(tmp_path / "out")
    make_images(src, 11)
    shard_dataset("folder", src, root, "d", images_per_shard=11, progress=False)
    st = Storage(root)
    want = read_shard(st, "d", 0, columns=["image"]).column("image").to_pylist()
    with RowGroupImages(st, shard_part("d", 0)) as images:
        assert len(images) == len(want) == 11
        assert [images[i] for i in range(11)] == want
        assert images._pf.metadata.num_row_groups == 3
        assert images[10] == want[10] and images[0] == want[0]  # backwards too
        assert len(images._values) == 4  # one group held, not the shard
    with pytest.raises(IndexError):
        RowGroupImages(st, shard_part("d", 0))[11]
