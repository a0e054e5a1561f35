"""The text side of ABS and its baselines, as one bundle of class features.

Why a bundle: every method in one run scores the same class list. ``TextBank``
holds the description features ``[C, M, D]`` with their mask (classes may have
fewer than M descriptions), plus the single-prompt (``clip``) and template-ensemble
(``clip-e``) class features, and the optional class subset the argmax runs over
(ImageNet-A/R score all 1000 ImageNet classes and pick among their 200).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import DEFAULT_PROMPT

_PLACEHOLDER = re.compile(r"\{c?\}")


def imagenet_templates() -> list[Callable[[str], str]]:
    """The 80 OpenAI ImageNet prompt templates as open_clip ships them."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


def fill_template(template: str, classname: str) -> str:
    """A template with its class placeholders, ``{c}`` (CLIP_benchmark's) and ``{}`` (CLIP's), replaced.

    Why replace rather than ``str.format``: the two tools spell the placeholder differently
    (``format(c=name)`` against ``format(name)``), and a template file may use either; for a
    template with no other braces both give exactly this.
    """
    return _PLACEHOLDER.sub(lambda _: classname, template)  # one pass: a name holding "{}" stays as it is


def _mean_normalised(features: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over axis 1 of ``[C, M, D]``, renormalised."""
    w = mask.to(device=features.device, dtype=features.dtype).unsqueeze(-1)
    mean = (features * w).sum(1) / w.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(mean, dim=-1)


@dataclass
class TextBank:
    """Class-side features for one class list and one CLIP model."""

    classnames: list[str]
    descriptions: Tensor  # [C, M, D] L2-normalised, in the encoder's dtype; padded rows are ignored
    mask: Tensor  # [C, M] bool
    prompt: Tensor | None = None  # [C, D] ``clip`` baseline
    ensemble: Tensor | None = None  # [C, D] ``clip-e`` baseline
    subset: list[int] | None = None  # argmax over these class indices only

    def __post_init__(self) -> None:
        c, m, _ = self.descriptions.shape
        if len(self.classnames) != c or tuple(self.mask.shape) != (c, m):
            raise ValueError(
                f"TextBank shapes disagree: {len(self.classnames)} classnames, descriptions "
                f"{tuple(self.descriptions.shape)}, mask {tuple(self.mask.shape)}"
            )
        empty = [self.classnames[i] for i in torch.nonzero(~self.mask.any(1)).flatten().tolist()]
        if empty:
            raise ValueError(f"{len(empty)} classes have no descriptions: {empty[:10]}")
        if self.subset is not None:
            bad = [i for i in self.subset if not 0 <= i < c]
            if bad:
                raise ValueError(f"class subset indices out of range [0, {c}): {bad[:10]}")

    @property
    def cupl(self) -> Tensor:
        """``cupl`` baseline: mean of each class's description features."""
        return _mean_normalised(self.descriptions, self.mask)

    @classmethod
    def build(
        cls,
        clip,
        classnames: Sequence[str],
        descriptions: Sequence[Sequence[str]],
        m: int = 50,
        prompt: str | None = DEFAULT_PROMPT,
        templates: Sequence[Callable[[str], str] | str] | None = None,
        subset: Sequence[int] | None = None,
        progress: bool = False,
        batch_size: int = 256,
    ) -> TextBank:
        """Encode everything with ``clip`` (a ``CLIPBackbone``).

        ``descriptions[c]`` are used as written (no template), first ``m`` kept.
        ``templates``: callables or strings with ``{c}`` or ``{}`` (:func:`fill_template`) for
        ``clip-e`` (default: the 80 OpenAI ImageNet templates); every one is used (``m`` limits
        the descriptions only); pass ``[]`` to skip ``clip-e``.
        Every feature keeps the dtype and device ``clip.encode_text`` returns
        (float64 for a float64 model, float32 otherwise).
        """
        classnames = list(classnames)
        if len(descriptions) != len(classnames):
            raise ValueError(f"{len(descriptions)} description lists for {len(classnames)} classes")
        kept = [[d for d in ds if d and d.strip()][:m] for ds in descriptions]
        width = max(1, max((len(k) for k in kept), default=1))
        flat = [d for k in kept for d in k]
        enc = clip.encode_text(flat, batch_size=batch_size, progress=progress)
        dim = enc.shape[1]
        # Buffers take the dtype and device of the features they hold: a float64 model
        # keeps float64 description features (exactness checks), not a float32 copy.
        feats = torch.zeros(len(classnames), width, dim, dtype=enc.dtype, device=enc.device)
        mask = torch.zeros(len(classnames), width, dtype=torch.bool, device=enc.device)
        pos = 0
        for ci, k in enumerate(kept):
            feats[ci, : len(k)] = enc[pos : pos + len(k)]
            mask[ci, : len(k)] = True
            pos += len(k)
        prompt_f = None
        if prompt:
            prompt_f = clip.encode_text([prompt.format(c) for c in classnames], batch_size=batch_size)
        ens = None
        templates = imagenet_templates() if templates is None else list(templates)
        if templates:
            fill = [t if callable(t) else functools.partial(fill_template, t) for t in templates]
            texts = [f(c) for c in classnames for f in fill]
            t = clip.encode_text(texts, batch_size=batch_size, progress=progress).view(len(classnames), len(fill), dim)
            ens = _mean_normalised(t, torch.ones(t.shape[:2], dtype=torch.bool, device=t.device))
        return cls(classnames, feats, mask, prompt_f, ens, list(subset) if subset is not None else None)
