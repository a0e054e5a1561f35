"""CLIP split equals encode_image; DINO attention equals timm's own probabilities."""

import json

import pytest
import torch

from abs_model import CLIPBackbone, DINOBackbone, ModelSpec, SplitError


@pytest.mark.parametrize("fixture", ["tiny_clip", "tiny_clip_b32"])
def test_split_path_equals_encode_image(fixture, request):
    clip = request.getfixturevalue(fixture)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        ref = clip.model.encode_image(x)
        ours = clip.head(clip.trunk(x))
    assert torch.allclose(ours, ref, atol=1e-5)
    tokens = clip.trunk(x)
    assert tokens.shape == (3, 1 + clip.grid**2, clip.visual.transformer.width)
    assert clip.grid == (14 if fixture == "tiny_clip" else 7)


def test_random_weights_are_seeded_and_announced(capsys):
    a = CLIPBackbone.load("abs-tiny-vit-b16")
    b = CLIPBackbone.load("abs-tiny-vit-b16")
    assert a.weights_digest == b.weights_digest
    assert "RANDOM weights" in capsys.readouterr().err


def test_local_checkpoint_path_loads(tmp_path, tiny_clip):
    ckpt = tmp_path / "clip.pt"
    sd = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    sd["visual.proj"] = sd["visual.proj"] * 2.0  # distinguishable from the random init
    torch.save(sd, ckpt)
    loaded = CLIPBackbone.load(ModelSpec("abs-tiny-vit-b16", str(ckpt)))
    assert torch.equal(loaded.model.visual.proj, sd["visual.proj"])
    assert loaded.weights_digest != tiny_clip.weights_digest
    assert not loaded.is_random


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        CLIPBackbone.load(ModelSpec("abs-tiny-vit-b16", str(tmp_path / "nope.pt")))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        DINOBackbone.load(ModelSpec("abs-tiny-dino-vit-b16", str(tmp_path / "nope.pth")))


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        CLIPBackbone.load("ViT-Q-99")


def test_resnet_clip_cannot_be_split(tmp_path):
    import open_clip

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "abs-test-tiny-rn.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    model = open_clip.create_model("abs-test-tiny-rn")
    with pytest.raises(SplitError, match="ModifiedResNet"):
        CLIPBackbone(model, None, ModelSpec("abs-test-tiny-rn"))


def test_dino_cls_attention_equals_timm_unfused_probabilities(tiny_dino):
    model = tiny_dino.model
    last = model.blocks[-1].attn
    captured = {}
    handle = last.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("p", i[0].detach()))
    old = last.fused_attn
    last.fused_attn = False
    try:
        x = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            model.forward_features(x)
            ours = tiny_dino.cls_attention(x)
    finally:
        last.fused_attn = old
        handle.remove()
    ref = captured["p"][:, :, 0, model.num_prefix_tokens :].mean(dim=1)  # CLS query, head mean
    assert ours.shape == (2, 196)
    assert torch.allclose(ours, ref, atol=1e-6)
    # The CLS row over ALL keys sums to one; over patches alone it is a bit less.
    assert torch.all(ours.sum(1) < 1.0 + 1e-6)


def test_dino_local_checkpoint(tmp_path, tiny_dino):
    ckpt = tmp_path / "dino.pth"
    sd = {k: v.clone() for k, v in tiny_dino.model.state_dict().items()}
    sd["cls_token"] = sd["cls_token"] + 1.0
    torch.save(sd, ckpt)
    loaded = DINOBackbone.load(ModelSpec("abs-tiny-dino-vit-b16", str(ckpt)))
    assert torch.equal(loaded.model.cls_token, sd["cls_token"])


def test_unavailable_pretrained_weights_say_what_to_do():
    from abs_model import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="local checkpoint path"):
        CLIPBackbone.load(ModelSpec("abs-tiny-vit-b16", "no-such-tag"))


def test_offline_hub_errors_that_are_file_errors_become_the_one_line_message(tmp_path):
    """An offline timm/hub download raises huggingface_hub's LocalEntryNotFoundError, a
    FileNotFoundError: it must become WeightsUnavailableError (one line in the CLI), while a
    local checkpoint that exists keeps its own file error."""
    from abs_model import WeightsUnavailableError
    from abs_model.weights import explain_download

    class LocalEntryNotFound(FileNotFoundError):  # the shape of huggingface_hub's error
        pass

    with pytest.raises(WeightsUnavailableError, match="could not load DINO weights 'timm'.*local checkpoint path"):
        with explain_download("DINO", "vit_base_patch16_224.dino", "timm"):
            raise LocalEntryNotFound("Cannot find the requested files in the disk cache")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="shard 2"):
        with explain_download("DINO", "vit_base_patch16_224.dino", str(ckpt)):
            raise FileNotFoundError("shard 2 of the checkpoint is missing")
