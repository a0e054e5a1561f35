"""The ``hf-parquet`` layout: Hugging Face datasets Parquet files, image bytes stored as they are."""

from __future__ import annotations

import json
import pickle
import posixpath
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_fixtures import jpeg_bytes, png_bytes

from tasks.datasets import LayoutError, layout_classes, load_source
from tasks.datasets.hf_parquet import ParquetEntry
from tasks.steps.shard import iter_shards, shard_dataset

NAMES = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"]
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def hf_table(rows: list[tuple[bytes | None, str | None, int]], names: list[str] | None = NAMES) -> pa.Table:
    """A table in the shape ``datasets`` writes: struct image column, int64 label, ``huggingface`` metadata."""
    table = pa.table(
        {
            "image": pa.array([{"bytes": b, "path": p} for b, p, _ in rows], IMAGE_TYPE),
            "label": pa.array([lbl for _, _, lbl in rows], pa.int64()),
        }
    )
    if names is not None:
        features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    return table


def write(url: str, table: pa.Table, row_group_size: int = 2) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=row_group_size)


def make_hf(
    root: str, *, n_files: int = 2, per_file: int = 5, with_paths: bool = True, names=NAMES
) -> dict[str, tuple[bytes, int]]:
    """``<root>/data/validation-0000k-of-0000n.parquet`` (and a train file); returns ``{image_id: (bytes, label)}``."""
    expected: dict[str, tuple[bytes, int]] = {}
    for k in range(n_files):
        rows = []
        for r in range(per_file):
            i = k * per_file + r
            data = jpeg_bytes(i) if i % 2 else png_bytes(size=(2 + i % 5, 3))
            path = f"ILSVRC2012_val_{i:08d}.JPEG" if with_paths else None
            rows.append((data, path, i % len(NAMES)))
            stem = f"validation-{k:05d}-of-{n_files:05d}"
            expected[path or f"{stem}/{r}"] = (data, i % len(NAMES))
        write(f"{root}/data/validation-{k:05d}-of-{n_files:05d}.parquet", hf_table(rows, names))
    write(f"{root}/data/train-00000-of-00001.parquet", hf_table([(jpeg_bytes(77), "t.JPEG", 0)], names))
    return expected


def rows_of(root: str, dataset: str) -> list[dict]:
    return [r for _, t in iter_shards(root, dataset) for r in t.to_pylist()]


# ---------------------------------------------------------------------- listing
def test_folder_of_split_files_gives_entries_classes_and_labels(tmp_path):
    expected = make_hf(str(tmp_path / "imagenet-1k"))
    with pytest.raises(LayoutError, match=r"holds the splits \['train', 'validation'\]; pass split="):
        load_source("hf-parquet", str(tmp_path / "imagenet-1k" / "data"))
    ds = load_source("hf-parquet", str(tmp_path / "imagenet-1k" / "data"), split="validation")
    assert ds.classnames == NAMES and ds.split == "validation" and ds.name == "imagenet-1k-validation"
    assert [e.image_id for e in ds.entries] == list(expected)  # the struct's paths: present and unique
    assert [e.label for e in ds.entries] == [lbl for _, lbl in expected.values()]
    assert all(isinstance(e, ParquetEntry) for e in ds.entries)
    assert [(e.row_group, e.row) for e in ds.entries[:5]] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert ds.entries[6].path == "validation-00001-of-00002.parquet#1"
    assert all(ds.read_entry_bytes(e) == expected[e.image_id][0] for e in ds.entries)
    assert len(ds._groups) <= 2  # row groups are cached, a few at a time
    # The same source survives pickling (to another worker) without its cache.
    again = pickle.loads(pickle.dumps(ds))
    assert again.read_entry_bytes(again.entries[3]) == expected[again.entries[3].image_id][0]
    # One file, or a glob, work too.
    one = load_source("hf-parquet", str(tmp_path / "imagenet-1k" / "data" / "validation-00001-of-00002.parquet"))
    assert [e.image_id for e in one.entries] == list(expected)[5:]
    glob = load_source("hf-parquet", str(tmp_path / "imagenet-1k" / "data" / "validation-*.parquet"))
    assert [e.image_id for e in glob.entries] == list(expected) and glob.fingerprint() == ds.fingerprint()


def test_ids_fall_back_to_stem_and_row_and_classnames_option(tmp_path):
    root = str(tmp_path / "nometa")
    expected = make_hf(root, n_files=1, per_file=4, with_paths=False, names=None)
    src = f"{root}/data/validation-00000-of-00001.parquet"
    with pytest.raises(LayoutError, match=r"no class names.*'classnames'") as e:
        load_source("hf-parquet", src)
    assert "\n" not in str(e.value)
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    ds = load_source("hf-parquet", src, classnames=str(tmp_path / "names.txt"))
    assert ds.classnames == ["a", "b", "c"]
    assert [e.image_id for e in ds.entries] == list(expected) == [f"validation-00000-of-00001/{r}" for r in range(4)]
    assert layout_classes("hf-parquet", src, {"classnames": str(tmp_path / "names.txt")}) == (
        ["a", "b", "c"],
        ["a", "b", "c"],
    )


def test_other_column_names_and_bad_columns(tmp_path):
    t = hf_table([(jpeg_bytes(1), "x.jpg", 1), (jpeg_bytes(2), "y.jpg", 0)]).rename_columns(["img", "fine_label"])
    t = t.replace_schema_metadata(
        {
            "huggingface": json.dumps(
                {"info": {"features": {"fine_label": {"names": ["p", "q"], "_type": "ClassLabel"}}}}
            )
        }
    )
    write(str(tmp_path / "cifar.parquet"), t)
    ds = load_source("hf-parquet", str(tmp_path / "cifar.parquet"), image_column="img", label_column="fine_label")
    assert ds.classnames == ["p", "q"] and [e.image_id for e in ds.entries] == ["x.jpg", "y.jpg"]
    with pytest.raises(LayoutError, match=r"no column 'image'.*image_column"):
        load_source("hf-parquet", str(tmp_path / "cifar.parquet"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(LayoutError, match="broken.parquet is not a readable Parquet file"):
        load_source("hf-parquet", str(tmp_path / "broken.parquet"))
    with pytest.raises(LayoutError, match="does not exist"):
        load_source("hf-parquet", str(tmp_path / "nothing-here"))


# ---------------------------------------------------------------------- sharding
def test_shards_keep_the_original_bytes_bad_rows_are_one_row_each_and_rerun_skips(tmp_path):
    good = [jpeg_bytes(i) if i % 2 else png_bytes(size=(3, 2 + i)) for i in range(5)]
    rows = [
        (good[0], "a.jpg", 0),
        (None, "null.jpg", 1),
        (good[1], "b.jpg", 2),
        (b"not an image at all", "text.jpg", 1),
    ]
    rows += [(g, f"g{i}.jpg", i % 3) for i, g in enumerate(good[2:])]
    write(str(tmp_path / "src" / "test-00000-of-00001.parquet"), hf_table(rows), row_group_size=3)
    out = str(tmp_path / "out")
    m = shard_dataset("hf-parquet", str(tmp_path / "src"), out, "hf", images_per_shard=3, progress=False)
    assert m.n_total == 7 and len(m.shards) == 3 and m.written == [0, 1, 2]
    assert m.status_counts == {"missing": 1, "not_image": 1, "ok": 5}
    by_id = {r["image_id"]: r for r in rows_of(out, "hf")}
    assert by_id["null.jpg"]["status"] == "missing" and "no image bytes" in by_id["null.jpg"]["error"]
    assert by_id["text.jpg"]["status"] == "not_image"
    for data, path, label in rows:
        r = by_id[path]
        assert r["label"] == label and r["class_name"] == NAMES[label]
        if r["status"] == "ok":
            assert r["image"] == data  # stored exactly as in the Parquet file, never re-encoded
    again = shard_dataset("hf-parquet", str(tmp_path / "src"), out, "hf", images_per_shard=3, progress=False)
    assert again.written == [] and again.skipped == [0, 1, 2]
    assert layout_classes("hf-parquet", str(tmp_path / "src")) == (NAMES, NAMES)


def test_memory_source_glob_and_memory_output():
    tag = uuid.uuid4().hex[:8]
    src, out = f"memory://hf-{tag}/imagenet-1k", f"memory://out-{tag}"
    expected = make_hf(src, n_files=2, per_file=3)
    try:
        m = shard_dataset(
            "hf-parquet", f"{src}/data/validation-*.parquet", out, "inet", images_per_shard=4, progress=False
        )
        assert m.n_ok == 6
        assert {r["image_id"]: (r["image"], r["label"]) for r in rows_of(out, "inet")} == expected
    finally:
        mem = fsspec.filesystem("memory")
        for p in (f"/hf-{tag}", f"/out-{tag}"):
            if mem.exists(p):
                mem.rm(p, recursive=True)
