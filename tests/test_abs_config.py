"""ModelSpec is hashable with value semantics and still reads / serialises like a dict."""

import copy
import dataclasses
import json
import pickle

import pytest

from abs_model import ModelSpec
from abs_model.config import FrozenDict


def test_equal_specs_hash_equal_and_work_as_dict_keys():
    a = ModelSpec("ViT-B-16", "openai", {"precision": "fp32", "force_image_size": [224, 224]})
    b = ModelSpec("ViT-B-16", "openai", {"force_image_size": (224, 224), "precision": "fp32"})  # other order/types
    c = ModelSpec("ViT-B-16", "openai", {"precision": "fp16", "force_image_size": [224, 224]})
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert ModelSpec("x") == ModelSpec("x", None, {}) and hash(ModelSpec("x")) == hash(ModelSpec("x", None, {}))
    cache = {a: "model-a", ModelSpec("x"): "model-x"}
    assert cache[b] == "model-a" and cache[ModelSpec("x", extra={})] == "model-x" and c not in cache
    assert len({a, b, c, ModelSpec("x"), ModelSpec("x")}) == 3
    # pickling / copying (process pools, Prefect, Dask) keeps value and hash
    for d in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a), copy.copy(a)):
        assert d == a and hash(d) == hash(a) and isinstance(d.extra, FrozenDict)


def test_extra_is_immutable_but_reads_like_a_dict():
    spec = ModelSpec("vit", "timm", {"img_size": 224, "nested": {"k": [1, 2]}})
    with pytest.raises(TypeError):
        spec.extra["img_size"] = 256
    with pytest.raises(TypeError):
        spec.extra["nested"]["k"] = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.extra = {}
    assert dict(spec.extra) == {"img_size": 224, "nested": {"k": (1, 2)}}

    def kwargs(**kw):
        return kw

    assert kwargs(**spec.extra) == dict(spec.extra)
    assert spec.extra == {"img_size": 224, "nested": {"k": (1, 2)}}
    with pytest.raises(TypeError):
        ModelSpec("vit", extra=[("img_size", 224)])


def test_dict_round_trips_and_json_are_unchanged():
    extra = {"precision": "fp32", "force_image_size": [224, 224], "nested": {"b": 1, "a": [2]}}
    spec = ModelSpec("ViT-B-16", "/ckpt/model.pt", extra)
    plain = {"name": "ViT-B-16", "pretrained": "/ckpt/model.pt", "extra": extra}
    # the JSON text is what a plain-dict spec gave before (hashes / records stay the same)
    want = json.dumps(plain, sort_keys=True)
    assert json.dumps(spec.to_dict(), sort_keys=True) == want
    assert json.dumps(dataclasses.asdict(spec), sort_keys=True) == want
    assert json.dumps(spec.extra, sort_keys=True) == json.dumps(extra, sort_keys=True)
    assert type(spec.to_dict()["extra"]) is dict
    # round trips: to_dict / from_dict, asdict / ModelSpec(**d), through JSON
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec(**dataclasses.asdict(spec)) == spec
    back = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and hash(back) == hash(spec)
    with pytest.raises(ValueError, match="unknown ModelSpec fields"):
        ModelSpec.from_dict({"name": "x", "weights": "y"})
