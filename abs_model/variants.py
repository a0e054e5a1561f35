"""ABS variants scored from a run's stored crop features: no model runs again.

Why: the paper's ablations (raw-space crops only, feature-space crops only, soft matching
against plain description averaging) and sensitivity curves (N, M, tau) are each a full
evaluation when every setting is a fresh run; yet these settings act only AFTER the models,
on the crop features and the text bank. A run that kept its crop features
(``ABSClassifier.predict(..., return_features=True)``: ``[B, n_raw + n_feature, D]``, raw
crops first, and the global view's feature ``[B, D]``) holds everything they need.

Which variants equal a fresh run, checked against ``classifier.py`` and ``sampling.py``:

* ``tau``: only ``soft_match`` reads it. Same inputs, same call: the fresh run's logits.
* ``n_descriptions`` (M' <= M): the classifier slices ``text.descriptions[:, :M]``, and
  ``TextBank.build`` keeps each class's first M descriptions; the first M' of an M-bank
  are the descriptions an M'-bank encodes (the CLIP text encoder may round differently in
  another batch shape: equal within the README's score tolerance). ``cupl`` follows M'.
* ``crop_kinds`` raw / feature: ``draw_crops_batch`` draws both branches' cells and sizes
  whatever ``raw_crops`` / ``feature_crops`` say (the same generator calls in the same
  order), and the classifier only leaves a branch out of the model passes; so a one-branch
  run's crops are the stored crops of that branch. Raw only: the same trunk batch, the same
  numbers. Feature only: the fresh run's trunk batch holds only the global views, which may
  round differently (within tolerance).
* ``n_crops`` N' < N changes the draws: ``torch.multinomial(p, N)`` then draws the feature
  branch's cells, widths, heights and sides from later positions of the image's generator,
  so a fresh N'-run draws other crops. The first N' stored crops of each branch are N' i.i.d.
  draws from the same distribution (centres from softmax(top-K / tau_sample), sizes uniform):
  a statistically equivalent N'-crop sample, not the fresh run's sample.
* ``matching="average"`` has no ``ABSConfig`` field: the ablation that replaces soft matching by
  the plain mean over a class's descriptions (:func:`average_match`).

:func:`variant_logits` returns what ``ABSClassifier.predict`` returns in ``Prediction.logits``
(``abs`` and, given the global features, the baselines), class subset applied.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from .config import METHODS, ABSConfig
from .matching import cosine_logits, soft_match
from .text import TextBank

#: Which crop branches a variant scores: name -> (raw-space crops, feature-space crops).
CROP_KINDS: dict[str, tuple[bool, bool]] = {"both": (True, True), "raw": (True, False), "feature": (False, True)}


def soft_logits(crops: Tensor, desc: Tensor, mask: Tensor | None, tau: float) -> Tensor:
    """ABS soft matching, the call ``ABSClassifier.predict`` makes (``matching.soft_match``)."""
    return soft_match(crops, desc, mask, tau, check_mask=False)


def average_match(crops: Tensor, desc: Tensor, mask: Tensor | None, tau: float) -> Tensor:
    """Plain description averaging: ``logit[c] = sum_n mean_m s[n, c, m]``, ``s = v_n . t[c, m] / tau``.

    Every valid description of a class weighs the same (no softmax over the (class, description)
    pairs): the ablation of soft matching. Computed as ``(sum_n v_n) . mean_m t[c, m] / tau`` with
    ``cosine_logits`` (a row-wise float64 product), so an image's logits do not depend on the batch.
    """
    w = (
        torch.ones(desc.shape[:2], dtype=desc.dtype, device=desc.device)
        if mask is None
        else mask.to(device=desc.device, dtype=desc.dtype)
    )
    mean_t = (desc * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp(min=1)
    return cosine_logits(crops.sum(1), mean_t, scale=1.0 / tau)


#: How crop features meet the description features: name -> fn(crops [B, n, D], desc [C, M, D], mask, tau) -> [B, C].
MATCHINGS: dict[str, Callable[[Tensor, Tensor, Tensor | None, float], Tensor]] = {
    "soft": soft_logits,
    "average": average_match,
}


@dataclass(frozen=True)
class VariantSpec:
    """One setting scored from stored features: every field explicit (:meth:`of` gives a run's own)."""

    n_crops: int
    """N': the first N' stored crops of each branch (a prefix when N' < the run's N)."""
    crop_kinds: str
    """Which branches: ``both``, ``raw`` (raw-space crops only) or ``feature`` (feature-space only)."""
    n_descriptions: int
    """M': each class's first M' descriptions."""
    tau: float
    """Soft-matching temperature (also the scale of ``average``'s scores)."""
    matching: str = "soft"
    """``soft`` (ABS) or ``average`` (plain description averaging, :func:`average_match`)."""

    def __post_init__(self) -> None:
        if self.crop_kinds not in CROP_KINDS:
            raise ValueError(f"crop_kinds {self.crop_kinds!r}: choose from {', '.join(CROP_KINDS)}")
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching {self.matching!r}: choose from {', '.join(MATCHINGS)}")
        for name in ("n_crops", "n_descriptions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau!r}")

    @classmethod
    def of(cls, config: ABSConfig) -> VariantSpec:
        """The setting a run with ``config`` scored (its own predictions)."""
        kinds = next(k for k, v in CROP_KINDS.items() if v == (config.raw_crops, config.feature_crops))
        return cls(config.n_crops, kinds, config.n_descriptions, config.tau)

    def with_changes(self, **changes: Any) -> VariantSpec:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, base: VariantSpec) -> dict[str, Any]:
        """The fields that differ from ``base``, in field order, with this spec's values."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(base, f.name)}

    def name(self, base: VariantSpec) -> str:
        """What differs from ``base``, e.g. ``tau=0.05`` or ``n_crops=20,crop_kinds=raw`` (``base`` when nothing)."""
        diff = self.differences(base)
        return ",".join(f"{k}={_short(v)}" for k, v in diff.items()) or "base"

    def config(self, stored: ABSConfig) -> ABSConfig:
        """The ``ABSConfig`` of the run this variant stands for: ``stored`` with N', M', tau and the branches."""
        raw, feature = CROP_KINDS[self.crop_kinds]
        return replace(
            stored,
            n_crops=self.n_crops,
            n_descriptions=self.n_descriptions,
            tau=self.tau,
            raw_crops=raw,
            feature_crops=feature,
        )

    def is_prefix(self, stored: ABSConfig) -> bool:
        """Whether the variant keeps fewer crops than the run drew (then it differs from a fresh run's draws)."""
        return self.n_crops < stored.n_crops

    def equals_fresh_run(self, stored: ABSConfig) -> bool:
        """Whether a fresh run with :meth:`config` scores the same crops the same way (module docstring)."""
        return not self.is_prefix(stored) and self.matching == "soft"

    def check_against(self, stored: ABSConfig, text_width: int | None = None) -> None:
        """``ValueError`` naming what the stored run cannot give: more crops, a branch it did not keep, more
        descriptions than it encoded."""
        problems = []
        if self.n_crops > stored.n_crops:
            problems.append(f"n_crops={self.n_crops}: the run drew N={stored.n_crops} crops per branch")
        raw, feature = CROP_KINDS[self.crop_kinds]
        if (raw and not stored.raw_crops) or (feature and not stored.feature_crops):
            kept = [k for k, on in (("raw", stored.raw_crops), ("feature", stored.feature_crops)) if on]
            problems.append(f"crop_kinds={self.crop_kinds}: the run kept only {'/'.join(kept)}-space crops")
        if self.n_descriptions > stored.n_descriptions:
            problems.append(
                f"n_descriptions={self.n_descriptions}: the run encoded M={stored.n_descriptions} "
                "descriptions per class"
            )
        if problems:
            raise ValueError("; ".join(problems))


def sweep(base: VariantSpec, axes: Mapping[str, Sequence[Any]], cross: bool = False) -> list[VariantSpec]:
    """Variants of ``base`` along ``axes`` (``{field: values}``): one field at a time, the others at
    ``base`` (the paper's sensitivity curves), or every combination with ``cross`` (ablation tables,
    e.g. crop kinds x matching). The base setting itself and repeats are left out; a bad value is a
    ``ValueError`` naming it."""
    known = [f.name for f in fields(VariantSpec)]
    unknown = sorted(set(axes) - set(known))
    if unknown:
        raise ValueError(f"unknown variant fields {unknown}; choose from {', '.join(known)}")
    keys = [k for k in known if axes.get(k)]
    if cross:
        specs = [base.with_changes(**dict(zip(keys, combo))) for combo in itertools.product(*(axes[k] for k in keys))]
    else:
        specs = [base.with_changes(**{k: v}) for k in keys for v in axes[k]]
    return [s for s in dict.fromkeys(specs) if s != base]


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def stored_crop_count(stored: ABSConfig) -> int:
    """Rows of a run's stored crop features per image: N raw crops (if any), then N feature crops (if any)."""
    return stored.n_crops * (int(stored.raw_crops) + int(stored.feature_crops))


def select_crops(crop_features: Tensor, stored: ABSConfig, spec: VariantSpec) -> Tensor:
    """The crops ``spec`` scores, ``[B, n', D]`` in the classifier's order (raw crops first)."""
    n = stored.n_crops
    raw, feature = CROP_KINDS[spec.crop_kinds]
    parts = []
    if raw:
        parts.append(crop_features[:, : spec.n_crops])
    if feature:
        start = n if stored.raw_crops else 0
        parts.append(crop_features[:, start : start + spec.n_crops])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def variant_text(text: TextBank, n_descriptions: int) -> TextBank:
    """The text bank an M'-run holds: each class's first M' descriptions (``cupl`` follows them)."""
    return TextBank(
        text.classnames,
        text.descriptions[:, :n_descriptions],
        text.mask[:, :n_descriptions],
        text.prompt,
        text.ensemble,
        text.subset,
    )


def variant_logits(
    crop_features: Tensor,
    stored: ABSConfig,
    text: TextBank,
    spec: VariantSpec,
    global_features: Tensor | None = None,
) -> dict[str, Tensor]:
    """Logits of every method for the variant ``spec`` of a run with config ``stored``, as ``predict`` gives them.

    Args:
        crop_features: ``[B, n, D]`` the run's stored crop features (``n = stored_crop_count(stored)``).
        stored: the ``ABSConfig`` of the run that stored them.
        text: the run's text bank (the M descriptions it encoded).
        spec: the variant.
        global_features: ``[B, D]`` the global views' features; given, the baselines (``clip``,
            ``clip-e`` when the bank has their prompts, ``cupl`` over M' descriptions) are scored too.

    Returns ``{method: [B, C']}`` in ``METHODS`` order, columns restricted to the bank's class subset.
    Computed on ``crop_features``' device, in its dtype (the classifier's feature dtype).
    """
    if crop_features.dim() != 3:
        raise ValueError(f"crop_features must be [B, n, D], got shape {tuple(crop_features.shape)}")
    want = stored_crop_count(stored)
    if crop_features.shape[1] != want:
        raise ValueError(
            f"{crop_features.shape[1]} stored crops per image; a run with N={stored.n_crops} "
            f"(raw={stored.raw_crops}, feature={stored.feature_crops}) stores {want}"
        )
    if crop_features.shape[-1] != text.descriptions.shape[-1]:
        raise ValueError(
            f"crop features have dimension {crop_features.shape[-1]}, text features {text.descriptions.shape[-1]}"
        )
    spec.check_against(stored)
    bank = variant_text(text, spec.n_descriptions)
    dev, fdt = crop_features.device, crop_features.dtype
    desc = bank.descriptions.to(dev, fdt)
    mask = None if bool(bank.mask.all()) else bank.mask.to(dev)  # as the classifier: all valid -> no masking
    crops = select_crops(crop_features, stored, spec)
    logits = {"abs": MATCHINGS[spec.matching](crops, desc, mask, spec.tau)}
    if global_features is not None:
        if global_features.shape != (crop_features.shape[0], crop_features.shape[-1]):
            raise ValueError(
                f"global_features must be [{crop_features.shape[0]}, {crop_features.shape[-1]}], "
                f"got {tuple(global_features.shape)}"
            )
        baselines = {"clip": bank.prompt, "clip-e": bank.ensemble, "cupl": bank.cupl}
        g = global_features.to(dev, fdt)
        for name, class_features in baselines.items():
            if class_features is not None:
                logits[name] = cosine_logits(g, class_features.to(dev, fdt))
    if bank.subset is not None:
        subset = torch.tensor(bank.subset, device=dev)
        logits = {k: v.index_select(1, subset) for k, v in logits.items()}
    return {m: logits[m] for m in METHODS if m in logits}
