"""Models loaded once per worker process, not once per shard.

Why: a shard task may run hundreds of times in one worker (thread pool, Dask
worker process, Ray actor). Loading ViT-B/16 weights each time would cost more
than the shard. The cache is keyed by the model spec and device and guarded by
a lock, so threads of one worker share one copy.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from abs_model import CLIPBackbone, DINOBackbone, ModelSpec
from abs_model.device import resolve_device

_LOCK = threading.RLock()  # re-entrant: a cached build may load models itself
_CACHE: dict[tuple, Any] = {}


def _get(kind: str, spec: ModelSpec, device: str | torch.device | None, loader) -> Any:
    dev = resolve_device(device)
    return cached((kind, spec, str(dev)), lambda: loader(spec, dev))  # ModelSpec hashes by value


def get_clip(spec: ModelSpec, device: str | torch.device | None = None) -> CLIPBackbone:
    return _get("clip", spec, device, CLIPBackbone.load)


def get_dino(spec: ModelSpec, device: str | torch.device | None = None) -> DINOBackbone:
    return _get("dino", spec, device, DINOBackbone.load)


def cached(key: tuple, build) -> Any:
    """Process-wide memo for other heavy objects (text banks, classifiers)."""
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def replace(key: tuple, value: Any) -> None:
    with _LOCK:
        _CACHE[key] = value


def clear() -> None:
    """Drop every cached model (tests; freeing GPU memory between jobs)."""
    with _LOCK:
        _CACHE.clear()


def trim_heap() -> None:
    """Give the heap's free memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Called once per shard by the DINO and inference tasks: a long-lived worker then holds what
    one shard needs, not the high-water mark of fragments, without paying for a trim threshold
    on every allocation (``flows.runners.keep_glibc_malloc_defaults``).
    """
    import ctypes
    import ctypes.util
    import gc
    import sys

    # Arrays held only by reference cycles (frames of a caught exception, Prefect's run objects)
    # are freed by the cycle collector, not at once; collect first so the trim can return their
    # pages (a full collection costs milliseconds against a shard's minute).
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: glibc malloc arenas per process for the shard tasks (``limit_heap_arenas``).
HEAP_ARENAS = 2
_ARENAS_SET = False


def limit_heap_arenas(n: int = HEAP_ARENAS) -> None:
    """At most ``n`` glibc malloc arenas in this process (``mallopt(M_ARENA_MAX)``; once per process).

    Why: the decode threads (up to 8) each get an arena of their own by default (8 per core),
    and each arena keeps the pages its images and their copies left behind: with 8 arenas a
    worker's peak grew from shard to shard (1.60 -> 1.77 GB in-process, micro models,
    ImageNet-size JPEGs) and 2 arenas held it at ~1.6 GB. Decoding releases the GIL, so a
    thread that waits for an arena lock loses little. Called by the DINO and inference tasks
    before their first shard (the equivalent of ``MALLOC_ARENA_MAX``, which only takes effect
    at process start).
    """
    global _ARENAS_SET
    import ctypes
    import ctypes.util
    import sys

    if _ARENAS_SET or not sys.platform.startswith("linux"):
        return
    _ARENAS_SET = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, int(n))  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
