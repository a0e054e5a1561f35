"""Inference per shard: rows, numbers, geometry, reuse, batch-size invariance, features, class subsets.

The numbers are checked against ``ABSClassifier.predict`` run directly on the
same decoded images with the same cached DINO top-K: ``pred`` is the argmax,
``score_true`` the true class's logit, ``margin`` the true logit minus the best
other, ``top5`` the five best columns in order.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from flow_helpers import SCORE_ATOL, SCORE_RTOL
from pipeline_fixtures import (
    METHODS,
    SMALL_ABS,
    Tree,
    cached_topk,
    clip_image_modules,
    count_forward,
    make_folder_source,
    make_spec,
    photo_bytes,
    prepare_dataset,
    shard_images,
    simple_descriptions,
)

from abs_model import ABSClassifier, ABSConfig
from tasks.datasets.imagenet import imagenet_classnames, imagenet_wnids, official_subset_wnids
from tasks.descriptions import validate_descriptions, write_descriptions
from tasks.run.context import EvaluationError, build_context
from tasks.run.text_cache import ensure_text_bank
from tasks.steps.dino_cache import dino_shard
from tasks.steps.infer import infer_shard
from tasks.store.paths import features_part, prediction_part
from tasks.store.tables import FEATURES_SCHEMA, PREDICTION_SCHEMA

GEOMETRY = ("width", "height", "dino_topk_indices", "dino_topk_values", "raw_boxes", "feature_windows")
NUMBERS = ("pred", "pred_name", "top5", "score_true", "margin")
IPB = 4


def partition_of(prediction_rel: str) -> tuple[str, str, str, int]:
    """(dataset, model, config, shard) of a prediction part path, as the layout names them."""
    parts = dict(p.split("=", 1) for p in prediction_rel.split("/") if "=" in p)
    return parts["dataset"], parts["model"], parts["config"], int(prediction_rel.rsplit("part-", 1)[1][:5])


def run_infer(
    ctx, dino, config: str, *, run_id: str = "run-1", images_per_batch: int = IPB, keep_features: bool = False
) -> list:
    info = ctx.info
    return [
        infer_shard(
            ctx.storage,
            ctx.classifier,
            dataset=info.dataset,
            model=ctx.spec.model_name,
            config=config,
            shard=sh.index,
            dino_path=dino[sh.index].path,
            classnames=list(info.classnames),
            run_id=run_id,
            images_per_batch=images_per_batch,
            keep_features=keep_features,
        )
        for sh in info.shards
    ]


def dino_all(ctx) -> dict:
    return {
        sh.index: dino_shard(
            ctx.storage,
            ctx.info.dataset,
            sh.index,
            ctx.info.fingerprint,
            ctx.dino,
            max_image_side=ctx.spec.abs.max_image_side,
        )
        for sh in ctx.info.shards
    }


def direct_predict(
    ctx, classifier, shard: int, dino_path: str, images_per_batch: int = IPB, return_features: bool = False
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, dict]]:
    """``ABSClassifier.predict`` on the shard's decoded ok images, in the chunks inference uses.

    Returns ``{row: {method: logits [C]}}`` and ``{row: extras}``.
    """
    sh = shard_images(ctx.storage, ctx.info.dataset, shard)
    logits: dict[int, dict[str, torch.Tensor]] = {}
    extras: dict[int, dict] = {}
    K = classifier.config.top_k
    for s in range(0, len(sh.ok), images_per_batch):
        chunk = sh.ok[s : s + images_per_batch]
        ids = [sh.ids[i] for i in chunk]
        out = classifier.predict(
            [sh.images[i] for i in chunk],
            ids,
            dino_topk=cached_topk(ctx.storage, dino_path, ids, K),
            return_features=return_features,
        )
        for j, i in enumerate(chunk):
            logits[i] = {m: v[j] for m, v in out.logits.items()}
            extras[i] = {k: v[j] for k, v in out.extras.items()}
            extras[i]["geometry"] = out.geometry[j]
    return logits, extras


def expected_numbers(logits: torch.Tensor, label: int, classnames: list[str]) -> dict:
    lg = logits.double()
    other = lg.clone()
    other[label] = float("-inf")
    top = torch.topk(lg, min(5, lg.numel())).indices.tolist()
    return {
        "pred": int(lg.argmax()),
        "pred_name": classnames[int(lg.argmax())],
        "top5": top,
        "score_true": float(np.float32(lg[label].item())),
        "margin": float(np.float32((lg[label] - other.max()).item())),
    }


def read_rows(ctx, config: str, shard: int) -> list[dict]:
    rel = prediction_part(ctx.info.dataset, ctx.spec.model_name, config, shard)
    table = ctx.storage.read_parquet(rel)
    assert table.schema.equals(PREDICTION_SCHEMA, check_metadata=False)
    return table.to_pylist()


def by_key(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["image_id"], r["method"]): r for r in rows}


# ---------------------------------------------------------------------- a folder dataset with bad files
@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """3 classes x 3 photos + a zero-byte .jpg + a text file named .jpg, in shards of 6; inferred once."""
    base = tmp_path_factory.mktemp("infer")
    src, root = str(base / "src"), str(base / "root")
    expect = make_folder_source(
        src, ["cat", "dog", "owl"], per_class=3, bad=[("cat", "empty.jpg"), ("dog", "text.jpg")]
    )
    prepare_dataset(root, "folder", src, "mini", images_per_shard=6, descriptions="mini-desc")
    ctx = build_context(root, make_spec("mini", "mini-desc"))  # 80 templates: all four methods
    dino = dino_all(ctx)
    results = run_infer(ctx, dino, ctx.config_hash)
    return types.SimpleNamespace(root=root, ctx=ctx, dino=dino, results=results, expect=expect)


def test_one_row_per_image_and_method_including_error_rows(mini):
    ctx = mini.ctx
    assert ctx.info.n_shards == 2 and ctx.info.n_total == 11
    seen = {}
    for sh, res in zip(ctx.info.shards, mini.results):
        rows = read_rows(ctx, ctx.config_hash, sh.index)
        img = shard_images(ctx.storage, "mini", sh.index)
        assert res.computed and (res.n_images, res.n_ok, res.n_error) == (sh.n_total, sh.n_ok, sh.n_error)
        assert len(rows) == len(img.ids) * len(METHODS)
        # rows follow the shard, one block of methods per image
        assert [r["image_id"] for r in rows[:: len(METHODS)]] == img.ids
        keyed = by_key(rows)
        assert len(keyed) == len(rows)
        for i, image_id in enumerate(img.ids):
            for m in METHODS:
                r = keyed[(image_id, m)]
                assert (r["label"], r["class_name"], r["shard"], r["run_id"]) == (
                    img.labels[i],
                    img.class_names[i],
                    sh.index,
                    "run-1",
                )
                assert r["class_name"] == ctx.info.classnames[r["label"]]
                if img.status[i] == "ok":
                    assert r["status"] == "ok" and r["error"] is None
                    assert all(r[k] is not None for k in NUMBERS)
                else:
                    assert (r["status"], r["error"]) == (img.status[i], img.error[i]) and r["error"]
                    assert all(r[k] is None for k in NUMBERS + GEOMETRY)
            seen[image_id] = keyed[(image_id, "abs")]["status"]
    assert seen == mini.expect  # every file of the source, with its status


def test_numbers_match_the_classifier_logits(mini):
    ctx = mini.ctx
    names = list(ctx.info.classnames)
    n_checked = 0
    for sh in ctx.info.shards:
        keyed = by_key(read_rows(ctx, ctx.config_hash, sh.index))
        logits, _ = direct_predict(ctx, ctx.classifier, sh.index, mini.dino[sh.index].path)
        img = shard_images(ctx.storage, "mini", sh.index)
        assert sorted(logits) == img.ok
        for i in img.ok:
            assert sorted(logits[i]) == sorted(METHODS)
            for m, lg in logits[i].items():
                r = keyed[(img.ids[i], m)]
                want = expected_numbers(lg, img.labels[i], names)
                assert {k: r[k] for k in NUMBERS} == want, (img.ids[i], m)
                # the definitions themselves
                assert r["pred"] == r["top5"][0] == int(lg.argmax())
                assert len(r["top5"]) == len(names) == len(set(r["top5"]))  # 3 classes: top5 holds all 3
                assert all(lg[a] >= lg[b] for a, b in zip(r["top5"], r["top5"][1:]))
                assert (r["margin"] > 0) == (r["pred"] == r["label"])
                n_checked += 1
    assert n_checked == 9 * len(METHODS)


def test_geometry_on_abs_rows_only(mini):
    ctx = mini.ctx
    cfg = ctx.spec.abs
    grid = ctx.clip.grid
    for sh in ctx.info.shards:
        rows = read_rows(ctx, ctx.config_hash, sh.index)
        img = shard_images(ctx.storage, "mini", sh.index)
        _, extras = direct_predict(ctx, ctx.classifier, sh.index, mini.dino[sh.index].path)
        for r in rows:
            if r["method"] != "abs" or r["status"] != "ok":
                assert all(r[k] is None for k in GEOMETRY), (r["image_id"], r["method"])
                continue
            i = img.ids.index(r["image_id"])
            geo = extras[i]["geometry"]
            assert (r["width"], r["height"]) == (img.width[i], img.height[i]) == (geo.width, geo.height)
            idx, vals = cached_topk(ctx.storage, mini.dino[sh.index].path, [r["image_id"]], cfg.top_k)
            assert r["dino_topk_indices"] == idx[0].tolist() == geo.dino_topk_indices.tolist()
            assert np.allclose(r["dino_topk_values"], vals[0].numpy(), rtol=0, atol=0)
            assert r["raw_boxes"] == geo.raw_boxes.tolist() and len(r["raw_boxes"]) == cfg.n_crops
            for x0, y0, x1, y1 in r["raw_boxes"]:
                assert 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]
            assert r["feature_windows"] == geo.feature_windows.tolist() and len(r["feature_windows"]) == cfg.n_crops
            for r0, r1, c0, c1 in r["feature_windows"]:
                assert 0 <= r0 < r1 <= grid and 0 <= c0 < c1 <= grid


def test_second_call_is_a_cache_hit_and_leaves_the_part_alone(mini):
    ctx = mini.ctx
    paths = [ctx.storage.path(r.path) for r in mini.results]
    before = [(open(p, "rb").read(), ctx.storage.fs.modified(p)) for p in paths]
    with count_forward(*clip_image_modules(ctx.clip), ctx.dino.model.patch_embed) as n:
        again = run_infer(ctx, mini.dino, ctx.config_hash, run_id="run-2", images_per_batch=1)
    assert n[0] == 0, "a committed part must not run a model"
    for first, second in zip(mini.results, again):
        assert not second.computed
        assert (second.path, second.n_images, second.n_ok, second.n_error) == (
            first.path,
            first.n_images,
            first.n_ok,
            first.n_error,
        )
    assert [(open(p, "rb").read(), ctx.storage.fs.modified(p)) for p in paths] == before
    assert {r["run_id"] for r in read_rows(ctx, ctx.config_hash, 0)} == {"run-1"}


def test_predictions_do_not_depend_on_images_per_batch(mini):
    ctx = mini.ctx
    with count_forward(*clip_image_modules(ctx.clip)) as n:
        one = run_infer(ctx, mini.dino, f"{ctx.config_hash}-ipb1", images_per_batch=1)
    assert all(r.computed for r in one)
    assert n[0] >= 2 * 9  # the hooks see real passes: trunk + head per image
    for sh in ctx.info.shards:
        a = read_rows(ctx, ctx.config_hash, sh.index)
        b = read_rows(ctx, f"{ctx.config_hash}-ipb1", sh.index)
        assert [(r["image_id"], r["method"], r["status"]) for r in a] == [
            (r["image_id"], r["method"], r["status"]) for r in b
        ]
        for x, y in zip(a, b):
            assert {k: x[k] for k in ("pred", "pred_name", "top5") + GEOMETRY} == {
                k: y[k] for k in ("pred", "pred_name", "top5") + GEOMETRY
            }
            if x["status"] != "ok":
                continue
            # Crops are seeded by image id, so they are identical; the models' matmuls may
            # round differently for another batch shape (the CPU kernel picks the blocking),
            # so the scores agree within rounding, not bit for bit.
            for k in ("score_true", "margin"):
                assert math.isclose(x[k], y[k], rel_tol=SCORE_RTOL, abs_tol=SCORE_ATOL), (x["method"], k)


def test_keep_features_writes_crop_and_global_features(mini):
    ctx = mini.ctx
    cfg = ctx.spec.abs
    config = f"{ctx.config_hash}-features"
    res = run_infer(ctx, mini.dino, config, keep_features=True)
    for sh, r in zip(ctx.info.shards, res):
        table = ctx.storage.read_parquet(features_part(*partition_of(r.path)))
        assert table.schema.equals(FEATURES_SCHEMA, check_metadata=False)
        rows = table.to_pylist()
        img = shard_images(ctx.storage, "mini", sh.index)
        assert [row["image_id"] for row in rows] == [img.ids[i] for i in img.ok]  # ok images only
        _, extras = direct_predict(ctx, ctx.classifier, sh.index, mini.dino[sh.index].path, return_features=True)
        for row, i in zip(rows, img.ok):
            crops = np.asarray(row["crop_features"], dtype=np.float32)
            assert crops.shape == (2 * cfg.n_crops, ctx.clip.embed_dim)  # raw crops, then feature crops
            assert np.array_equal(crops, extras[i]["crop_features"].numpy())
            assert np.allclose(np.linalg.norm(crops, axis=1), 1, atol=1e-5)
            g = np.asarray(row["global_feature"], dtype=np.float32)
            assert g.shape == (ctx.clip.embed_dim,) and np.array_equal(g, extras[i]["global_features"].numpy())
        # keeping features does not change a prediction
        assert read_rows(ctx, config, sh.index) == read_rows(ctx, ctx.config_hash, sh.index)


def test_keep_features_on_a_committed_part_adds_them_and_keeps_the_predictions(mini):
    ctx = mini.ctx
    paths = [ctx.storage.path(r.path) for r in mini.results]
    before = [open(p, "rb").read() for p in paths]
    assert not any(ctx.storage.exists(features_part(*partition_of(r.path))) for r in mini.results)
    with count_forward(*clip_image_modules(ctx.clip)) as n:
        res = run_infer(ctx, mini.dino, ctx.config_hash, run_id="run-3", keep_features=True)
    assert n[0] > 0
    assert not any(r.computed for r in res)  # the predictions were committed already
    assert [open(p, "rb").read() for p in paths] == before
    for sh, r in zip(ctx.info.shards, res):
        assert ctx.storage.read_parquet(features_part(*partition_of(r.path))).num_rows == sh.n_ok
    with count_forward(*clip_image_modules(ctx.clip)) as n:  # now both are committed
        run_infer(ctx, mini.dino, ctx.config_hash, run_id="run-4", keep_features=True)
    assert n[0] == 0


def test_descriptions_for_another_class_list_fail_fast(mini):
    for name, classes in [("renamed", ["cat", "dog", "ferret"]), ("fewer", ["cat", "dog"])]:
        ds = validate_descriptions(simple_descriptions(classes), classes, m=8)
        write_descriptions(ds, mini.root, name)
        with pytest.raises(EvaluationError, match=rf"description set '{name}' was made for {len(classes)} classes"):
            build_context(mini.root, make_spec("mini", name))
    with pytest.raises(EvaluationError, match="'ferret', 'owl'"):  # says where they differ
        build_context(mini.root, make_spec("mini", "renamed"))


def test_a_shard_of_error_rows_has_the_same_methods_as_the_others(tmp_path):
    """No ``clip-e`` without templates: also not in a shard whose every image failed."""
    src, root = str(tmp_path / "src"), str(tmp_path / "root")
    expect = make_folder_source(src, ["a", "b"], per_class={"b": 1}, bad=[("a", "empty.jpg"), ("a", "text.jpg")])
    prepare_dataset(root, "folder", src, "allbad", images_per_shard=2, descriptions="d")
    ctx = build_context(root, make_spec("allbad", "d", templates="none"))
    assert ctx.text.ensemble is None
    res = run_infer(ctx, dino_all(ctx), ctx.config_hash)
    assert [(r.n_images, r.n_ok) for r in res] == [(2, 0), (1, 1)]
    methods = ["abs", "clip", "cupl"]
    all_rows = []
    for sh in ctx.info.shards:
        rows = read_rows(ctx, ctx.config_hash, sh.index)
        assert [r["method"] for r in rows] == methods * sh.n_total, sh.index
        all_rows += rows
    assert {r["image_id"]: r["status"] for r in all_rows} == expect


# ---------------------------------------------------------------------- an ImageNet-A miniature
def test_imagenet_a_subset_scores_1000_texts_and_keeps_the_subset_columns(tmp_path):
    """A few of the 200 wnid folders; descriptions for all 1000 ImageNet classes."""
    wnids = imagenet_wnids()
    official = sorted(official_subset_wnids("imagenet_a") or (), key=wnids.index)
    assert len(official) == 200
    picked = [official[0], official[5], official[120]]
    src, root = str(tmp_path / "src"), str(tmp_path / "root")
    t = Tree(src)
    for n, w in enumerate(picked):
        for k in range(2):
            t.put(f"{w}/{w}_{k}.JPEG", photo_bytes(100 + 2 * n + k, 64 + 8 * k, 56 + 8 * n))
    t.put(f"{picked[1]}/broken.JPEG", b"not a jpeg either")
    info = prepare_dataset(
        root, "imagenet-a", src, "ina", images_per_shard=4, descriptions="ina-desc", n_descriptions=2
    )
    subset = sorted(wnids.index(w) for w in picked)
    assert info.subset_indices == subset and len(info.text_classnames) == 1000
    assert info.classnames == [imagenet_classnames()[i] for i in subset]

    config = ABSConfig(n_crops=SMALL_ABS.n_crops, top_k=SMALL_ABS.top_k, n_descriptions=2)
    ctx = build_context(root, make_spec("ina", "ina-desc", config, templates="none"))
    assert ctx.text.subset == subset and len(ctx.text.classnames) == 1000
    methods = ["abs", "clip", "cupl"]  # no templates, no clip-e
    dino = dino_all(ctx)
    res = run_infer(ctx, dino, ctx.config_hash)
    assert sum(r.n_ok for r in res) == 6 and sum(r.n_error for r in res) == 1

    # the same cached embeddings without the subset: all 1000 columns
    full_bank, entry = ensure_text_bank(
        ctx.storage,
        ctx.clip,
        list(info.text_classnames),
        ctx.descriptions.texts,
        ctx.descriptions.content_hash,
        m=2,
        prompt=ctx.spec.prompt,
        templates="none",
        subset=None,
        progress=False,
    )
    assert not entry.computed and entry.key == ctx.text_entry.key and full_bank.subset is None
    full = ABSClassifier(ctx.clip, ctx.dino, full_bank, config, "cpu")

    n_rows = 0
    for sh in info.shards:
        rows = read_rows(ctx, ctx.config_hash, sh.index)
        img = shard_images(ctx.storage, "ina", sh.index)
        assert [r["image_id"] for r in rows] == [i for i in img.ids for _ in methods]
        assert [r["method"] for r in rows] == methods * len(img.ids)
        sub_logits, _ = direct_predict(ctx, ctx.classifier, sh.index, dino[sh.index].path)
        full_logits, _ = direct_predict(ctx, full, sh.index, dino[sh.index].path)
        for r in rows:
            i = img.ids.index(r["image_id"])
            assert r["label"] == img.labels[i] and 0 <= r["label"] < len(picked)
            assert wnids[subset[r["label"]]] == r["image_id"].split("/")[0]
            if r["status"] != "ok":
                assert r["pred"] is None and r["status"] == "not_image"
                continue
            n_rows += 1
            assert 0 <= r["pred"] < len(picked) <= 200 and all(0 <= c < len(picked) for c in r["top5"])
            assert r["pred_name"] == info.classnames[r["pred"]]
            lg_sub, lg_full = sub_logits[i][r["method"]], full_logits[i][r["method"]]
            assert lg_sub.shape == (len(picked),) and lg_full.shape == (1000,)
            restricted = lg_full[subset]
            assert torch.equal(lg_sub, restricted)  # scored against all 1000 texts, subset columns kept
            assert r["pred"] == int(restricted.argmax()) == int(lg_sub.argmax())
            assert {k: r[k] for k in NUMBERS} == expected_numbers(lg_sub, r["label"], info.classnames)
    assert n_rows == 6 * len(methods)


def test_progress_inside_a_shard_reaches_every_image(mini, caplog):
    """The callback sees every image that reaches the model, batch by batch, and
    ShardProgress logs the first batch at once and the last one, with rate and ETA."""
    import logging

    from tasks.run.progress import ShardProgress

    ctx = mini.ctx
    sh = ctx.info.shards[0]
    calls = []
    logger = logging.getLogger("abs-eval-test-progress")
    prog = ShardProgress("infer shard 0", logger, log_every_s=3600, bar=False)

    def record(done, total):
        calls.append((done, total))
        prog(done, total)

    with caplog.at_level(logging.INFO, logger="abs-eval-test-progress"):
        infer_shard(
            ctx.storage,
            ctx.classifier,
            dataset=ctx.info.dataset,
            model=ctx.spec.model_name,
            config=f"{ctx.config_hash}-progress",
            shard=sh.index,
            dino_path=mini.dino[sh.index].path,
            classnames=list(ctx.info.classnames),
            run_id="run-p",
            images_per_batch=2,
            progress=record,
        )
    n_ok = len(shard_images(ctx.storage, "mini", sh.index).ok)
    assert calls and calls[-1] == (n_ok, n_ok)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == -(-n_ok // 2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == min(2, len(calls))  # the first batch at once, then the end (log_every_s not reached)
    assert lines[-1].startswith(f"infer shard 0: {n_ok}/{n_ok} images") and "ETA" in lines[-1]
