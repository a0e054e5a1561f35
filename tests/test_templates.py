"""clip-e's templates as CLIP_benchmark uses them: the dataset's own, the CLIP paper's per-dataset sets, files.

What is checked against what: the ``clip-e`` class embeddings a run builds against the tiny CLIP
model encoding the filled-in strings directly (open_clip's ``encode_text``, no abs-eval code in
between); the template sets shipped as data against open_clip's and (when installed)
CLIP_benchmark's copies; the recorded set and config hash of two runs with different templates.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pipeline_fixtures import make_spec, photo_bytes, simple_descriptions

from tasks.datasets import get_layout, list_layouts
from tasks.datasets.template_sets import (
    TemplateError,
    TemplateSet,
    builtin_names,
    builtin_template_set,
    fill,
    read_template_file,
    resolve_template_set,
    templates_from_text,
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["abyssinian cat", "bulldog", "golden retriever"]
#: The dataset's own templates, in CLIP_benchmark's ``{c}`` form (one with CLIP's ``{}``).
OWN = ["a sketch of a {c}.", "a close-up photo of the {c}, outdoors.", "{} in a painting."]
OTHER = ["a photo of a {}.", "a blurry photo of a {}."]


# ---------------------------------------------------------------------- helpers
def _direct_ensemble(clip, classnames: list[str], filled: list[list[str]]) -> torch.Tensor:
    """CLIP_benchmark's zero-shot weights: per class, mean of normalised open_clip text features, renormalised."""
    out = []
    with torch.no_grad():
        for texts in filled:
            f = F.normalize(clip.model.encode_text(clip.tokenizer(texts)), dim=-1)
            out.append(F.normalize(f.mean(0), dim=-1))
    return torch.stack(out)


def _write_wds(root: Path, templates_text: str | None, n_images: int = 6) -> str:
    """A WebDataset in CLIP_benchmark's shape: ``test/0.tar``, ``classnames.txt``, the templates beside them."""
    (root / "test").mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(n_images):
            for name, data in ((f"s{i:04d}.jpg", photo_bytes(i, 40 + 4 * i, 36)), (f"s{i:04d}.cls", b"%d" % (i % 3))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    (root / "test" / "0.tar").write_bytes(buf.getvalue())
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    if templates_text is not None:
        (root / "zeroshot_classification_templates.txt").write_text(templates_text)
    return str(root / "test")


def _prepare(tmp_path: Path, templates_text: str | None, name: str = "wds-own") -> tuple[str, str]:
    """Shard a WebDataset with its own templates and store descriptions for it; ``(storage root, source)``."""
    from tasks.descriptions import validate_descriptions, write_descriptions
    from tasks.steps.shard import shard_dataset

    source = _write_wds(tmp_path / name, templates_text)
    root = str(tmp_path / "root")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shard_dataset("webdataset", source, root, name, images_per_shard=4, workers=1, progress=False)
    ds = validate_descriptions(simple_descriptions(CLASSES, 3), CLASSES, m=4)
    write_descriptions(ds, root, f"{name}-desc")
    return root, source


# ---------------------------------------------------------------------- the shipped sets
def test_the_paper_sets_are_data_with_their_source_and_the_imagenet_set_is_open_clips():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    data = json.loads((REPO / "tasks/datasets/templates/clip.json").read_text())
    assert "CLIP_benchmark 1.6.2" in " ".join(data["about"]) and "CUB" in " ".join(data["about"])
    for name, entry in data["sets"].items():
        assert entry["source"].startswith("CLIP, https://github.com/openai/CLIP/"), name
        assert builtin_template_set(name).count == len(entry["templates"]) > 0
    imagenet = builtin_template_set("openai-imagenet")
    assert imagenet.name == "imagenet1k" and imagenet.count == 80
    assert imagenet.texts("tench") == [t("tench") for t in OPENAI_IMAGENET_TEMPLATES]  # same texts, same order
    assert builtin_template_set("dtd").texts("banded")[0] == "a photo of a banded texture."
    assert builtin_template_set("food101").templates == ("a photo of {c}, a type of food.",)
    none = builtin_template_set("none")
    assert none.count == 0 and none.record()["name"] == "none"
    with pytest.raises(TemplateError, match="unknown template set 'imagenet-80'.*openai-imagenet"):
        builtin_template_set("imagenet-80")


def test_the_sets_equal_clip_benchmarks_copy_when_it_is_installed():
    site = Path(os.environ.get("CLIP_BENCHMARK_DIR", REPO / "abs-output/clip-benchmark/site"))
    ref = site / "clip_benchmark/datasets/en_zeroshot_classification_templates.json"
    if not ref.exists():
        pytest.skip(f"CLIP_benchmark is not installed in {site}")
    theirs = json.loads(ref.read_text())
    ours = json.loads((REPO / "tasks/datasets/templates/clip.json").read_text())["sets"]
    shared = set(ours) & set(theirs)
    assert {"imagenet1k", "food101", "pets", "dtd", "sun397"} <= shared
    for name in shared:
        assert ours[name]["templates"] == theirs[name], name


def test_every_named_layout_declares_a_shipped_set_and_the_others_none():
    """Each layout module declares its set on its class (no central table): the CLIP paper's for the
    datasets CLIP evaluated, the ImageNet set for CUB and Places365, none for the generic layouts."""
    known = set(builtin_names())
    expected = {
        "imagenet": "imagenet1k",
        "imagenet-v2": "imagenet1k",
        "imagenet-sketch": "imagenet1k",
        "imagenet-a": "imagenet1k",
        "imagenet-r": "imagenet1k",
        "food101": "food101",
        "pets": "pets",
        "dtd": "dtd",
        "cub": "imagenet1k",
        "places365": "imagenet1k",
        "folder": None,
        "manifest": None,
        "webdataset": None,
        "hf-parquet": None,
    }
    assert set(list_layouts()) == set(expected)  # a new layout is added here with its set
    for layout in list_layouts():
        name = get_layout(layout).default_templates
        assert name == expected[layout], layout
        assert name is None or name in known, (layout, name)
        if name is not None:
            assert builtin_template_set(name).count > 0
    assert get_layout("oxford-pets").default_templates == "pets"  # aliases are the same layout
    assert get_layout("wds").default_templates is None


def test_a_regular_install_would_ship_the_template_data():
    """The JSON is package data (tasks/datasets/templates/ holds no module, so setuptools needs the glob)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("tasks = "))
    globs = json.loads(line.split("=", 1)[1].split("#", 1)[0])
    files = {p.relative_to(REPO / "tasks").as_posix() for p in (REPO / "tasks/datasets/templates").glob("*")}
    assert files and all(any(Path(f).match(g) for g in globs) for f in files), (files, globs)


# ---------------------------------------------------------------------- files: {c} and {}, .txt and .json
@pytest.mark.parametrize(
    "name,text",
    [
        ("t.txt", "a photo of a {c}.\n\n  a drawing of the {c}.  \n"),
        ("t.txt", "a photo of a {}.\na drawing of the {}.\n"),
        ("t.json", json.dumps(["a photo of a {c}.", "a drawing of the {}."])),
        ("t.json", json.dumps({"wds/mine": ["a photo of a {}.", "a drawing of the {c}."]})),  # CLIP_benchmark's shape
        ("noext", json.dumps(["a photo of a {c}.", "a drawing of the {c}."])),
        ("noext", "a photo of a {c}.\na drawing of the {}.\n"),
    ],
)
def test_template_files_take_c_or_braces_as_txt_or_json(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    ts = read_template_file(str(path))
    assert ts.templates == ("a photo of a {c}.", "a drawing of the {c}.")  # stored in one form: hashes agree
    assert ts.name == f"file:{name}" and ts.count == 2
    assert ts.texts("bulldog") == ["a photo of a bulldog.", "a drawing of the bulldog."]
    assert ts.sha256 == TemplateSet("x", ("a photo of a {c}.", "a drawing of the {c}.")).sha256
    assert resolve_template_set(str(path), {"templates": OWN, "layout": "webdataset"}).templates == ts.templates


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("empty.txt", "", "no templates"),
        ("blank.txt", "\n  \n\n", "no templates"),
        ("noplace.txt", "a photo of a {c}.\na photo of a dog.\n", r"#2 'a photo of a dog\.' lacks the placeholder"),
        ("empty.json", "[]", "no templates"),
        ("bad.json", '["a {c}",', "not valid JSON"),
        ("dict.json", json.dumps({"cat": ["a cat."], "dog": ["a dog."]}), "descriptions"),
        ("nums.json", json.dumps(["a {c}", 3]), "#2 is a int"),
        ("str.json", json.dumps("a photo of a {c}."), "a JSON str"),
        ("latin1.txt", "a caf\xe9 {c}".encode("latin-1"), "not UTF-8"),
    ],
)
def test_a_malformed_template_file_is_a_clear_error(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TemplateError, match=message) as ei:
        read_template_file(str(path))
    assert str(path) in str(ei.value)
    with pytest.raises(TemplateError, match="not found"):
        read_template_file(str(tmp_path / "missing.txt"))


def test_fill_replaces_both_placeholders_once_in_the_library_and_the_pipeline():
    from abs_model.text import fill_template

    for template, name in [("a {c} and a {}.", "x{}y"), ("{}", "dog"), ("a {c} in {braces}", "cat")]:
        assert fill(template, name) == fill_template(template, name)
    assert fill("a {c} and a {}.", "x{}y") == "a x{}y and a x{}y."  # a name holding "{}" is not filled again
    assert fill("a {c} in {braces}", "cat") == "a cat in {braces}"
    assert templates_from_text("{}\n", "t") == ("{c}",)  # CLIP's KITTI set: the class name alone (not JSON)
    assert templates_from_text("{c} in the wild.\n[{}] framed\n", "t") == ("{c} in the wild.", "[{c}] framed")
    assert templates_from_text('["a {c}"]', "t", suffix=".txt") == ('["a {c}"]',)  # .txt is lines


# ---------------------------------------------------------------------- which set a dataset gets
def test_auto_is_the_datasets_own_else_its_layouts_set_else_imagenet():
    own = resolve_template_set(
        "auto",
        {
            "layout": "webdataset",
            "templates": OWN,
            "templates_file": "/data/wds_x/zeroshot_classification_templates.txt",
        },
    )
    assert own.name == "dataset:zeroshot_classification_templates.txt" and own.count == 3
    assert own.texts("dog")[2] == "dog in a painting."
    assert resolve_template_set("auto", {"layout": "dtd"}).name == "dtd"
    assert resolve_template_set("auto", {"layout": "oxford-iiit-pet"}).name == "pets"
    assert resolve_template_set("auto", {"layout": "cub"}).name == "imagenet1k"
    assert resolve_template_set("auto", {"layout": "folder"}).name == "imagenet1k"
    assert resolve_template_set("auto", None).name == "imagenet1k"
    # the same content by another route records the same set (so the same config)
    assert (
        resolve_template_set("auto", {"layout": "imagenet"}).record()
        == builtin_template_set("openai-imagenet").record()
    )
    # a named set wins over the dataset's own
    assert resolve_template_set("dtd", {"layout": "webdataset", "templates": OWN}).name == "dtd"
    with pytest.raises(TemplateError, match="lacks the placeholder.*--templates"):
        resolve_template_set("auto", {"layout": "webdataset", "templates": ["a photo."]})
    with pytest.raises(TemplateError, match="no templates"):
        resolve_template_set("auto", {"layout": "webdataset", "templates": []})


def test_the_templates_parameter_takes_names_and_files_and_refuses_typos(tmp_path):
    from flows.params import EvaluateParams, ParameterError, check, make_params

    assert make_params(dataset="x").templates == "auto"
    for ok in ("openai-imagenet", "dtd", "none", "birdsnap", "/some/where/t.txt", "s3://b/t.json"):
        assert make_params(dataset="x", templates=ok).templates == ok
    with pytest.raises(
        ParameterError, match="templates: .*unknown template set 'openai'.*did you mean openai-imagenet"
    ):
        make_params(dataset="x", templates="openai")
    help_text = EvaluateParams.model_fields["templates"].description or ""
    assert all(n in help_text for n in builtin_names()), help_text  # the help names every set

    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a dog.\n")
    with pytest.raises(ParameterError, match=r"templates: .*bad\.txt.*lacks the placeholder"):
        check(
            make_params(
                dataset="x",
                templates=str(bad),
                clip_model="abs-tiny-vit-b16",
                clip_pretrained=None,
                dino_model="abs-tiny-dino-vit-b16",
                dino_pretrained=None,
            )
        )
    with pytest.raises(ParameterError, match="template file not found"):
        check(
            make_params(
                dataset="x",
                templates=str(tmp_path / "nope.txt"),
                clip_model="abs-tiny-vit-b16",
                clip_pretrained=None,
                dino_model="abs-tiny-dino-vit-b16",
                dino_pretrained=None,
            )
        )


# ---------------------------------------------------------------------- description files: {c} and .txt
def test_description_files_take_c_and_txt(tmp_path):
    from tasks.descriptions import DescriptionError, import_descriptions
    from tasks.descriptions.formats import load_description_file

    classes = ["apple_pie", "tench"]
    txt = tmp_path / "clip-e.txt"
    txt.write_text("a photo of {c}, a type of food.\n\na photo of the {}.\n")
    raw = load_description_file(str(txt), classnames=classes)
    assert raw.format == "templates" and raw.source == "templates:clip-e.txt"
    assert raw.entries["apple_pie"] == ["a photo of apple pie, a type of food.", "a photo of the apple pie."]
    js = tmp_path / "clip-e.json"
    js.write_text(json.dumps(["a photo of {c}, a type of food.", "a photo of the {c}."]))
    assert load_description_file(str(js), classnames=classes).entries == raw.entries
    # as descriptions, M applies: the first M templates are kept
    assert import_descriptions(str(txt), classes, m=1).texts[0] == ("a photo of apple pie, a type of food.",)

    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of {c}.\napple pie\n")
    with pytest.raises(DescriptionError, match="placeholder"):
        load_description_file(str(bad), classnames=classes)
    with pytest.raises(DescriptionError, match="lacks the placeholder"):
        load_description_file(str(bad), classnames=classes, format="templates")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DescriptionError, match="empty"):
        load_description_file(str(empty), classnames=classes)


# ---------------------------------------------------------------------- what a run builds and records
def test_a_webdataset_with_its_own_templates_gives_clip_e_exactly_those(tmp_path, tiny_clip):
    from tasks.run.context import build_context

    root, _ = _prepare(tmp_path, "\n".join(OWN) + "\n")
    ctx = build_context(root, make_spec("wds-own", "wds-own-desc"))  # templates="auto", the default
    want = _direct_ensemble(tiny_clip, CLASSES, [[fill(t, c) for t in OWN] for c in CLASSES])
    got = ctx.text.ensemble
    assert got is not None and got.shape == want.shape
    assert torch.allclose(got, want, atol=2e-6, rtol=0), (got - want).abs().max()
    # teeth: the 80 ImageNet templates (what clip-e used before) give other class embeddings
    imagenet = builtin_template_set("imagenet1k")
    other = _direct_ensemble(tiny_clip, CLASSES, [imagenet.texts(c) for c in CLASSES])
    assert (other - want).abs().max() > 1e-3

    record = {
        "name": "dataset:zeroshot_classification_templates.txt",
        "count": 3,
        "sha256": TemplateSet("x", tuple(t.replace("{}", "{c}") for t in OWN)).sha256,
    }
    assert ctx.prediction_settings["templates"] == record  # run records keep it as config_json["numbers"]
    assert ctx.text_entry.templates == record


def test_other_templates_are_another_recorded_set_another_text_bank_and_another_config(tmp_path, tiny_clip):
    from tasks.run.context import build_context

    root, _ = _prepare(tmp_path, "\n".join(OWN) + "\n")
    own = build_context(root, make_spec("wds-own", "wds-own-desc"))
    tfile = tmp_path / "mine.txt"
    tfile.write_text("\n".join(OTHER) + "\n")
    mine = build_context(root, make_spec("wds-own", "wds-own-desc", templates=str(tfile)))
    want = _direct_ensemble(tiny_clip, CLASSES, [[t.format(c) for t in OTHER] for c in CLASSES])
    assert torch.allclose(mine.text.ensemble, want, atol=2e-6, rtol=0)

    a, b = own.prediction_settings["templates"], mine.prediction_settings["templates"]
    assert b == {"name": "file:mine.txt", "count": 2, "sha256": read_template_file(str(tfile)).sha256}
    assert a != b and a["sha256"] != b["sha256"]
    assert own.config_hash != mine.config_hash
    assert own.text_entry.key != mine.text_entry.key and own.text_entry.path != mine.text_entry.path
    # the rest of the settings is the same: only the templates tell the two runs apart
    assert {k: v for k, v in own.prediction_settings.items() if k != "templates"} == {
        k: v for k, v in mine.prediction_settings.items() if k != "templates"
    }

    # the same texts written with {c} in a JSON file: the same bank from the cache (content-keyed)
    jfile = tmp_path / "mine.json"
    jfile.write_text(json.dumps([t.replace("{}", "{c}") for t in OTHER]))
    again = build_context(root, make_spec("wds-own", "wds-own-desc", templates=str(jfile)))
    assert again.text_entry.key == mine.text_entry.key and not again.text_entry.computed
    assert torch.equal(again.text.ensemble, mine.text.ensemble)

    none = build_context(root, make_spec("wds-own", "wds-own-desc", templates="none"))
    assert none.text.ensemble is None and none.prediction_settings["templates"]["count"] == 0


def test_a_dataset_whose_own_templates_are_malformed_fails_before_any_work(tmp_path):
    from flows.params import ParameterError, make_params, preflight
    from tasks.run.context import EvaluationError, build_context

    root, source = _prepare(tmp_path, "a photo of a dog.\n", name="wds-bad")
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps(simple_descriptions(CLASSES, 3)))
    params = dict(
        dataset="wds-bad",
        layout="webdataset",
        source=source,
        root=root,
        descriptions=str(desc),
        clip_model="abs-tiny-vit-b16",
        clip_pretrained=None,
        dino_model="abs-tiny-dino-vit-b16",
        dino_pretrained=None,
        abs_config={"n_descriptions": 3},
    )
    with pytest.raises(ParameterError, match=r"templates: .*zeroshot_classification_templates\.txt.*placeholder"):
        preflight(make_params(**params))
    with pytest.raises(ParameterError, match="templates"):
        preflight(make_params(**{**params, "source": None}))  # from the stored dataset.json
    assert preflight(make_params(**params, templates="openai-imagenet")).templates == "openai-imagenet"
    with pytest.raises(EvaluationError, match="templates: .*placeholder"):
        build_context(root, make_spec("wds-bad", "wds-bad-desc"))


def test_a_webdataset_without_templates_uses_the_imagenet_set(tmp_path):
    from tasks.store.datasets import read_dataset_info

    root, _ = _prepare(tmp_path, None, name="wds-plain")
    info = read_dataset_info(root, "wds-plain")
    assert info.raw["templates"] is None
    assert make_spec("wds-plain", "d").template_set(info.raw).name == "imagenet1k"
