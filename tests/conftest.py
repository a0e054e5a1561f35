"""Shared fixtures: tiny random-weight models (built once per session) and test images.

Prefect: tests that run flows share one temporary Prefect server per session
(``prefect_server`` fixture); PREFECT_HOME points at a temporary folder so a test
run never touches the user's Prefect profile.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Set before anything imports prefect. A folder made here is removed when the test
# process ends (one was left behind in /tmp by every test run before).
if "PREFECT_HOME" not in os.environ:
    _PREFECT_HOME = tempfile.mkdtemp(prefix="abs-eval-prefect-")
    os.environ["PREFECT_HOME"] = _PREFECT_HOME
    atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest
import torch
from common import make_image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_clip():
    from abs_model import TINY_CLIP, CLIPBackbone

    return CLIPBackbone.load(TINY_CLIP)


@pytest.fixture(scope="session")
def tiny_clip_b32():
    from abs_model import TINY_CLIP_B32, CLIPBackbone

    return CLIPBackbone.load(TINY_CLIP_B32)


@pytest.fixture(scope="session")
def tiny_dino():
    from abs_model import TINY_DINO, DINOBackbone

    return DINOBackbone.load(TINY_DINO)


@pytest.fixture
def images():
    return [make_image(h, w, s) for s, (h, w) in enumerate([(120, 160), (200, 150), (97, 131), (64, 64)])]


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (real API, SQLite) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()
