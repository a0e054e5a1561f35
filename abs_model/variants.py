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
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from .config import METHODS, ABSConfig
from .matching import _LOG2E, _NO_SHIFT_LOG2, cosine_logits, matching_chunks, soft_match
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


def _check_inputs(crop_features: Tensor, stored: ABSConfig, text: TextBank, global_features: Tensor | None) -> None:
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
    if global_features is not None and global_features.shape != (crop_features.shape[0], crop_features.shape[-1]):
        raise ValueError(
            f"global_features must be [{crop_features.shape[0]}, {crop_features.shape[-1]}], "
            f"got {tuple(global_features.shape)}"
        )


def _abs_logits(crop_features: Tensor, stored: ABSConfig, text: TextBank, spec: VariantSpec) -> Tensor:
    """``[B, C]`` (every class) ``abs`` logits of one variant, scored on its own."""
    bank = variant_text(text, spec.n_descriptions)
    dev, fdt = crop_features.device, crop_features.dtype
    desc = bank.descriptions.to(dev, fdt)
    mask = None if bool(bank.mask.all()) else bank.mask.to(dev)  # as the classifier: all valid -> no masking
    return MATCHINGS[spec.matching](select_crops(crop_features, stored, spec), desc, mask, spec.tau)


#: The baselines scored from the global views: method -> (its class features in a bank, whether they read M').
BASELINES: dict[str, tuple[Callable[[TextBank], Tensor | None], bool]] = {
    "clip": (lambda bank: bank.prompt, False),
    "clip-e": (lambda bank: bank.ensemble, False),
    "cupl": (lambda bank: bank.cupl, True),
}


class _Baselines:
    """The baselines' logits (``[B, C]``, every class) of the variants of one call, each computed once:
    ``clip`` and ``clip-e`` read neither N', M' nor tau; ``cupl`` reads M' only."""

    def __init__(self, text: TextBank, global_features: Tensor, dtype: torch.dtype) -> None:
        self.text, self.g, self.dtype = text, global_features, dtype
        self._cache: dict[tuple[str, int], Tensor | None] = {}

    def of(self, n_descriptions: int) -> dict[str, Tensor]:
        out = {}
        for name, (features_of, reads_m) in BASELINES.items():
            key = (name, n_descriptions if reads_m else 0)
            if key not in self._cache:
                features = features_of(variant_text(self.text, n_descriptions))
                self._cache[key] = (
                    None if features is None else cosine_logits(self.g, features.to(self.g.device, self.dtype))
                )
            logits = self._cache[key]
            if logits is not None:
                out[name] = logits
        return out


def _finish(logits: dict[str, Tensor], subset: Sequence[int] | None) -> dict[str, Tensor]:
    """Columns restricted to the bank's class subset, methods in ``METHODS`` order."""
    if subset is not None:
        some = next(iter(logits.values()))
        index = torch.tensor(list(subset), device=some.device)
        logits = {k: v.index_select(1, index) for k, v in logits.items()}
    return {m: logits[m] for m in METHODS if m in logits}


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
    Several variants of the same features: :func:`sweep_logits` (the same numbers, the work shared).
    """
    _check_inputs(crop_features, stored, text, global_features)
    spec.check_against(stored)
    logits = {"abs": _abs_logits(crop_features, stored, text, spec)}
    if global_features is not None:
        g = global_features.to(crop_features.device, crop_features.dtype)
        logits.update(_Baselines(text, g, crop_features.dtype).of(spec.n_descriptions))
    return _finish(logits, text.subset)


def same_call_as_fresh_run(spec: VariantSpec, stored: ABSConfig) -> bool:
    """Whether a fresh run with ``spec``'s setting makes the very ``soft_match`` call :func:`variant_logits` makes
    from the stored features: the same crops (all N of the run's branches, or of the raw branch: a raw-only
    run's trunk batch is the stored one) against the same M descriptions, another tau at most. Then the variant's
    numbers are the fresh run's bit for bit (M' and feature only: within rounding, module docstring)."""
    return (
        spec.matching == "soft"
        and spec.n_crops == stored.n_crops
        and spec.n_descriptions == stored.n_descriptions
        and spec.crop_kinds in (VariantSpec.of(stored).crop_kinds, "raw")
    )


def sweep_logits(
    crop_features: Tensor,
    stored: ABSConfig,
    text: TextBank,
    specs: Sequence[VariantSpec],
    global_features: Tensor | None = None,
    exact: bool = True,
) -> list[dict[str, Tensor]]:
    """For every spec of ``specs``, what :func:`variant_logits` returns (within float rounding), the work shared.

    ``exact``: the points a fresh run scores with the very same ``soft_match`` call (:func:`same_call_as_fresh_run`:
    another tau and/or raw crops only, all N crops and M descriptions) are scored by that call, as
    :func:`variant_logits` scores them, so they equal the fresh run bit for bit (the README's promise, and
    ``tests/test_variants.py``); the others share the work. False: every soft point shares it (those points
    then equal a fresh run within float rounding only; the bench's 10 points ~1.6x cheaper).

    Why: the points of a sweep differ only in which rows (crops) and columns (descriptions) of one
    crop x (class, description) product they read, and in the temperature. Soft matching is, per crop
    row ``n`` (``matching.soft_match``): ``logit[c] = sum_n numer[n, c] / Z[n]`` with ``numer[n, c] =
    sum_m e s``, ``Z[n] = sum_{c, m} e``, ``e = exp(s - shift)``, ``s = v_n . t[c, m] / tau``. So:

    * the products ``v_n . t[c, m]`` do not depend on tau: computed once per block (whole images' crops x
      a chunk of classes: one image on a CPU, ``_CPU_SWEEP_BLOCK_BYTES``; ``matching_chunks`` elsewhere)
      for every point;
    * one exponential pass per distinct tau, accumulating ``numer`` and ``Z`` per range of descriptions
      ``[0, M'_1), [M'_1, M'_2), ...`` (the points' distinct M'): the M'-prefix sums are their cumulative sums;
    * per row, so every N' prefix and crop branch is a sum over a subset of the rows.

    Numerics as ``soft_match``: base-2 exponentials, no shift when ``|s|`` is bounded (Cauchy-Schwarz, per
    block: an image's numbers do not depend on its batch; one image per block on a CPU), else a shift per
    (row, class chunk, description range) by its maximum, the blocks rescaled to the row's maximum over the
    point's descriptions at the end (a two-level softmax: no prefix loses its terms to another range's
    maximum). Masked (padded) descriptions are left out of both sums. ``average`` and any other matching
    are scored per point (cheap); the baselines once per distinct M' (``cupl``) or once (``clip``, ``clip-e``).

    Cost: one product per block and one exponential pass per distinct tau, whatever the number of points
    (10 points with 3 taus: ~2.2 soft matchings of the full setting on a 2-core CPU at D = 32, where the
    product is cheap; scored one by one, ~5.1). Memory: a product block and one per tau, one
    image block's sums (``taus x description ranges x [C, rows]``), and every point's ``[B, C]`` logits.
    """
    specs = list(specs)
    _check_inputs(crop_features, stored, text, global_features)
    for spec in specs:
        spec.check_against(stored)
    abs_of: dict[int, Tensor] = {}
    soft = [
        i
        for i, spec in enumerate(specs)
        if spec.matching == "soft" and not (exact and same_call_as_fresh_run(spec, stored))
    ]
    if soft:
        abs_of.update(zip(soft, _soft_sweep(crop_features, stored, text, [specs[i] for i in soft])))
    for i, spec in enumerate(specs):
        if i not in abs_of:
            abs_of[i] = _abs_logits(crop_features, stored, text, spec)
    baselines = None
    if global_features is not None:
        g = global_features.to(crop_features.device, crop_features.dtype)
        baselines = _Baselines(text, g, crop_features.dtype)
    out = []
    for i, spec in enumerate(specs):
        logits = {"abs": abs_of[i], **(baselines.of(spec.n_descriptions) if baselines is not None else {})}
        out.append(_finish(logits, text.subset))
    return out


# On an accelerator: the most bytes of one image block's per-(crop, class) sums in ``_soft_sweep``
# (``taus x description ranges`` of them); a CPU block is one image anyway.
_DEVICE_SWEEP_BYTES = 1 << 30
# Bytes of a CPU block's product in ``_soft_sweep`` (its exponentials take one more such block per tau): a
# block's ~15 calls serve every tau and description range, so larger blocks than soft_match's pay. The 10
# points of benchmarks/bench_variants.py, all shared (3 taus, 3 description ranges), on the features of its micro run
# (D = 32, 120 crops, 998 x 50 descriptions, 2-core EPYC) cost, in soft_match calls of the same images (tau
# 0.03): 2.53 at 1 MiB, 2.24 at 2 MiB, 2.22 at 4 MiB; scored one by one (``variant_logits``), 5.13.
_CPU_SWEEP_BLOCK_BYTES = 2 << 20


@dataclass(frozen=True)
class _ClassChunk:
    """One chunk of classes' descriptions laid out range by range (``_class_chunks``)."""

    c0: int
    c1: int
    text: Tensor
    """``[columns, D]``: for each description range in turn, the chunk's classes x the range's descriptions."""
    invalid: Tensor | None
    """``[columns, 1]``: True where a description is padding; None: none is."""
    spans: tuple[tuple[int, int, int], ...]
    """Per range: its first and end column, and its descriptions per class."""


def _class_chunks(desc: Tensor, invalid: Tensor | None, bounds: Sequence[int], class_chunk: int) -> list[_ClassChunk]:
    """``desc`` ``[C, M, D]`` cut into chunks of ``class_chunk`` classes, each chunk's columns range-major:
    ``[0, M'_1)`` of every class of the chunk, then ``[M'_1, M'_2)``, ... Why: every per-range sum and
    maximum of a block then reads one contiguous span (class-major, they were strided reductions, ~3-5x
    slower)."""
    c, _, d = desc.shape
    ranges = list(zip([0, *bounds[:-1]], bounds))
    out = []
    for c0 in range(0, c, class_chunk):
        c1 = min(c, c0 + class_chunk)
        w = c1 - c0
        text = torch.cat([desc[c0:c1, m0:m1].reshape(-1, d) for m0, m1 in ranges])
        inv = None if invalid is None else torch.cat([invalid[c0:c1, m0:m1].reshape(-1) for m0, m1 in ranges])
        spans = tuple((w * m0, w * m1, m1 - m0) for m0, m1 in ranges)
        out.append(_ClassChunk(c0, c1, text, None if inv is None or not bool(inv.any()) else inv.view(-1, 1), spans))
    return out


@dataclass(frozen=True)
class _BlockSums:
    """One image block's soft-matching sums for every tau and description range (``_block_sums``), in units of
    the block's products ``s = v . t * log2(e) / tau_0`` (the largest tau of the sweep)."""

    numer: Tensor
    """``[taus, ranges, C, rows]``: ``sum_m e * s`` over the range's descriptions."""
    z: Tensor
    """``[taus, class chunks, ranges, rows]``: ``sum e`` over the chunk's classes and the range's descriptions."""
    shift: Tensor | None
    """``[class chunks, ranges, rows]``: the maximum of ``s`` there (valid pairs; -inf: none), when any is shifted."""
    ratios: tuple[float, ...]
    """Per tau: ``tau_0 / tau``; ``e = exp2((s - shift) * tau_0 / tau)``."""
    shifted: tuple[bool, ...]
    """Per tau: whether its exponentials are shifted (else ``shift`` = 0)."""
    class_chunk: int

    def prefix(self, t: int, j: int) -> tuple[Tensor, Tensor]:
        """``(numer [C, rows], Z [rows])`` of tau ``t`` over the first ``j + 1`` ranges, on one scale per row."""
        if not self.shifted[t]:
            return self.numer[t, : j + 1].sum(0), self.z[t, :, : j + 1].sum(dim=(0, 1))
        assert self.shift is not None
        sh = self.shift[:, : j + 1] * self.ratios[t]  # log2 units of tau
        f = torch.exp2(sh - sh.amax(dim=(0, 1), keepdim=True))  # -inf (a cell of masked pairs only) -> 0
        z = (self.z[t, :, : j + 1] * f).sum(dim=(0, 1))
        c = self.numer.shape[2]
        numer = self.numer[t, 0] * f[:, 0].repeat_interleave(self.class_chunk, dim=0)[:c]
        for q in range(1, j + 1):
            numer += self.numer[t, q] * f[:, q].repeat_interleave(self.class_chunk, dim=0)[:c]
        return numer, z


def _outer_max(x: Tensor) -> Tensor:
    """``x.amax(dim=0)`` of a contiguous ``[n, rows]`` block. Why not that call: on a CPU an outer reduction over a
    short inner axis (rows = 120) is ~4x slower than a sum; folded to ``[64, n / 64 * rows]`` first it is not."""
    n = x.shape[0]
    g = min(64, n)
    k = n // g * g
    m = x[:k].reshape(g, -1).amax(dim=0).view(-1, x.shape[1]).amax(dim=0)
    return m if k == n else torch.maximum(m, x[k:].amax(dim=0))


def _block_sums(
    v: Tensor, chunks: Sequence[_ClassChunk], ratios: Sequence[float], shifted: Sequence[bool], class_chunk: int
) -> _BlockSums:
    """The sums of ``_BlockSums`` for the rows ``v`` ``[rows, D]`` (crop features times ``log2(e) / tau_0``)
    against the descriptions of ``chunks`` (``_class_chunks``).

    Per block (a chunk of classes x the block's rows): one product ``s`` ``[columns, rows]`` (columns first:
    ~1.6x faster than ``[rows, columns]`` at D = 32, and every reduction then runs over the outer axis), its
    maxima per description range when a tau is shifted, then the exponentials of every tau at once,
    ``e[t] = exp2(s * ratio[t] - shift * ratio[t])`` ``[taus, columns, rows]``, and their sums per description
    range: every call serves all taus (a CPU call costs microseconds of its own, and a block has ~15)."""
    rows = v.shape[0]
    c, nr, nt = chunks[-1].c1, len(chunks[0].spans), len(ratios)
    columns = chunks[0].text.shape[0]
    kw: dict[str, Any] = {"dtype": v.dtype, "device": v.device}
    numer = torch.empty(nt, nr, c, rows, **kw)
    z = torch.empty(nt, len(chunks), nr, rows, **kw)
    shift = torch.empty(len(chunks), nr, rows, **kw) if any(shifted) else None
    s_buf, e_buf = torch.empty(columns * rows, **kw), torch.empty(nt * columns * rows, **kw)
    ratio = torch.tensor(ratios, **kw).view(nt, 1, 1)
    # per tau, the shift's factor: ratio where shifted, else 0 (exp2(s * ratio) as is)
    shift_ratio = torch.tensor([-r if on else 0.0 for r, on in zip(ratios, shifted)], **kw).view(nt, 1, 1)
    vt = v.T
    for k, ch in enumerate(chunks):
        n, w = ch.text.shape[0], ch.c1 - ch.c0
        s = torch.mm(ch.text, vt, out=s_buf[: n * rows].view(n, rows))
        e = e_buf[: nt * n * rows].view(nt, n, rows)
        if shift is None:
            torch.mul(s, ratio, out=e)
        else:
            top = s if ch.invalid is None else s.masked_fill(ch.invalid, float("-inf"))
            for j, (o0, o1, _) in enumerate(ch.spans):
                shift[k, j] = _outer_max(top[o0:o1])
            base = torch.where(torch.isinf(shift[k]), torch.zeros_like(shift[k]), shift[k])  # [ranges, rows]
            for j, (o0, o1, _) in enumerate(ch.spans):
                torch.addcmul(base[j] * shift_ratio, s[o0:o1], ratio, out=e[:, o0:o1])
        e.exp2_()
        if ch.invalid is not None:
            e.masked_fill_(ch.invalid, 0.0)  # padded pairs: out of Z and (e = 0) of numer
        for j, (o0, o1, _) in enumerate(ch.spans):
            torch.sum(e[:, o0:o1], dim=1, out=z[:, k, j])
        e.mul_(s)
        for j, (o0, o1, m) in enumerate(ch.spans):
            torch.sum(e[:, o0:o1].view(nt, w, m, rows), dim=2, out=numer[:, j, ch.c0 : ch.c1])
    return _BlockSums(numer, z, shift, tuple(ratios), tuple(shifted), class_chunk)


def _soft_sweep(crop_features: Tensor, stored: ABSConfig, text: TextBank, specs: Sequence[VariantSpec]) -> list[Tensor]:
    """``[B, C]`` soft-matching logits (every class) of each of ``specs`` (all ``matching="soft"``), the work shared
    (:func:`sweep_logits`)."""
    b, _, d = crop_features.shape
    out_dtype = crop_features.dtype
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    dev = crop_features.device
    # the rows scored: the longest prefix of each branch any point keeps, raw first
    keep = [max((s.n_crops for s in specs if CROP_KINDS[s.crop_kinds][i]), default=0) for i in (0, 1)]
    feature_start = stored.n_crops if stored.raw_crops else 0
    index = torch.cat([torch.arange(keep[0]), feature_start + torch.arange(keep[1])]).to(dev)
    r = keep[0] + keep[1]
    taus = list(dict.fromkeys(s.tau for s in specs))
    # scores in log2 units of the largest tau (the one least often shifted: its pass needs no scaling), as
    # soft_match scales them: s = v . t * log2(e) / tau_0; another tau's are s * tau_0 / tau
    ratios = [max(taus) / tau for tau in taus]
    v = crop_features.index_select(1, index).to(dtype) * (_LOG2E / max(taus))
    rows_of = []
    for s in specs:  # each point's rows among them, in the classifier's order (raw first)
        parts = [start + torch.arange(s.n_crops) for start, on in zip((0, keep[0]), CROP_KINDS[s.crop_kinds]) if on]
        rows_of.append(torch.cat(parts).to(dev))
    bounds = sorted({s.n_descriptions for s in specs})
    where = [(taus.index(s.tau), bounds.index(s.n_descriptions)) for s in specs]
    mmax = bounds[-1]
    desc = text.descriptions[:, :mmax].to(dev, dtype)
    valid = text.mask[:, :mmax].to(dev, torch.bool)
    c = desc.shape[0]
    item = torch.finfo(dtype).bits // 8
    per, cc = matching_chunks(dev, b, r, mmax, item)
    if dev.type == "cpu":  # one image per block (matching_chunks), larger blocks than soft_match's
        cc = max(1, _CPU_SWEEP_BLOCK_BYTES // (r * mmax * item))
    else:  # the block's sums, taus x ranges x [C, rows], must fit too
        per = max(1, min(per, _DEVICE_SWEEP_BYTES // max(1, len(taus) * len(bounds) * r * c * item)))
        per, cc = matching_chunks(dev, per, r, mmax, item)
        cc = max(1, cc * 2 // (1 + len(taus)))  # 1 + taus block temporaries where soft_match has 2
    out = [torch.zeros(b, c, dtype=dtype, device=dev) for _ in specs]
    if b == 0 or c == 0:
        return [o.to(out_dtype) for o in out]
    chunks = _class_chunks(desc, None if bool(valid.all()) else ~valid, bounds, cc)
    t_max = float(desc.reshape(-1, d).norm(dim=1).max())
    for b0 in range(0, b, per):
        vb = v[b0 : b0 + per].reshape(-1, d).contiguous()
        nb = vb.shape[0] // r
        # |s| in log2 units of tau <= max|v| max|t| log2(e) / tau (Cauchy-Schwarz), padded descriptions included
        bound = float(vb.norm(dim=1).max()) * t_max
        shifted = [not bound * ratio * (1 + 1e-3) <= _NO_SHIFT_LOG2 for ratio in ratios]
        sums = _block_sums(vb, chunks, ratios, shifted, cc)
        prefixes: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        for i, (t, j) in enumerate(where):
            if (t, j) not in prefixes:
                prefixes[(t, j)] = sums.prefix(t, j)
            numer, z = prefixes[(t, j)]
            # logit[c] = ln 2 * sum_n numer[c, n] * (tau_0 / tau) / Z[n], summed over the crop axis of each image
            w = (math.log(2.0) * ratios[t] / z).view(1, nb, r).index_select(2, rows_of[i])
            logit = (numer.view(c, nb, r).index_select(2, rows_of[i]) * w).sum(dim=2)
            out[i][b0 : b0 + nb] = logit.T
    return [o.to(out_dtype) for o in out]
