"""Weight loading helpers shared by the backbones: seeded random init and digests.

Why digests: the pipeline keys its caches by model *and weights*, so a fine-tuned
checkpoint under the same architecture name never reuses another's features.
Why seeded random init: with random weights (tests, offline demo) a resumed run in a
new process must rebuild exactly the same model, or resume would mix two models.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import WeightsUnavailableError  # defined without torch; re-exported here

if TYPE_CHECKING:
    from .config import ModelSpec

log = logging.getLogger("abs_model")

RANDOM_INIT_SEED = 0


@contextlib.contextmanager
def seeded_init(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Run model construction under a fixed torch seed without touching global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def state_digest(module: nn.Module) -> str:
    """sha256 over parameter/buffer names, shapes, dtypes and bytes (first 16 hex chars)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def explain_download(kind: str, name: str, tag: str) -> Iterator[None]:
    """Turn a failed weights download into one message that says what to do."""
    try:
        yield
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # network, hub or format errors from open_clip / timm / huggingface_hub
        if isinstance(exc, FileNotFoundError) and os.path.exists(tag):
            raise  # a local checkpoint that exists but is incomplete: the file error says which
        # (huggingface_hub's LocalEntryNotFoundError, what an offline timm download raises, is a
        # FileNotFoundError too: it must become the one-line message, not a traceback)
        raise WeightsUnavailableError(
            f"could not load {kind} weights {tag!r} for {name}: {type(exc).__name__}: {exc}. "
            "If this machine is offline, download them elsewhere and pass the local checkpoint path "
            "instead of the tag, or use 'random' for a smoke test."
        ) from exc


def announce_random(kind: str, name: str) -> None:
    """Say loudly, on stderr and in the log, that a backbone has random weights."""
    msg = (
        f"[abs_model] {kind} '{name}' has RANDOM weights (no pretrained weights loaded): "
        "predictions are at chance level. Pass a pretrained tag or a checkpoint path for real results."
    )
    log.warning(msg)
    print(msg, file=sys.stderr)


class WeightsInfo:
    """Mixin for backbones holding ``self.model`` and ``self.spec``: digest and randomness."""

    model: nn.Module
    spec: ModelSpec
    _digest: str | None = None

    @property
    def weights_digest(self) -> str:
        """Computed once per loaded model (hashing ViT-L weights takes a second or two)."""
        if self._digest is None:
            self._digest = state_digest(self.model)
        return self._digest

    @property
    def is_random(self) -> bool:
        return self.spec.is_random
