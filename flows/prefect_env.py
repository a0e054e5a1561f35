"""Prefect settings the command line needs before Prefect is first imported.

Why before import: Prefect reads its settings (environment and profile) once,
when the package is imported, so ``abs-eval`` must put its defaults into the
environment first; changing them afterwards has no effect.

Why a longer start-up timeout: without ``PREFECT_API_URL`` a flow starts a
temporary local API server (SQLite, migrations, bytecode compiled on first use).
Prefect waits 20 s for it by default; on a cold ``PREFECT_HOME`` on a busy
2-core machine the first start takes 30-60 s, so the first ``abs-eval demo``
of a new user failed. We wait up to :data:`LOCAL_API_STARTUP_TIMEOUT_S` unless the
user set their own value (environment or active Prefect profile).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Seconds to wait for Prefect's temporary local API (Prefect's own default is 20).
LOCAL_API_STARTUP_TIMEOUT_S = 300
TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

_OFFLINE_DEFAULTS = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _active_profile_settings() -> dict[str, str]:
    """The settings of the active Prefect profile, read from ``profiles.toml`` (no Prefect import)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: no profile reading; the environment still counts
        return {}

    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    name = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = data.get("profiles", {}).get(name, {})
    return {str(k): str(v) for k, v in profile.items()} if isinstance(profile, dict) else {}


def uses_local_api() -> bool:
    """True when flows will start Prefect's temporary local API (no server configured)."""
    return not (os.environ.get("PREFECT_API_URL") or _active_profile_settings().get("PREFECT_API_URL"))


def configure_prefect(announce: bool = True) -> bool:
    """Offline defaults and a start-up timeout that holds on a cold machine; a user's own values win.

    Returns whether the temporary local API will be used. With ``announce`` it says
    so at once on stderr, since the first start can take a minute with no output.
    Must run before ``prefect`` is imported to take effect (a warning says so otherwise).
    """
    for key, value in _OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    local = uses_local_api()
    if local and TIMEOUT_SETTING not in os.environ and TIMEOUT_SETTING not in _active_profile_settings():
        os.environ[TIMEOUT_SETTING] = str(LOCAL_API_STARTUP_TIMEOUT_S)
        if "prefect" in sys.modules:  # pragma: no cover - a programming error, not a user's
            print(
                f"abs-eval: warning: prefect was imported before {TIMEOUT_SETTING} was set; "
                "the longer start-up timeout does not apply",
                file=sys.stderr,
            )
    if local and announce:
        print(
            "abs-eval: starting a local Prefect API (temporary server, no PREFECT_API_URL set); "
            "the first start can take a minute",
            file=sys.stderr,
            flush=True,
        )
    return local
