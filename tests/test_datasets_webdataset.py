"""The ``webdataset`` layout: CLIP_benchmark's WebDataset tar shards, read by offsets, never re-encoded."""

from __future__ import annotations

import io
import posixpath
import tarfile
import uuid

import fsspec
import pytest
from dataset_fixtures import jpeg_bytes, png_bytes
from PIL import Image, features

from tasks.datasets import DatasetSizeWarning, LayoutError, layout_classes, load_source
from tasks.datasets.webdataset import TarEntry
from tasks.steps.shard import iter_shards, shard_dataset

CLASSES = ["abyssinian cat", "bulldog", "golden retriever"]
TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}."]
HAS_WEBP = features.check("webp")


def webp_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 5), (seed * 40 % 256, 10, 200)).save(buf, "WEBP")
    return buf.getvalue()


def image(kind: str, seed: int) -> bytes:
    if kind == "jpg":
        return jpeg_bytes(seed)
    if kind == "png":
        return png_bytes(size=(3 + seed % 4, 4))
    return webp_bytes(seed)


def make_tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def put(url: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


def make_wds(root: str, *, n_tars: int = 2, per_tar: int = 4, classnames: bool = True) -> dict[str, tuple[bytes, int]]:
    """``<root>/test/{0..n-1}.tar`` + classnames.txt and templates beside ``test/``; returns ``{image_id: (bytes, label)}``."""
    kinds = ["jpg", "png"] + (["webp"] if HAS_WEBP else [])
    expected: dict[str, tuple[bytes, int]] = {}
    for t in range(n_tars):
        members = []
        for k in range(per_tar):
            key, i = f"s{t:02d}{k:04d}", t * per_tar + k
            data, label = image(kinds[i % len(kinds)], i), i % len(CLASSES)
            members += [
                (f"{key}.{kinds[i % len(kinds)]}", data),
                (f"{key}.cls", f"{label}\n".encode()),
                (f"{key}.txt", b"a caption"),
            ]
            expected[f"{t}.tar/{key}"] = (data, label)
        put(f"{root}/test/{t}.tar", make_tar(members))
    if classnames:
        put(f"{root}/classnames.txt", ("\n".join(CLASSES) + "\n").encode())
    put(f"{root}/zeroshot_classification_templates.txt", ("\n".join(TEMPLATES) + "\n").encode())
    return expected


def rows_of(root: str, dataset: str) -> list[dict]:
    return [r for _, t in iter_shards(root, dataset) for r in t.to_pylist()]


# ---------------------------------------------------------------------- listing
def test_load_source_lists_samples_classes_labels_and_templates(tmp_path):
    expected = make_wds(str(tmp_path / "wds_pets"))
    ds = load_source("webdataset", str(tmp_path / "wds_pets" / "test"))
    assert ds.classnames == CLASSES and ds.split == "test" and ds.name == "wds_pets"
    assert [e.image_id for e in ds.entries] == list(expected)  # tar order, 0.tar before 1.tar
    assert [e.label for e in ds.entries] == [lbl for _, lbl in expected.values()]
    assert all(isinstance(e, TarEntry) and e.size == len(expected[e.image_id][0]) for e in ds.entries)
    assert ds.entries[0].path == "0.tar/s000000.jpg"
    info = ds.describe()
    assert info["templates"] == TEMPLATES and info["n_images"] == len(expected)
    assert info["classnames_file"].endswith("classnames.txt")
    # The folder holding test/ gives the very same source (and fingerprint).
    parent = load_source("webdataset", str(tmp_path / "wds_pets"))
    assert [(e.image_id, e.label) for e in parent.entries] == [(e.image_id, e.label) for e in ds.entries]
    assert parent.fingerprint() == ds.fingerprint()
    # Bytes are read by offset, exactly as stored in the tar.
    assert all(ds.read_entry_bytes(e) == expected[e.image_id][0] for e in ds.entries)


def test_classnames_option_and_natural_tar_order(tmp_path):
    root = str(tmp_path / "d")
    make_wds(root, n_tars=11, per_tar=1, classnames=False)
    put(str(tmp_path / "other.txt"), b"x\ny\nz\n")
    ds = load_source("webdataset", root, classnames=str(tmp_path / "other.txt"))
    assert ds.classnames == ["x", "y", "z"]
    assert [e.image_id.split("/")[0] for e in ds.entries] == [f"{i}.tar" for i in range(11)]  # 2.tar before 10.tar
    assert layout_classes("webdataset", root, {"classnames": str(tmp_path / "other.txt")}) == (
        ["x", "y", "z"],
        ["x", "y", "z"],
    )


# ---------------------------------------------------------------------- sharding
def test_shards_store_the_original_member_bytes_and_rerun_skips(tmp_path):
    expected = make_wds(str(tmp_path / "wds"), n_tars=2, per_tar=5)
    out = str(tmp_path / "out")
    m = shard_dataset("webdataset", str(tmp_path / "wds" / "test"), out, "wds", images_per_shard=4, progress=False)
    assert m.n_total == 10 and m.n_ok == 10 and m.n_error == 0 and m.written == [0, 1, 2]
    rows = rows_of(out, "wds")
    assert [r["image_id"] for r in rows] == list(expected)
    for r in rows:
        data, label = expected[r["image_id"]]
        assert r["image"] == data  # not decoded and re-encoded
        assert r["label"] == label and r["class_name"] == CLASSES[label] and r["status"] == "ok"
    again = shard_dataset("webdataset", str(tmp_path / "wds" / "test"), out, "wds", images_per_shard=4, progress=False)
    assert again.written == [] and again.skipped == [0, 1, 2]
    assert layout_classes("webdataset", str(tmp_path / "wds" / "test")) == (CLASSES, CLASSES)


def test_truncated_member_non_image_member_and_missing_image_are_one_error_row_each(tmp_path):
    root = str(tmp_path / "bad")
    good = [(f"g{k}.jpg", jpeg_bytes(k)) for k in range(3)]
    put(f"{root}/test/0.tar", make_tar([m for k, g in enumerate(good) for m in (g, (f"g{k}.cls", b"1"))]))
    last = jpeg_bytes(99, size=(64, 64))
    tar1 = make_tar(
        [
            ("text.jpg", b"hello, this is not an image"), ("text.cls", b"0"),
            ("onlylabel.cls", b"2"),
            ("last.cls", b"2"), ("last.jpg", last),
        ]
    )  # fmt: skip
    cut = tar1.index(last) + len(last) // 2
    put(f"{root}/test/1.tar", tar1[:cut])  # the tar ends in the middle of last.jpg
    put(f"{root}/classnames.txt", ("\n".join(CLASSES)).encode())
    out = str(tmp_path / "out")
    with pytest.warns(DatasetSizeWarning, match="1.tar is truncated"):
        m = shard_dataset("webdataset", f"{root}/test", out, "bad", images_per_shard=4, progress=False)
    rows = {r["image_id"]: r for r in rows_of(out, "bad")}
    assert m.n_total == 6 == len(rows) and len(m.shards) == 2
    assert {i: r["status"] for i, r in rows.items()} == {
        "0.tar/g0": "ok", "0.tar/g1": "ok", "0.tar/g2": "ok",
        "1.tar/text": "not_image", "1.tar/onlylabel": "missing", "1.tar/last": "truncated",
    }  # fmt: skip
    assert "truncated tar" in rows["1.tar/last"]["error"] and rows["1.tar/last"]["image"] is None
    assert [rows[f"0.tar/g{k}"]["image"] for k in range(3)] == [g[1] for g in good]
    assert m.status_counts == {"missing": 1, "not_image": 1, "ok": 3, "truncated": 1}


# ---------------------------------------------------------------------- memory://
def test_memory_source_and_memory_output():
    tag = uuid.uuid4().hex[:8]
    src, out = f"memory://wds-{tag}/cars", f"memory://out-{tag}"
    expected = make_wds(src, n_tars=2, per_tar=3)
    try:
        ds = load_source("webdataset", src)  # the folder holding test/
        assert ds.split == "test" and len(ds) == 6 and ds.describe()["templates"] == TEMPLATES
        m = shard_dataset("webdataset", src, out, "cars", images_per_shard=4, progress=False)
        assert m.n_ok == 6
        assert {r["image_id"]: r["image"] for r in rows_of(out, "cars")} == {k: v[0] for k, v in expected.items()}
    finally:
        mem = fsspec.filesystem("memory")
        for p in (f"/wds-{tag}", f"/out-{tag}"):
            if mem.exists(p):
                mem.rm(p, recursive=True)


# ---------------------------------------------------------------------- errors
def test_missing_classnames_unreadable_tar_and_no_tars_are_one_line_layout_errors(tmp_path):
    root = str(tmp_path / "nocls")
    make_wds(root, n_tars=1, per_tar=2, classnames=False)
    with pytest.raises(LayoutError, match=r"missing .*classnames\.txt.*'classnames'") as e:
        load_source("webdataset", f"{root}/test")
    assert "\n" not in str(e.value)

    put(f"{root}/classnames.txt", b"a\nb\nc\n")
    put(f"{root}/test/1.tar", b"this is not a tar file at all" * 3)
    with pytest.raises(LayoutError, match=r"1\.tar is not a readable tar file") as e:
        load_source("webdataset", f"{root}/test")
    assert "\n" not in str(e.value)

    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no .tar files"):
        load_source("webdataset", str(tmp_path / "empty"))
    with pytest.raises(LayoutError, match="missing .*other.txt"):
        load_source("webdataset", root, classnames=str(tmp_path / "other.txt"))
