"""Exceptions of ``abs_model`` that the pipeline names without loading the models.

Why apart from ``weights``: the pipeline's retry policy (``tasks/run/retries.py``) must
recognise a weights failure as permanent, and importing ``weights`` imports torch
(seconds and a gigabyte) in processes that never build a model (sharding, ``sql``).
"""

from __future__ import annotations


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (offline, unknown tag, bad checkpoint)."""


__all__ = ["WeightsUnavailableError"]
