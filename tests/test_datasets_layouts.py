"""Each dataset layout, built in miniature with its real file names and index formats."""

from __future__ import annotations

import json
import os
import pkgutil
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_fixtures import (
    Tree,
    jpeg_bytes,
    make_class_folders,
    make_cub,
    make_dtd,
    make_food101,
    make_manifest_images,
    make_pets,
    make_places365,
    put_bytes_name,
)

from tasks.datasets import (
    DatasetSizeWarning,
    Layout,
    LayoutError,
    escape_undecodable,
    get_layout,
    layout_classes,
    list_layouts,
    load_source,
    register_layout,
)
from tasks.datasets.imagenet import imagenet_classnames, imagenet_wnids, official_subset_indices

SHARED_DESCRIPTIONS = Path("/work/shared/data/descriptions/imagenet")

OFFICIAL_SIZES = {
    "imagenet": 50_000,
    "imagenet-v2": 10_000,
    "imagenet-sketch": 50_889,
    "imagenet-a": 7_500,
    "imagenet-r": 30_000,
    "cub": 5_794,
    "pets": 3_669,
    "dtd": 1_880,
    "food101": 25_250,
    "places365": 36_500,
}


def load_quiet(layout: str, source: str, **kw):
    """Load a miniature; its size never matches the official one, so catch that warning."""
    with pytest.warns(DatasetSizeWarning):
        return load_source(layout, source, **kw)


def assert_matches(ds, mini) -> None:
    assert [(e.path, e.label, e.image_id) for e in ds.entries] == mini.expected
    if mini.classnames:
        assert ds.classnames == mini.classnames


# ---------------------------------------------------------------------- registry
def test_registry_lists_every_layout():
    assert set(list_layouts()) == {
        "imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r",
        "cub", "pets", "dtd", "food101", "places365", "folder", "manifest", "webdataset", "hf-parquet",
    }  # fmt: skip
    assert get_layout("oxford-pets").name == "pets"
    assert get_layout("CUB_200_2011".replace("_", "-")).name == "cub"
    with pytest.raises(KeyError, match="known layouts: cub"):
        get_layout("mnist")


def test_registry_refuses_a_second_layout_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):

        @register_layout("dtd")
        class Other(Layout):
            def _load(self, fs, root, **kw):  # pragma: no cover
                raise NotImplementedError


@pytest.mark.parametrize("layout,size", sorted(OFFICIAL_SIZES.items()))
def test_official_evaluation_sizes(layout, size):
    lay = get_layout(layout)
    assert lay.expected_size(lay.default_split) == size


def test_missing_source_names_the_path(tmp_path):
    with pytest.raises(LayoutError, match="does-not-exist"):
        load_source("imagenet", str(tmp_path / "does-not-exist"))


# ---------------------------------------------------------------------- ImageNet family
def test_imagenet_names_and_wnids_come_from_the_libraries():
    names, wnids = imagenet_classnames(), imagenet_wnids()
    assert len(names) == len(wnids) == 1000
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert (wnids[999], names[999]) == ("n15075141", "toilet paper")


@pytest.mark.parametrize("layout", ["imagenet", "imagenet-sketch"])
def test_imagenet_wnid_folders(tmp_path, layout):
    wnids = imagenet_wnids()
    picked = [wnids[999], wnids[0], wnids[500], wnids[1]]
    mini = make_class_folders(str(tmp_path), picked, per_class=2, label_of=wnids.index)
    Tree(str(tmp_path)).put("README.txt", "not an image")
    Tree(str(tmp_path)).put(f"{wnids[0]}/.DS_Store", b"junk")
    with pytest.warns(DatasetSizeWarning, match=f"official evaluation set has {OFFICIAL_SIZES[layout]}"):
        ds = load_source(layout, str(tmp_path))
    assert_matches(ds, mini)
    assert ds.labels == [0, 0, 1, 1, 500, 500, 999, 999]
    assert ds.classnames == list(imagenet_classnames())
    assert ds.text_classnames == ds.classnames
    assert ds.subset_indices is None
    assert ds.class_ids == list(wnids)
    assert ds.entries[0].image_id == f"{wnids[0]}/img_0000.JPEG"
    assert ds.entries[0].size == len(jpeg_bytes(2))
    assert sorted(i.path for i in ds.ignored) == ["README.txt", f"{wnids[0]}/.DS_Store"]
    assert ds.name == layout and ds.expected_size == OFFICIAL_SIZES[layout]


def test_imagenet_parent_of_val_folder(tmp_path):
    wnids = imagenet_wnids()
    t = Tree(str(tmp_path))
    t.put(f"val/{wnids[3]}/ILSVRC2012_val_00000001.JPEG", jpeg_bytes())
    t.put("train/n01440764/n01440764_1.JPEG", jpeg_bytes())
    t.put("ILSVRC2012_devkit_t12.tar.gz", b"archive")
    ds = load_quiet("imagenet", str(tmp_path))
    assert [(e.path, e.label) for e in ds.entries] == [(f"{wnids[3]}/ILSVRC2012_val_00000001.JPEG", 3)]
    assert ds.root_path.endswith("/val")


def test_imagenet_rejects_unknown_and_flat_folders(tmp_path):
    t = Tree(str(tmp_path / "bad"))
    t.put("n01440764/a.JPEG", jpeg_bytes())
    t.put("cats/b.jpg", jpeg_bytes())
    with pytest.raises(LayoutError, match=r"not ImageNet classes.*cats.*WordNet id"):
        load_source("imagenet", t.root)
    flat = Tree(str(tmp_path / "flat"))
    flat.put("ILSVRC2012_val_00000001.JPEG", jpeg_bytes())
    with pytest.raises(LayoutError, match=r"no class folders.*torchvision"):
        load_source("imagenet", flat.root)


def test_imagenet_v2_numeric_folders(tmp_path):
    folders = ["0", "1", "2", "10", "999"]
    mini = make_class_folders(str(tmp_path), folders, per_class=2, label_of=int)
    ds = load_quiet("imagenet-v2", str(tmp_path))
    assert_matches(ds, mini)
    assert sorted(set(ds.labels)) == [0, 1, 2, 10, 999]
    assert ds.labels == sorted(ds.labels)  # numeric, not lexicographic, order
    assert ds.classnames == list(imagenet_classnames()) and ds.subset_indices is None
    Tree(str(tmp_path)).put("1000/x.jpeg", jpeg_bytes())
    with pytest.raises(LayoutError, match=r"'1000'.*0 \.\. 999"):
        load_source("imagenet-v2", str(tmp_path))


def _official_wnids(subset: str) -> list[str]:
    data = pkgutil.get_data("timm.data", f"_info/{subset}_synsets.txt")
    assert data is not None
    return data.decode().split()


@pytest.mark.parametrize(
    "layout,first_indices",
    [("imagenet-a", [6, 11, 13, 15, 17]), ("imagenet-r", [1, 2, 4, 6, 8])],
)
def test_imagenet_a_r_subset_matches_the_200_folders(tmp_path, layout, first_indices):
    folders = _official_wnids(layout.replace("-", "_"))
    assert len(folders) == 200
    t = Tree(str(tmp_path))
    img = jpeg_bytes()
    for w in folders:
        t.put(f"{w}/0.000116_{w}.jpg", img)
    t.put("README.txt", "ImageNet-A readme")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_source(layout, str(tmp_path))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "official evaluation set" in messages[0]  # only the size, not the subset

    wnids = imagenet_wnids()
    expected_subset = sorted(wnids.index(w) for w in folders)
    assert ds.subset_indices == expected_subset
    assert ds.subset_indices[:5] == first_indices
    assert ds.subset_indices == official_subset_indices(layout.replace("-", "_"))
    assert ds.classnames == [imagenet_classnames()[i] for i in expected_subset]
    assert ds.text_classnames == list(imagenet_classnames())
    assert ds.class_ids == [wnids[i] for i in expected_subset]
    # label = position among the 200; the folder's wnid sits at subset_indices[label]
    for e in ds.entries:
        assert wnids[ds.subset_indices[e.label]] == e.path.split("/")[0]
    assert ds.labels == list(range(200))


@pytest.mark.skipif(not SHARED_DESCRIPTIONS.is_dir(), reason="shared ABS description files not present")
@pytest.mark.parametrize("layout", ["imagenet-a", "imagenet-r"])
def test_subset_indices_match_abs_reference_lists(tmp_path, layout):
    subset = layout.replace("-", "_")
    reference = json.loads((SHARED_DESCRIPTIONS / f"{subset}_indices.json").read_text())
    t = Tree(str(tmp_path))
    for w in _official_wnids(subset):
        t.put(f"{w}/x.jpg", jpeg_bytes())
    ds = load_quiet(layout, str(tmp_path))
    assert ds.subset_indices == reference


def test_imagenet_a_partial_download_warns_and_uses_folders(tmp_path):
    wnids = imagenet_wnids()
    official = sorted(_official_wnids("imagenet_a"), key=wnids.index)
    picked = [official[5], official[0], official[120]]
    make_class_folders(str(tmp_path), picked, per_class=2, label_of=lambda w: 0)
    with pytest.warns(DatasetSizeWarning) as record:
        ds = load_source("imagenet-a", str(tmp_path))
    assert any("differ from the official 200-class subset" in str(w.message) for w in record)
    assert ds.subset_indices == sorted(wnids.index(w) for w in picked)
    assert ds.labels == [0, 0, 1, 1, 2, 2]
    assert len(ds.text_classnames) == 1000


# ---------------------------------------------------------------------- CUB
@pytest.mark.parametrize("split,size", [("test", 5_794), ("train", 5_994), ("all", 11_788)])
def test_cub_splits(tmp_path, split, size):
    minis = make_cub(str(tmp_path / "CUB_200_2011"))
    # pointing at the parent of CUB_200_2011/ works too
    with pytest.warns(DatasetSizeWarning, match=str(size)):
        ds = load_source("cub", str(tmp_path), split=split)
    assert_matches(ds, minis[split])
    assert ds.classnames == ["Black footed Albatross", "Laysan Albatross", "Brewer Blackbird"]
    assert ds.class_ids[0] == "001.Black_footed_Albatross"
    assert ds.name == ("cub" if split == "test" else f"cub-{split}")
    assert len(ds) == {"test": 6, "train": 6, "all": 12}[split]


def test_cub_malformed_and_missing_files(tmp_path):
    root = str(tmp_path)
    make_cub(root)
    t = Tree(root)
    t.lines("images.txt", ["1 001.Black_footed_Albatross/a.jpg", "two 001.Black_footed_Albatross/b.jpg"])
    with pytest.raises(LayoutError, match=r"images\.txt line 2: expected '<image_id> <class_folder/file\.jpg>'"):
        load_source("cub", root)
    make_cub(root)
    t.fs.rm(t.path + "/classes.txt")
    with pytest.raises(LayoutError, match=r"missing .*classes\.txt — expected '<class_id> <NNN\.Class_Name>'"):
        load_source("cub", root)
    make_cub(root)
    t.lines("image_class_labels.txt", ["1 7"])
    with pytest.raises(LayoutError, match=r"image_class_labels\.txt: image 1 has class 7, expected 1\.\.3"):
        load_source("cub", root)
    with pytest.raises(LayoutError, match="unknown split 'val'"):
        load_source("cub", root, split="val")


# ---------------------------------------------------------------------- Pets
def test_pets_test_split(tmp_path):
    mini = make_pets(str(tmp_path / "oxford-iiit-pet"))
    with pytest.warns(DatasetSizeWarning, match="3669"):
        ds = load_source("pets", str(tmp_path))
    assert_matches(ds, mini)
    # the last breed has no test image but is still named (from trainval.txt)
    assert ds.classnames == ["Abyssinian", "american bulldog", "american pit bull terrier"]
    assert ds.entries[0].image_id == "Abyssinian_102.jpg"


def test_pets_missing_image_is_kept_and_warned(tmp_path):
    root = str(tmp_path)
    mini = make_pets(root)
    t = Tree(root)
    t.fs.rm(f"{t.path}/images/{mini.image_ids[0]}")
    with pytest.warns(DatasetSizeWarning) as record:
        ds = load_source("pets", root)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert "1 of 4 images listed in annotations/test.txt are not under" in messages[1]
    assert "official evaluation set has 3669" in messages[0]
    assert len(ds) == 4 and ds.entries[0].size is None
    t.lines("annotations/test.txt", ["Abyssinian_101 x 1 1"])
    with pytest.raises(LayoutError, match=r"test\.txt line 1: expected '<image name> <class id>"):
        load_source("pets", root)


# ---------------------------------------------------------------------- DTD
def test_dtd_splits(tmp_path):
    minis = make_dtd(str(tmp_path / "dtd"))
    ds = load_quiet("dtd", str(tmp_path))
    assert_matches(ds, minis["test1"])
    assert ds.split == "test1" and ds.name == "dtd" and ds.expected_size == 1_880
    ds = load_quiet("dtd", str(tmp_path), split="train1")
    assert_matches(ds, minis["train1"])
    assert ds.name == "dtd-train1"
    with pytest.raises(LayoutError, match=r"missing .*labels/test2\.txt"):
        load_source("dtd", str(tmp_path), split="test2")
    with pytest.raises(LayoutError, match="unknown split"):
        load_source("dtd", str(tmp_path), split="test11")


# ---------------------------------------------------------------------- Food-101
def test_food101(tmp_path):
    mini = make_food101(str(tmp_path / "food-101"))
    ds = load_quiet("food101", str(tmp_path))
    assert_matches(ds, mini)
    assert ds.classnames == ["apple pie", "baby back ribs", "cup cakes"]
    assert ds.class_ids == ["apple_pie", "baby_back_ribs", "cup_cakes"]
    Tree(str(tmp_path / "food-101")).lines("meta/test.txt", ["apple_pie/1", "pizza/2"])
    with pytest.raises(LayoutError, match=r"meta/test\.txt line 2: 'pizza/2'.*classes\.txt"):
        load_source("food101", str(tmp_path))


# ---------------------------------------------------------------------- Places365
@pytest.mark.parametrize("lists_dir", ["", "filelist_places365-standard"])
def test_places365(tmp_path, lists_dir):
    mini = make_places365(str(tmp_path), lists_dir=lists_dir)
    ds = load_quiet("places365", str(tmp_path))
    assert_matches(ds, mini)
    assert ds.classnames == ["airfield", "arena (hockey)", "bus interior"]
    assert ds.class_ids == ["/a/airfield", "/a/arena/hockey", "/b/bus_interior"]
    assert ds.options == {"images_dir": "val_256"}


def test_places365_without_images_folder(tmp_path):
    make_places365(str(tmp_path), images_dir="elsewhere")
    with pytest.raises(LayoutError, match=r"expected one of val_large/, val_256/"):
        load_source("places365", str(tmp_path))
    ds = load_quiet("places365", str(tmp_path), images_dir="elsewhere")
    assert len(ds) == 6


# ---------------------------------------------------------------------- folder / manifest
def test_generic_folder(tmp_path):
    root = tmp_path / "my_pets"
    t = Tree(str(root))
    t.put("dog/a.jpg", jpeg_bytes(1))
    t.put("dog/sub/b.jpg", jpeg_bytes(2))
    t.put("cat/c.png", jpeg_bytes(3))
    t.put("cat/notes.txt", "a text file in a class folder is kept (and fails decoding later)")
    t.put("cat/._c.png", b"resource fork")
    ds = load_source("folder", str(root))
    assert ds.classnames == ["cat", "dog"]
    assert [(e.path, e.label) for e in ds.entries] == [
        ("cat/c.png", 0),
        ("cat/notes.txt", 0),
        ("dog/a.jpg", 1),
        ("dog/sub/b.jpg", 1),
    ]
    assert [i.path for i in ds.ignored] == ["cat/._c.png"]
    assert ds.name == "my_pets" and ds.expected_size is None


def test_symlinked_files_and_class_folders_are_followed(tmp_path):
    """ImageNet val is often sorted into class folders with links; links are images too."""
    real = Tree(str(tmp_path / "real"))
    real.put("x/one.jpg", jpeg_bytes(1))
    real.put("y/two.jpg", jpeg_bytes(2))
    ds_root = tmp_path / "ds"
    (ds_root / "a").mkdir(parents=True)
    (ds_root / "a" / "one.jpg").symlink_to(tmp_path / "real" / "x" / "one.jpg")
    (ds_root / "a" / "gone.jpg").symlink_to(tmp_path / "real" / "nothing.jpg")
    (ds_root / "b").symlink_to(tmp_path / "real" / "y", target_is_directory=True)
    ds = load_source("folder", str(ds_root))
    assert [(e.path, e.label, e.regular) for e in ds.entries] == [
        ("a/gone.jpg", 0, False),  # dangling: kept, becomes an 'unreadable' row
        ("a/one.jpg", 0, True),
        ("b/two.jpg", 1, True),
    ]
    assert ds.entries[1].size == len(jpeg_bytes(1))
    assert ds.read_entry_bytes(ds.entries[2]) == jpeg_bytes(2)


def test_manifest_duplicate_paths_fail(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.jpg,0\na.jpg,1\n")
    with pytest.raises(LayoutError, match="image id 'a.jpg' appears twice"):
        load_source("manifest", str(tmp_path / "m.csv"))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest(tmp_path, fmt):
    rows = make_manifest_images(str(tmp_path))
    path = tmp_path / f"subset.{fmt}"
    if fmt == "csv":
        path.write_text("path,label,class_name\n" + "".join(f"{p},{lbl},{n}\n" for p, lbl, n in rows))
    else:
        pq.write_table(
            pa.table({"path": [r[0] for r in rows], "label": [r[1] for r in rows], "class_name": [r[2] for r in rows]}),
            path,
        )
    ds = load_source("manifest", str(path))
    assert ds.classnames == ["cat", "dog", "bird"]
    assert [(e.path, e.label) for e in ds.entries] == [(p, lbl) for p, lbl, _ in rows]  # manifest order
    assert ds.name == "subset"
    assert ds.read_entry_bytes(ds.entries[1]) == (tmp_path / rows[1][0]).read_bytes()


def test_manifest_errors(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("file,label\na.jpg,0\n")
    with pytest.raises(LayoutError, match=r"m\.csv lacks column\(s\) \['path'\]"):
        load_source("manifest", str(bad))
    bad.write_text("path,label,class_name\na.jpg,0,cat\nb.jpg,0,dog\n")
    with pytest.raises(LayoutError, match=r"row 3: label 0 is named 'dog' here but 'cat' before"):
        load_source("manifest", str(bad))
    bad.write_text("path,label\na.jpg,zero\n")
    with pytest.raises(LayoutError, match=r"row 2: label 'zero' is not an integer"):
        load_source("manifest", str(bad))
    with pytest.raises(LayoutError, match="is not a file"):
        load_source("manifest", str(tmp_path))


def test_layouts_work_on_memory_filesystem():
    import uuid

    import fsspec

    root = f"memory://layouts-{uuid.uuid4().hex}"
    try:
        minis = make_cub(root)
        ds = load_quiet("cub", root)
        assert_matches(ds, minis["test"])
        assert ds.read_entry_bytes(ds.entries[0]) == jpeg_bytes(1)
    finally:
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)


def test_folder_class_names_are_readable_but_ids_keep_the_folder(tmp_path):
    from PIL import Image

    from tasks.datasets import load_source

    for folder in ("golden_retriever", "tabby__cat"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "a.jpg")
    src = load_source("folder", str(tmp_path))
    assert src.classnames == ["golden retriever", "tabby cat"]
    assert src.class_ids == ["golden_retriever", "tabby__cat"]
    assert [e.label for e in src.entries] == [0, 1]


# ---------------------------------------------------------------------- undecodable file names
def test_escape_undecodable():
    assert escape_undecodable("plain/é.jpg") == "plain/é.jpg"
    assert escape_undecodable(os.fsdecode(b"bad\xff.jpg")) == "bad\\xff.jpg"
    assert escape_undecodable("lone\ud800") == "lone\\ud800"  # not an escaped byte: still valid UTF-8 out
    for text in ("bad\udcff", "lone\ud800"):
        escape_undecodable(text).encode("utf-8")


def test_folder_undecodable_file_names_get_escaped_unique_stable_ids(tmp_path):
    src = tmp_path / "src"
    Tree(str(src)).put("a/ok.jpg", jpeg_bytes(1))
    bad = put_bytes_name(str(src / "a"), b"bad\xff.jpg", jpeg_bytes(2))
    # A real file whose (valid) name is exactly the escaped form: ids must not collide.
    Tree(str(src)).put("a/bad\\xff.jpg", jpeg_bytes(3))
    put_bytes_name(str(src), b"cl\xe9ss", b"")  # a file at the top: ignored, listed escaped
    put_bytes_name(str(src / os.fsdecode(b"b\xe9")), b"x\xfe.png", jpeg_bytes(4))  # undecodable class folder

    ds = load_source("folder", str(src))
    ids = [e.image_id for e in ds.entries]
    assert len(ids) == len(set(ids)) == 4
    for text in [*ids, *ds.classnames, *ds.class_ids, *(i.path for i in ds.ignored)]:
        text.encode("utf-8")  # all storable
    by_path = {e.path: e for e in ds.entries}
    assert by_path["a/bad\\xff.jpg"].image_id == "a/bad\\xff.jpg"  # valid names keep their id
    escaped = by_path[f"a/{bad}"].image_id
    assert escaped.startswith("a/bad\\xff.jpg~") and len(escaped) == len("a/bad\\xff.jpg~") + 8
    assert ds.read_entry_bytes(by_path[f"a/{bad}"]) == jpeg_bytes(2)  # opened by its real bytes
    assert ds.classnames == ["a", "b\\xe9"] and ds.class_ids == ["a", "b\\xe9"]
    assert by_path[os.fsdecode(b"b\xe9/x\xfe.png")].image_id == "b\\xe9/x\\xfe.png"
    assert [i.path for i in ds.ignored] == ["cl\\xe9ss"]

    again = load_source("folder", str(src))  # stable across runs: resume depends on it
    assert [e.image_id for e in again.entries] == ids and again.fingerprint() == ds.fingerprint()


def test_imagenet_folder_with_undecodable_file_name(tmp_path):
    wnids = imagenet_wnids()
    make_class_folders(str(tmp_path), [wnids[0], wnids[1]], per_class=1, label_of=wnids.index)
    name = put_bytes_name(str(tmp_path / wnids[1]), b"ILSVRC\x80.JPEG", jpeg_bytes(9))
    ds = load_quiet("imagenet", str(tmp_path))
    entry = next(e for e in ds.entries if e.path.endswith(name))
    assert entry.image_id == f"{wnids[1]}/ILSVRC\\x80.JPEG" and entry.label == 1
    assert ds.read_entry_bytes(entry) == jpeg_bytes(9)


def test_parquet_manifest_with_binary_paths(tmp_path):
    name = put_bytes_name(str(tmp_path / "pics"), b"caf\xe9.jpg", jpeg_bytes(5))
    Tree(str(tmp_path)).put("pics/ok.jpg", jpeg_bytes(6))
    table = pa.table({"path": pa.array([b"pics/caf\xe9.jpg", b"pics/ok.jpg"], pa.binary()), "label": [0, 1]})
    pq.write_table(table, tmp_path / "m.parquet")
    ds = load_source("manifest", str(tmp_path / "m.parquet"))
    assert [e.image_id for e in ds.entries] == ["pics/caf\\xe9.jpg", "pics/ok.jpg"]
    assert ds.entries[0].path == f"pics/{name}" and ds.read_entry_bytes(ds.entries[0]) == jpeg_bytes(5)


# ---------------------------------------------------------------------- clear errors for unusable sources
def assert_one_line_layout_error(exc_info, *needles: str) -> None:
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, ValueError)  # LayoutError stays catchable as ValueError
    assert "\n" not in msg and msg.strip() == msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_empty_folder_is_a_layout_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError) as e:
        load_source("folder", str(tmp_path / "empty"))
    assert_one_line_layout_error(e, str(tmp_path / "empty"), "one sub-folder of images per class")
    (tmp_path / "empty" / "a").mkdir()  # class folders without files do not count
    (tmp_path / "empty" / "a" / ".DS_Store").write_bytes(b"junk")
    with pytest.raises(LayoutError):
        load_source("folder", str(tmp_path / "empty"))
    (tmp_path / "empty" / "loose.jpg").write_bytes(jpeg_bytes(1))
    with pytest.raises(LayoutError) as e:
        load_source("folder", str(tmp_path / "empty"))
    assert_one_line_layout_error(e, "1 file(s) lie directly in it")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("with_rows", [True, False])
def test_manifest_without_label_column_is_a_layout_error(tmp_path, fmt, with_rows):
    path = tmp_path / f"m.{fmt}"
    values = ["a.jpg"] if with_rows else []
    if fmt == "csv":
        path.write_text("path,class_name\n" + "".join(f"{v},cat\n" for v in values))
    else:
        pq.write_table(
            pa.table(
                {"path": pa.array(values, pa.string()), "class_name": pa.array(["cat"] * len(values), pa.string())}
            ),
            path,
        )
    with pytest.raises(LayoutError) as e:
        load_source("manifest", str(path))
    assert_one_line_layout_error(e, str(path), "lacks column(s) ['label']", "columns path, label")


def test_empty_manifest_file_is_a_layout_error(tmp_path):
    (tmp_path / "m.csv").write_text("")
    with pytest.raises(LayoutError) as e:
        load_source("manifest", str(tmp_path / "m.csv"))
    assert_one_line_layout_error(e, str(tmp_path / "m.csv"), "is empty", "columns path, label")


def test_layout_error_message_is_printable_and_one_line():
    err = LayoutError("folder: no images in /data/bad\udcff\nsecond line")
    assert str(err) == "folder: no images in /data/bad\\xff second line"
    str(err).encode("utf-8")


# ---------------------------------------------------------------------- class list without sharding
def test_layout_classes_reads_no_image(tmp_path):
    import threading

    # pets: class names come from the split files; no image has to exist at all.
    make_pets(str(tmp_path / "pets"))
    for f in (tmp_path / "pets" / "images").iterdir():
        f.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names, text = layout_classes("pets", str(tmp_path / "pets"))
    assert names == text == ["Abyssinian", "american bulldog", "american pit bull terrier"]

    # folder: every "image" is a FIFO, which blocks whoever opens it for reading.
    for cls in ("golden_retriever", "tabby"):
        (tmp_path / "fifo" / cls).mkdir(parents=True)
        os.mkfifo(tmp_path / "fifo" / cls / "x.jpg")
    out: list = []
    t = threading.Thread(target=lambda: out.append(layout_classes("folder", str(tmp_path / "fifo"))), daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "layout_classes opened an image"
    assert out == [(["golden retriever", "tabby"], ["golden retriever", "tabby"])]


def test_layout_classes_raises_layout_error(tmp_path):
    with pytest.raises(LayoutError, match="does-not-exist"):
        layout_classes("folder", str(tmp_path / "does-not-exist"))
    with pytest.raises(TypeError, match="unexpected options"):
        layout_classes("folder", str(tmp_path), {"bogus": 1})


# ---------------------------------------------------------------------- one class present
def test_n_classes_present(tmp_path):
    t = Tree(str(tmp_path / "one"))
    t.put("only/a.jpg", jpeg_bytes(1))
    t.put("only/b.jpg", jpeg_bytes(2))
    assert load_source("folder", str(tmp_path / "one")).n_classes_present == 1
    rows = make_manifest_images(str(tmp_path))
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{p},{2 if lbl == 2 else 0}\n" for p, lbl, _ in rows))
    ds = load_source("manifest", str(tmp_path / "m.csv"))
    assert len(ds.classnames) == 3 and ds.n_classes_present == 2  # label 1 has no image


# ---------------------------------------------------------------------- `abs-eval layouts`
def test_every_layout_has_an_informative_first_docstring_line():
    firsts = {}
    for name in list_layouts():
        doc = (get_layout(name).__doc__ or "").strip().splitlines()  # what `abs-eval layouts` prints
        assert doc and doc[0].strip(), f"layout {name!r} has no docstring"
        firsts[name] = doc[0].strip()
        assert "point at" in firsts[name], (name, firsts[name])  # says which folder/file to give
    assert len(set(firsts.values())) == len(firsts) == 14


def test_an_empty_class_folder_is_refused_unless_the_user_leaves_it_out(tmp_path):
    """An empty class folder would silently shrink the class list (and move chance level):
    refused with its name, like torchvision's ImageFolder; left out only when asked, with a warning."""
    root = tmp_path / "five"
    t = Tree(str(root))
    for i, c in enumerate(["ant", "bee", "cat", "dog"]):
        t.put(f"{c}/a.jpg", jpeg_bytes(i))
    (root / "eel").mkdir()
    (root / "fox").mkdir()
    (root / "fox" / ".DS_Store").write_bytes(b"junk")  # only junk: empty too
    (root / ".git").mkdir()  # hidden folders are not classes
    with pytest.raises(LayoutError) as e:
        load_source("folder", str(root))
    msg = str(e.value)
    assert "2 class folder(s)" in msg and "eel, fox" in msg and "allow_empty_classes=true" in msg and "\n" not in msg
    with pytest.warns(DatasetSizeWarning, match="left out of the class list.*eel, fox"):
        ds = load_source("folder", str(root), allow_empty_classes="true")
    assert ds.classnames == ["ant", "bee", "cat", "dog"]
    with pytest.raises(TypeError, match="true or false"):
        load_source("folder", str(root), allow_empty_classes="maybe")
