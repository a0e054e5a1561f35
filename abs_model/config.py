"""Typed configuration of the ABS method and of the models it runs on.

Why a dataclass and not loose keyword arguments: the pipeline hashes the
configuration to decide whether cached predictions can be reused, so every number
that changes a prediction lives here, with the paper's defaults.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: The methods a classifier scores, in the order tables and plots show them: ABS and the
#: baselines (CLIP with one prompt, CLIP-E with the template ensemble, CuPL descriptions).
METHODS = ("abs", "clip", "clip-e", "cupl")
#: The prompt of the plain CLIP baseline.
DEFAULT_PROMPT = "a photo of a {}."


@dataclass(frozen=True)
class ABSConfig:
    """Method parameters (defaults from the ABS paper, ICML 2025; see ABS_SPEC.md)."""

    alpha: float = 0.5
    """Smallest crop side as a fraction of the image (or feature-grid) side."""
    beta: float = 0.9
    """Largest crop side as a fraction of the image (or feature-grid) side."""
    top_k: int = 20
    """Crop centres are drawn from the K patches DINO attends to most."""
    n_crops: int = 60
    """Crops per branch (raw-space and feature-space each)."""
    n_descriptions: int = 50
    """M: the first M descriptions per class are used."""
    tau_sample: float = 0.03
    """Softmax temperature over the top-K attention values."""
    tau: float = 0.03
    """Soft-matching temperature."""
    seed: int = 0
    """Every random draw for an image comes from a generator seeded by (seed, image id)."""
    raw_crops: bool = True
    """Use the raw-space (pixel) crops."""
    feature_crops: bool = True
    """Use the feature-space crops."""
    max_image_side: int = 0
    """Downscale limit in pixels; 0 (the default) means no limit (``None`` is read as 0).

    0: every model input is resized once from the original image, whatever its size:
    the global view (the ``clip`` / ``clip-e`` / ``cupl`` baselines) is exactly
    open_clip's ``preprocess(img)``, as CLIP_benchmark feeds it; the raw crops are cut
    from the original, as the ABS authors' code does; DINO resizes the original to its
    input. A positive L: an image whose longer side exceeds L is first downscaled
    (antialiased bicubic) to L and every view (global, crops, DINO) is resized from
    that copy; crop boxes stay in original pixels. The limit bounds the resampling work
    and memory per image (a crop's resampling reads every source pixel it covers) at the
    price of agreement with the reference tools; on a CPU it saves no time below ~12 MP
    (README, "Large images")."""

    def __post_init__(self) -> None:
        if not (0.0 < self.alpha <= self.beta <= 1.0):
            raise ValueError(f"need 0 < alpha <= beta <= 1, got alpha={self.alpha}, beta={self.beta}")
        for name in ("top_k", "n_crops", "n_descriptions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tau <= 0 or self.tau_sample <= 0:
            raise ValueError("temperatures must be > 0")
        if not (self.raw_crops or self.feature_crops):
            raise ValueError("at least one of raw_crops / feature_crops must be enabled")
        if self.max_image_side is None:  # accepted as "no limit"; stored (and hashed) as 0
            object.__setattr__(self, "max_image_side", 0)
        if isinstance(self.max_image_side, bool) or not isinstance(self.max_image_side, int) or self.max_image_side < 0:
            raise ValueError(
                f"max_image_side must be an integer >= 0 (0: no downscale limit), got {self.max_image_side!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ABSConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ABSConfig fields: {sorted(unknown)}")
        return cls(**d)

    def digest(self) -> str:
        """A short stable hash of every field (part of the pipeline's cache keys)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _freeze(value: Any) -> Any:
    """Nested containers made immutable: mappings -> ``FrozenDict``, lists/tuples -> tuples, sets -> frozensets."""
    if isinstance(value, Mapping):
        return value if type(value) is FrozenDict else FrozenDict(value)
    if isinstance(value, (list, tuple)) and not hasattr(type(value), "_fields"):  # NamedTuples stay as they are
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """The inverse of ``_freeze`` for mappings: plain (nested) dicts, e.g. for ``to_dict``."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple) and not hasattr(type(value), "_fields"):
        return tuple(_thaw(v) for v in value)
    return value


class FrozenDict(dict):
    """An immutable, hashable ``dict`` with value semantics.

    A ``dict`` subclass, so ``json.dumps``, ``dict(...)``, ``**kwargs`` and
    ``dataclasses.asdict`` treat it exactly like the plain dict it was built from
    (same JSON text). Nested dicts / lists / sets are frozen too (to ``FrozenDict``
    / tuples / frozensets), so the hash cannot go stale. Equal contents compare and
    hash equal, also against a plain dict with the same items (``==`` only: plain
    dicts are unhashable).
    """

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__((k, _freeze(v)) for k, v in dict(*args, **kwargs).items())

    def _immutable(self, *args: Any, **kwargs: Any):
        raise TypeError("FrozenDict is immutable (ModelSpec.extra): build a new one, e.g. {**old, key: value}")

    __setitem__ = __delitem__ = __ior__ = _immutable
    clear = pop = popitem = setdefault = update = _immutable

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self):
        # pickle / copy would otherwise refill the dict through the blocked __setitem__
        return (type(self), (dict(self),))

    @classmethod
    def fromkeys(cls, keys, value=None) -> FrozenDict:
        return cls(dict.fromkeys(keys, value))


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load for one backbone.

    ``name`` is an open_clip model name (``ViT-B-16``) or a timm model name
    (``vit_base_patch16_224.dino``). ``pretrained`` is an open_clip pretrained tag
    (``openai``), the literal ``"timm"`` for timm's own hub weights, a local
    checkpoint path, or ``None`` / ``"random"`` for random initialisation (tests and
    offline demos; announced loudly). ``extra``: further keyword arguments for the
    model factory (open_clip's ``create_model`` / timm's ``create_model``).

    Hashable with value semantics (usable as a dict key; equal specs hash equal):
    ``extra`` may be passed as any mapping and is stored as a ``FrozenDict`` -- an
    immutable dict subclass, so ``dict(spec.extra)``, ``**spec.extra``,
    ``json.dumps(spec.extra)`` and ``dataclasses.asdict(spec)`` work and read as
    before (nested lists inside ``extra`` become tuples).
    """

    name: str
    pretrained: str | None = None
    extra: Mapping[str, Any] = field(default_factory=FrozenDict)

    def __post_init__(self) -> None:
        extra = {} if self.extra is None else self.extra
        if not isinstance(extra, Mapping):
            raise TypeError(f"ModelSpec.extra must be a mapping of keyword arguments, got {type(extra).__name__}")
        object.__setattr__(self, "extra", extra if type(extra) is FrozenDict else FrozenDict(extra))

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (``extra`` as a plain dict); ``from_dict`` inverts it."""
        return {"name": self.name, "pretrained": self.pretrained, "extra": _thaw(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelSpec fields: {sorted(unknown)}")
        return cls(**d)

    @property
    def is_random(self) -> bool:
        return self.pretrained in (None, "", "random")
