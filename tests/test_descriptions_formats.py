"""Description import formats, validation against a class list, and Parquet storage.

The last section checks the real published files in ../shared/data/descriptions
(or $ABS_SHARED_DESCRIPTIONS) and is skipped when that folder is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tasks.descriptions import (
    FORMATS,
    DescriptionError,
    DescriptionSet,
    MissingClassesError,
    RawDescriptions,
    attribute_sentence,
    detect_format,
    import_descriptions,
    load_description_file,
    parse_descriptions,
    read_descriptions,
    register_format,
    validate_descriptions,
    write_descriptions,
)
from tasks.descriptions.store import from_table, list_descriptions, to_table
from tasks.descriptions.validate import canonical_bytes
from tasks.store import Storage
from tasks.store.paths import description_set

CUPL = {
    "tench": ["A tench is a fish.", "  A tench is green-olive.  ", ""],
    "goldfish": ["A goldfish is orange.", "Goldfish swim in bowls."],
}
ATTRS = {
    "tench": ["a freshwater fish", "olive green or brown in color", "has small red eyes"],
    "goldfish": ["a small fish", "usually orange", "often kept in bowls"],
}


def write(tmp_path: Path, name: str, obj) -> str:
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return str(p)


# ------------------------------------------------------------------ formats
def test_registry_has_the_published_formats():
    assert {"cupl", "nested", "attributes", "templates"} <= set(FORMATS)


def test_cupl_import_keeps_order_and_strips(tmp_path):
    raw = load_description_file(write(tmp_path, "cupl.json", CUPL))
    assert raw.format == "cupl"
    assert raw.source == "cupl:cupl.json"
    assert raw.file_sha256 == hashlib.sha256((tmp_path / "cupl.json").read_bytes()).hexdigest()
    assert raw.entries["tench"] == ["A tench is a fish.", "A tench is green-olive.", ""]
    assert list(raw.entries) == ["tench", "goldfish"]


def test_nested_single_key_is_unwrapped(tmp_path):
    raw = load_description_file(write(tmp_path, "n.json", {"imagenet1k": CUPL}))
    assert raw.format == "nested" and raw.dataset_key == "imagenet1k"
    assert raw.source == "nested:n.json#imagenet1k"
    assert raw.entries["goldfish"] == CUPL["goldfish"]


def test_nested_several_datasets_needs_a_key():
    data = {"a": CUPL, "b": {"x": ["An x."]}}
    with pytest.raises(DescriptionError, match="several datasets"):
        parse_descriptions(data)
    assert list(parse_descriptions(data, dataset_key="b").entries) == ["x"]
    with pytest.raises(DescriptionError, match="not in the file"):
        parse_descriptions(data, dataset_key="c")
    with pytest.raises(DescriptionError, match="not nested"):
        parse_descriptions(CUPL, format="cupl", dataset_key="a")


def test_attributes_become_sentences_and_are_auto_detected():
    raw = parse_descriptions(ATTRS)
    assert raw.format == "attributes"
    assert raw.entries["tench"] == [
        "tench, which is a freshwater fish",
        "tench, which has olive green or brown in color",
        "tench, which has small red eyes",
    ]
    assert raw.entries["goldfish"][1:] == [
        "goldfish, which is usually orange",
        "goldfish, which is often kept in bowls",
    ]
    nested = parse_descriptions({"imagenet": ATTRS})
    assert nested.format == "attributes" and nested.entries == raw.entries


@pytest.mark.parametrize(
    "attr, sentence",
    [
        ("a seabird", "albatross, which is a seabird"),
        ("long, webbed feet", "albatross, which has long, webbed feet"),
        ("has a bell-shaped end", "albatross, which has a bell-shaped end"),
        ("may have a fence around it", "albatross, which may have a fence around it"),
        ("usually made of leather", "albatross, which is usually made of leather"),
        ("often has a window", "albatross, which often has a window"),
        ("typically lives near the sea", "albatross, which typically lives near the sea"),
        ("used for carrying food", "albatross, which is used for carrying food"),
        ("served cold", "albatross, which is served cold"),
        ("the walls are usually painted", "albatross, where the walls are usually painted"),
        ("the same color throughout", "albatross, which has the same color throughout"),
        ("there may be a sign", "albatross, where there may be a sign"),
        ("it is smooth and creamy,", "albatross, which is smooth and creamy"),
        ("with garlic cloves", "albatross, with garlic cloves"),
        ("in the air", "albatross, which is in the air"),
        ("no legs", "albatross, which has no legs"),
        ("black legs and feet.", "albatross, which has black legs and feet"),
    ],
)
def test_attribute_sentence_rule(attr, sentence):
    assert attribute_sentence("albatross", attr) == sentence


def test_attribute_sentence_menon_style_and_underscores():
    assert attribute_sentence("sea_lion", "usually made of x", style="menon") == "sea lion, which has usually made of x"
    assert attribute_sentence("x", "apple-shaped", style="menon") == "x, which is apple-shaped"
    assert attribute_sentence("x", "often grey", style="menon") == "x, which often grey"
    with pytest.raises(DescriptionError, match="style"):
        attribute_sentence("x", "y", style="fancy")


def test_templates_expand_per_class_with_readable_names():
    raw = parse_descriptions(["a photo of a {}.", "a {} in {braces}"], classnames=["apple_pie", "tench"])
    assert raw.format == "templates"
    assert raw.entries["apple_pie"] == ["a photo of a apple pie.", "a apple pie in {braces}"]
    with pytest.raises(DescriptionError, match="class list is needed"):
        parse_descriptions(["a photo of a {}."])
    with pytest.raises(DescriptionError, match="placeholder"):
        parse_descriptions(["a photo of a {}.", "no placeholder"], format="templates", classnames=["x"])


def test_auto_detection_refuses_unclear_shapes():
    with pytest.raises(DescriptionError, match="without '\\{\\}'"):
        detect_format(["tench", "goldfish"])  # a class list, not descriptions
    with pytest.raises(DescriptionError, match="pass the format explicitly"):
        detect_format({"a": ["Some sentence.", "some fragment", "Another one", "x"]})
    with pytest.raises(DescriptionError, match="unrecognised"):
        detect_format({"a": "not a list"})
    with pytest.raises(DescriptionError, match="unknown description format"):
        parse_descriptions(CUPL, format="yaml")
    # Explicit format overrides the heuristic.
    assert parse_descriptions({"a": ["some fragment"]}, format="cupl").entries == {"a": ["some fragment"]}


def test_bad_files(tmp_path):
    with pytest.raises(DescriptionError, match="not found"):
        load_description_file(str(tmp_path / "nope.json"))
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(DescriptionError, match="not valid JSON"):
        load_description_file(str(p))
    with pytest.raises(DescriptionError, match="list of strings"):
        parse_descriptions({"a": [1, 2]}, format="cupl")


def test_a_new_format_is_one_registered_function():
    @register_format("tsv-lines")
    def _tsv(data, opts):
        entries: dict[str, list[str]] = {}
        for line in data:
            k, v = line.split("\t")
            entries.setdefault(k, []).append(v)
        return RawDescriptions(entries, "tsv-lines", opts.source)

    try:
        raw = parse_descriptions(["a\tAn a.", "a\tAnother a."], format="tsv-lines")
        assert raw.entries == {"a": ["An a.", "Another a."]}
    finally:
        FORMATS.pop("tsv-lines")


# ------------------------------------------------------------------ validation
def test_validate_drops_empties_caps_at_m_and_reports_short():
    raw = {"tench": ["t1.", "", "  ", "t2.", "t3."], "goldfish": ["g1."]}
    ds = validate_descriptions(raw, ["tench", "goldfish"], m=2)
    assert ds.texts == (("t1.", "t2."), ("g1.",))
    assert ds.dropped_empty == {0: 2} and ds.n_dropped_empty == 2
    assert ds.truncated == {0: 1}
    assert ds.short == {1: 1}
    assert ds.counts == (2, 1)
    s = ds.summary()
    assert "dropped 2 empty" in s and "fewer than 2" in s and "'goldfish' (1)" in s
    r = ds.report()
    assert r["n_short_classes"] == 1 and r["short_classes"] == [[1, "goldfish", 1]]


def test_validate_missing_classes_lists_them_with_nearest_names():
    raw = {"tench": ["t."], "goldfish": ["g."], "great white shark": ["s."]}
    with pytest.raises(MissingClassesError) as ei:
        validate_descriptions(raw, ["tench", "gold fish", "great whte shark", "zebra"], source="x.json")
    msg = str(ei.value)
    assert "lack 3 of 4 classes" in msg and "x.json" in msg
    assert "[1] 'gold fish' (nearest: 'goldfish'" in msg
    assert "[2] 'great whte shark' (nearest: 'great white shark'" in msg
    assert "[3] 'zebra' (no similar key)" in msg
    assert set(ei.value.missing) == {1, 2, 3}
    assert ei.value.missing[1] == ("gold fish", ["goldfish"])


def test_validate_positional_hint_when_file_has_one_key_per_class():
    with pytest.raises(MissingClassesError, match="key at the same position: 'eft'"):
        validate_descriptions({"tench": ["t."], "eft": ["e."]}, ["tench", "newt"])


def test_validate_lenient_name_matching_and_ambiguity():
    ds = validate_descriptions({"apple pie": ["a."], "Abyssinian": ["b."]}, ["apple_pie", "abyssinian"])
    assert ds.keys == ("apple pie", "Abyssinian") and ds.texts == (("a.",), ("b.",))
    with pytest.raises(DescriptionError, match="several keys"):
        validate_descriptions({"Crane": ["a."], "crane": ["b."]}, ["CRANE"])
    # An exact key wins over lenient ones.
    assert validate_descriptions({"Crane": ["a."], "crane": ["b."]}, ["crane"]).texts == (("b.",),)


def test_validate_duplicate_class_names_share_descriptions_and_are_reported():
    raw = {"crane": ["c1.", "c2."], "missile": ["m."], "unused": ["u."]}
    ds = validate_descriptions(raw, ["crane", "missile", "crane"], m=2)
    assert ds.texts[0] == ds.texts[2] == ("c1.", "c2.")
    assert ds.duplicates == {"crane": (0, 2)}
    assert ds.unused_keys == ("unused",)
    assert any("'crane' -> labels 0, 2" in n and "identical" in n for n in ds.notes)


def test_validate_errors():
    with pytest.raises(DescriptionError, match="no non-empty description"):
        validate_descriptions({"a": ["", " "], "b": ["x"]}, ["a", "b"])
    with pytest.raises(DescriptionError, match="at least 1"):
        validate_descriptions({"a": ["x"]}, ["a"], m=0)
    with pytest.raises(DescriptionError, match="empty"):
        validate_descriptions({"a": ["x"]}, [])


def test_repeated_texts_are_kept_and_counted():
    ds = validate_descriptions({"a": ["x.", "x.", "y."]}, ["a"], m=50)
    assert ds.texts == (("x.", "x.", "y."),) and ds.repeated == {0: 1}


# ------------------------------------------------------------------ storage
def _small_set() -> DescriptionSet:
    return validate_descriptions(
        RawDescriptions({"tench": ["t1.", "", "t2."], "goldfish": ["g1."]}, "cupl", "cupl:f.json"),
        ["tench", "goldfish", "tench"],
        m=2,
        provenance={"kind": "import"},
    )


@pytest.mark.parametrize("root", ["local", "memory"])
def test_store_roundtrip_layout_and_idempotence(tmp_path, root):
    storage = Storage(str(tmp_path / "root") if root == "local" else f"memory://desc-{os.getpid()}-{id(tmp_path)}")
    ds = _small_set()
    man = write_descriptions(ds, storage, "tiny")
    assert (
        man.path
        == f"descriptions/name=tiny/descriptions={ds.content_hash[:16]}.parquet"
        == description_set("tiny", ds.content_hash)
    )
    assert storage.exists(man.path) and storage.is_done(f"descriptions/name=tiny/descriptions={ds.content_hash[:16]}")
    assert man.n_texts == 5 and man.n_classes == 3 and man.source == "cupl:f.json"
    t = storage.read_parquet(man.path)
    assert t.column_names == ["class_index", "class_name", "index", "text", "source"]
    rows = t.to_pylist()
    assert rows[0] == {"class_index": 0, "class_name": "tench", "index": 0, "text": "t1.", "source": "cupl:f.json"}
    assert [r["class_index"] for r in rows] == [0, 0, 1, 2, 2]
    back = read_descriptions(storage, "tiny")
    assert back == ds
    assert read_descriptions(storage, "tiny", ds.content_hash[:16]) == ds
    # Writing the same content again does not rewrite the file.
    mtime = storage.fs.info(storage.path(man.path)).get("mtime", storage.fs.info(storage.path(man.path)).get("created"))
    assert write_descriptions(ds, storage, "tiny") == man
    mtime2 = storage.fs.info(storage.path(man.path)).get(
        "mtime", storage.fs.info(storage.path(man.path)).get("created")
    )
    assert mtime == mtime2
    assert list_descriptions(storage, "tiny") == [ds.content_hash]
    assert not storage.glob("_tmp/*")


def test_store_latest_and_errors(tmp_path):
    root = str(tmp_path)
    a = _small_set()
    b = validate_descriptions({"tench": ["other."], "goldfish": ["g1."]}, ["tench", "goldfish"], m=2)
    write_descriptions(a, root, "s")
    write_descriptions(b, root, "s")
    assert read_descriptions(root, "s") == b
    assert read_descriptions(root, "s", a.content_hash) == a
    with pytest.raises(DescriptionError, match="no descriptions named"):
        read_descriptions(root, "nothing")
    with pytest.raises(DescriptionError, match="not committed"):
        read_descriptions(root, "s", "0" * 64)
    with pytest.raises(DescriptionError, match="16 hex"):
        read_descriptions(root, "s", "abc")
    with pytest.raises(DescriptionError, match="name"):
        write_descriptions(a, root, "../evil")


def test_content_hash_is_canonical():
    a = _small_set()
    same = validate_descriptions(
        {"goldfish": ["g1."], "tench": ["t1.", "t2.", "t3."]}, ["tench", "goldfish", "tench"], m=2
    )
    assert same.content_hash == a.content_hash  # file order, extra texts beyond m, source: not content
    assert len(a.content_hash) == 64
    diff = validate_descriptions({"goldfish": ["g1"], "tench": ["t1.", "t2."]}, ["tench", "goldfish", "tench"], m=2)
    assert diff.content_hash != a.content_hash
    swapped = validate_descriptions({"goldfish": ["g1."], "tench": ["t2.", "t1."]}, ["tench", "goldfish", "tench"], m=2)
    assert swapped.content_hash != a.content_hash
    assert canonical_bytes(("é",), [("ü",)]).decode("utf-8") == '{"v":1,"classes":[["é",["ü"]]]}'


def test_damaged_table_is_refused():
    ds = _small_set()
    t = to_table(ds)
    import pyarrow as pa

    texts = t.column("text").to_pylist()
    texts[0] = "edited."
    bad = t.set_column(3, "text", pa.array(texts))
    with pytest.raises(DescriptionError, match="does not match its recorded hash"):
        from_table(bad)
    with pytest.raises(DescriptionError, match="schema metadata"):
        from_table(t.replace_schema_metadata(None))


# ------------------------------------------------------------------ the real published files
SHARED = Path(
    os.environ.get("ABS_SHARED_DESCRIPTIONS", Path(__file__).resolve().parents[2] / "shared" / "data" / "descriptions")
)
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared description files not found at {SHARED}")


@pytest.fixture(scope="module")
def imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


@needs_shared
def test_real_imagenet_cupl_prompts(imagenet_classnames, tmp_path):
    ds = import_descriptions(str(SHARED / "imagenet" / "cupl_prompts.json"), imagenet_classnames)
    assert ds.source == "nested:cupl_prompts.json#imagenet1k"
    assert ds.n_classes == 1000 and ds.counts == (50,) * 1000
    assert ds.n_dropped_empty == 0 and ds.short == {} and ds.unused_keys == ()
    # The open_clip / CuPL ImageNet list names two pairs of labels the same.
    assert ds.duplicates == {"missile": (657, 744), "sunglasses": (836, 837)}
    assert ds.texts[657] == ds.texts[744] and ds.texts[836] == ds.texts[837]
    assert "'missile' -> labels 657, 744; 'sunglasses' -> labels 836, 837" in ds.summary()
    assert ds.texts[0][0] == "A tench is a freshwater fish of the carp family."
    man = write_descriptions(ds, str(tmp_path), "imagenet-cupl")
    assert man.n_texts == 50_000 and read_descriptions(str(tmp_path), "imagenet-cupl") == ds


@needs_shared
def test_real_imagenet_attributes_and_templates(imagenet_classnames):
    # clip-d.json is keyed by the OpenAI class names ("eft", "maillot", ...).
    with pytest.raises(MissingClassesError) as ei:
        import_descriptions(str(SHARED / "imagenet" / "clip-d.json"), imagenet_classnames)
    assert set(ei.value.missing) == {27, 638}
    assert "key at the same position: 'eft'" in str(ei.value)
    openai_names = json.loads((SHARED / "imagenet" / "openai_classnames.json").read_text())
    ds = import_descriptions(str(SHARED / "imagenet" / "clip-d.json"), openai_names)
    assert ds.provenance["format"] == "attributes" and ds.duplicates == {}
    assert ds.texts[0][0] == "tench, which is a freshwater fish"
    ens = import_descriptions(str(SHARED / "imagenet" / "clip-e.json"), imagenet_classnames, m=80)
    assert ens.counts == (80,) * 1000 and ens.texts[1][0] == "a bad photo of a goldfish."


DATASETS = {
    "cub": "cub/cub.json",
    "dtd": "dtd/dtd.json",
    "food101": "food101/food101.json",
    "oxford_pet": "oxford_pet/oxford_pet.json",
    "place365": "place365/place365.json",
    "eurosat": None,  # no class list shipped: the CuPL keys are the list
}
FILES = {"cupl": "cupl", "clip-d": "attributes", "clip-e": "templates", "base": "cupl"}


@needs_shared
@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_real_dataset_files_import_against_their_class_list(dataset):
    cl = DATASETS[dataset]
    names = (
        json.loads((SHARED / cl).read_text()) if cl else list(json.loads((SHARED / dataset / "cupl.json").read_text()))
    )
    for fname, fmt in FILES.items():
        path = SHARED / dataset / f"{fname}.json"
        if not path.exists():
            continue
        ds = import_descriptions(str(path), names)
        assert ds.provenance["format"] == fmt, (dataset, fname)
        assert ds.n_classes == len(names) and min(ds.counts) >= 1
        assert max(ds.counts) <= 50
    if dataset == "cub":
        cub = import_descriptions(str(SHARED / "cub" / "cupl.json"), names)
        assert cub.n_dropped_empty == 59  # the ABS CUB file holds 59 empty strings
    if dataset == "place365":
        pl = import_descriptions(str(SHARED / "place365" / "cupl.json"), names)
        assert len(pl.duplicates) == 19 and pl.duplicates["arena"] == (15, 16, 17)
