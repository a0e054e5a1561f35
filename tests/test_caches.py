"""Text-embedding cache and DINO attention cache: a hit computes nothing, and holds what a fresh run computes.

Forward passes are counted with real forward hooks on the backbones (no mocks):
the CLIP text transformer for the text cache, DINO's patch embedding (the first
module every DINO pass runs) for the attention cache.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from pipeline_fixtures import count_forward, make_folder_source, prepare_dataset, shard_images, simple_descriptions

from abs_model import TextBank, dino_attention
from abs_model.text import imagenet_templates
from tasks.descriptions import validate_descriptions
from tasks.run.text_cache import ensure_text_bank, text_key
from tasks.steps.dino_cache import dino_key, dino_shard, read_dino_shard
from tasks.store import Storage
from tasks.store.paths import marker_key
from tasks.store.tables import DINO_SCHEMA

CLASSES = ["red fox", "blue whale", "green tree frog"]
M = 4
PROMPT = "a photo of a {}."


# ---------------------------------------------------------------------- text cache
@pytest.fixture(scope="module")
def desc_set():
    raw = simple_descriptions(CLASSES, n=5)
    raw["blue whale"] = raw["blue whale"][:2]  # a short class: the mask must survive the cache
    return validate_descriptions(raw, CLASSES, m=8)


def _bank(storage, clip, ds, *, m=M, prompt=PROMPT, templates="openai-imagenet", subset=None):
    return ensure_text_bank(
        storage,
        clip,
        CLASSES,
        ds.texts,
        ds.content_hash,
        m=m,
        prompt=prompt,
        templates=templates,
        subset=subset,
        progress=False,
    )


def _assert_same_bank(a: TextBank, b: TextBank) -> None:
    assert a.classnames == b.classnames
    assert a.descriptions.shape == b.descriptions.shape and torch.equal(a.descriptions, b.descriptions)
    assert torch.equal(a.mask, b.mask)
    for name in ("prompt", "ensemble"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert torch.equal(x, y), name
    assert torch.equal(a.cupl, b.cupl)


def test_text_cache_hit_runs_no_text_forward_and_equals_a_fresh_build(tmp_path, tiny_clip, desc_set):
    storage = Storage(str(tmp_path))
    text_model = tiny_clip.model.transformer
    with count_forward(text_model) as first:
        bank1, e1 = _bank(storage, tiny_clip, desc_set)
    assert e1.computed and first[0] > 0
    assert storage.exists(e1.path) and storage.is_done(marker_key(e1.path))

    with count_forward(text_model, tiny_clip.model.token_embedding) as second:
        bank2, e2 = _bank(storage, tiny_clip, desc_set)
    assert not e2.computed
    assert second[0] == 0, "a cache hit must not run the CLIP text encoder"
    assert (e2.key, e2.path, e2.n_classes, e2.m, e2.n_embeddings) == (e1.key, e1.path, 3, M, e1.n_embeddings)

    fresh = TextBank.build(
        tiny_clip, CLASSES, [list(t) for t in desc_set.texts], m=M, prompt=PROMPT, templates=imagenet_templates()
    )
    _assert_same_bank(bank1, fresh)
    _assert_same_bank(bank2, fresh)
    assert bank2.mask.sum(1).tolist() == [4, 2, 4]  # first M kept, short class padded and masked
    assert bank2.prompt is not None and bank2.ensemble is not None and bank2.subset is None
    # one Parquet row per embedding: the masked descriptions, one prompt and one ensemble per class
    assert pq.read_metadata(storage.path(e1.path)).num_rows == e1.n_embeddings == 10 + 3 + 3


def test_text_cache_key_covers_descriptions_m_prompt_and_templates(tmp_path, tiny_clip, desc_set):
    storage = Storage(str(tmp_path))
    base_bank, base = _bank(storage, tiny_clip, desc_set, templates="none")
    assert base.computed

    other_texts = [list(t) for t in desc_set.texts]
    other_texts[0][0] = "a photo of a red fox, seen at night."
    other = validate_descriptions(dict(zip(CLASSES, other_texts)), CLASSES, m=8)
    assert other.content_hash != desc_set.content_hash
    variants = {
        "descriptions": _bank(storage, tiny_clip, other, templates="none"),
        "m": _bank(storage, tiny_clip, desc_set, m=2, templates="none"),
        "prompt": _bank(storage, tiny_clip, desc_set, prompt="a blurry photo of a {}.", templates="none"),
        "templates": _bank(storage, tiny_clip, desc_set),
        "no prompt": _bank(storage, tiny_clip, desc_set, prompt="", templates="none"),
    }
    keys = {base.key} | {e.key for _, e in variants.values()}
    assert len(keys) == 1 + len(variants), "every input that changes an embedding must change the key"
    for what, (_, e) in variants.items():
        assert e.computed, what
        assert e.path != base.path, what
    assert variants["m"][0].descriptions.shape[1] == 2
    assert variants["no prompt"][0].prompt is None
    assert variants["templates"][0].ensemble is not None
    changed = variants["descriptions"][0].descriptions
    assert not torch.equal(changed[0, 0], base_bank.descriptions[0, 0])  # the edited text
    assert torch.equal(changed[1:], base_bank.descriptions[1:])  # the others
    assert base.key == text_key(tiny_clip, desc_set.content_hash, CLASSES, M, PROMPT, "none")

    # The class subset is applied when loading: same key, no recompute.
    with count_forward(tiny_clip.model.transformer) as n:
        sub, e = _bank(storage, tiny_clip, desc_set, templates="none", subset=[2, 0])
    assert not e.computed and e.key == base.key and n[0] == 0
    assert sub.subset == [2, 0]

    with pytest.raises(ValueError, match="unknown template set"):
        _bank(storage, tiny_clip, desc_set, templates="imagenet-80")


# ---------------------------------------------------------------------- DINO cache
DINO_SIDE = 1024


@pytest.fixture(scope="module")
def dino_root(tmp_path_factory):
    """A folder dataset with a zero-byte .jpg and a text file named .jpg, in two shards."""
    base = tmp_path_factory.mktemp("dino-cache")
    src, root = str(base / "src"), str(base / "root")
    expect = make_folder_source(src, ["ant", "bee"], per_class=3, bad=[("ant", "empty.jpg"), ("bee", "text.jpg")])
    info = prepare_dataset(root, "folder", src, "mini", images_per_shard=4)
    assert info.n_shards == 2 and info.status_counts == {"ok": 6, "empty": 1, "not_image": 1}
    return root, info, expect


def test_dino_cache_hit_runs_no_dino_forward(dino_root, tiny_dino):
    root, info, _ = dino_root
    storage = Storage(root)
    side = DINO_SIDE - 1  # a key of its own (the images are far smaller): the first call always computes
    for shard in info.shards:
        with count_forward(tiny_dino.model.patch_embed) as first:
            r1 = dino_shard(storage, "mini", shard.index, info.fingerprint, tiny_dino, max_image_side=side)
        assert r1.computed and first[0] > 0
        assert (r1.n_ok, r1.n_error) == (shard.n_ok, shard.n_error)
        with count_forward(tiny_dino.model.patch_embed, tiny_dino.model.blocks[0]) as second:
            r2 = dino_shard(storage, "mini", shard.index, info.fingerprint, tiny_dino, max_image_side=side)
        assert not r2.computed and second[0] == 0, "a cache hit must not run DINO"
        assert (r2.path, r2.n_ok, r2.n_error) == (r1.path, r1.n_ok, r1.n_error)


def test_dino_cache_holds_the_attention_of_the_decoded_images(dino_root, tiny_dino):
    root, info, expect = dino_root
    storage = Storage(root)
    seen = {}
    for shard in info.shards:
        r = dino_shard(storage, "mini", shard.index, info.fingerprint, tiny_dino, max_image_side=DINO_SIDE)
        table = storage.read_parquet(r.path)
        assert table.schema.equals(DINO_SCHEMA, check_metadata=False)
        rows = table.to_pylist()
        sh = shard_images(storage, "mini", shard.index)
        assert [row["image_id"] for row in rows] == sh.ids  # same rows, same order as the shard
        assert all(row["shard"] == shard.index and row["grid"] == tiny_dino.grid for row in rows)

        fresh = dino_attention(tiny_dino, [sh.images[i] for i in sh.ok], DINO_SIDE, "cpu", None)
        cached = torch.tensor([rows[i]["attention"] for i in sh.ok], dtype=torch.float32)
        assert cached.shape == (len(sh.ok), tiny_dino.grid**2)
        torch.testing.assert_close(cached, fresh, rtol=1e-6, atol=1e-8)
        # CLS-to-patch probabilities: positive, summing below 1 (the CLS token's own share is left out)
        assert bool((cached > 0).all()) and bool((cached.sum(1) < 1).all())

        for i, row in enumerate(rows):
            seen[row["image_id"]] = row["status"]
            if i in sh.ok:
                assert row["status"] == "ok" and row["error"] is None
            else:  # error rows pass through with the shard's status and reason
                assert row["attention"] is None
                assert (row["status"], row["error"]) == (sh.status[i], sh.error[i])
                assert row["error"]
        assert read_dino_shard(storage, r.path)[rows[0]["image_id"]][1] == rows[0]["status"]
    assert seen == expect
    assert seen["ant/empty.jpg"] == "empty" and seen["bee/text.jpg"] == "not_image"


def test_dino_cache_recomputes_for_another_fingerprint_or_preprocessing(dino_root, tiny_dino):
    root, info, _ = dino_root
    storage = Storage(root)
    shard = info.shards[0]
    base = dino_shard(storage, "mini", shard.index, info.fingerprint, tiny_dino, max_image_side=DINO_SIDE)
    before = storage.read_parquet(base.path)

    with count_forward(tiny_dino.model.patch_embed) as n:
        r = dino_shard(storage, "mini", shard.index, "another-fingerprint", tiny_dino, max_image_side=DINO_SIDE)
    assert r.computed and n[0] > 0 and r.path == base.path
    assert storage.read_marker(r.path.removesuffix(".parquet"))["fingerprint"] == "another-fingerprint"
    assert storage.read_parquet(r.path).equals(before)  # same images, same attention
    with count_forward(tiny_dino.model.patch_embed) as n:
        again = dino_shard(storage, "mini", shard.index, "another-fingerprint", tiny_dino, max_image_side=DINO_SIDE)
    assert not again.computed and n[0] == 0
    # back to the real fingerprint (recomputes once more; other tests of this module share the root)
    assert dino_shard(storage, "mini", shard.index, info.fingerprint, tiny_dino, max_image_side=DINO_SIDE).computed

    # another preprocessing is another key, so another part (the first stays valid)
    small = dino_shard(storage, "mini", shard.index, info.fingerprint, tiny_dino, max_image_side=32)
    assert small.computed and small.path != base.path
    assert dino_key(tiny_dino, 32) != dino_key(tiny_dino, DINO_SIDE)
