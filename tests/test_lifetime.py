"""No process started by ``abs-eval`` outlives it (flows/lifetime.py).

Prefect's temporary API server (uvicorn) used to stay alive for good after the
``abs-eval`` process was SIGKILLed (OOM killer, ``kill -9``) or SIGTERMed. Here a real
``abs-eval`` is started with a fresh PREFECT_HOME and no PREFECT_API_URL, its
descendants are tracked from /proc while it works, only its own pid is signalled (not
its process group), and every descendant must be gone :data:`GONE_WITHIN_S` later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import lifetime

REPO = Path(__file__).resolve().parent.parent
GONE_WITHIN_S = 30
TINY_RUN = [
    "--clip-model",
    "abs-tiny-vit-b16",
    "--clip-pretrained",
    "random",
    "--dino-model",
    "abs-tiny-dino-vit-b16",
    "--dino-pretrained",
    "random",
    "--templates",
    "none",
]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tracks processes in /proc")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time); None once gone or a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return None if fields[0] in (b"Z", b"X") else (int(fields[1]), int(fields[19]))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of ``root``."""
    children: dict[int, list[tuple[int, int]]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _stat(int(d))) is not None:
            children.setdefault(st[0], []).append((int(d), st[1]))
    out, todo = {}, [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid not in out:
                out[pid] = start
                todo.append(pid)
    return out


def _alive(tracked: dict[int, int]) -> dict[int, str]:
    """The tracked processes still alive (same start time: a reused pid is another process)."""
    return {pid: _cmdline(pid) for pid, start in tracked.items() if (st := _stat(pid)) and st[1] == start}


def _wait_gone(tracked: dict[int, int]) -> dict[int, str]:
    deadline = time.monotonic() + GONE_WITHIN_S
    while _alive(tracked) and time.monotonic() < deadline:
        time.sleep(0.25)
    return _alive(tracked)


def _sigkill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    """``abs-eval ARGS`` as a user starts it: its own fresh PREFECT_HOME, no PREFECT_API_URL."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_") and k not in (lifetime.TOKEN_ENV, lifetime.DISABLE_ENV)
    }
    env.update(PREFECT_HOME=str(home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1")
    with (tmp_path / "stderr.txt").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err
        )


def _signal_main_and_check(proc: subprocess.Popen, ready, sig: int, tmp_path: Path, wait_s: float) -> None:
    """Track descendants until ``ready(their cmdlines)``, signal the main pid only, expect all gone."""
    tracked: dict[int, int] = {}
    deadline = time.monotonic() + wait_s
    try:
        while True:
            tracked.update(_descendants(proc.pid))
            cmds = list(_alive(tracked).values())
            if ready(cmds):
                break
            assert proc.poll() is None, f"abs-eval ended early: {(tmp_path / 'stderr.txt').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready after {wait_s} s: {cmds}"
            time.sleep(0.2)
        tracked.update(_descendants(proc.pid))
        os.kill(proc.pid, sig)  # the main process only, not its process group
        proc.wait(timeout=GONE_WITHIN_S)
        left = _wait_gone(tracked)
        assert not left, f"still alive {GONE_WITHIN_S} s after {signal.Signals(sig).name}: {left}"
    finally:  # never leave anything behind, whatever failed
        _sigkill(_alive(tracked))
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _server_up(cmds: list[str]) -> bool:
    return any("uvicorn" in c and "prefect" in c for c in cmds)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_demo_leaves_no_process_behind(tmp_path, sig):
    proc = _start(["demo", "--root", str(tmp_path / "demo"), "--per-class", "1"], tmp_path)
    _signal_main_and_check(proc, _server_up, sig, tmp_path, wait_s=150)
    if sig != signal.SIGINT:  # SIGINT: Prefect stops its server itself; otherwise the guardian says it did
        err = (tmp_path / "stderr.txt").read_text()
        assert "Prefect temporary API server" in err.splitlines()[-1], err[-2000:]


def test_dask_run_killed_mid_flow_leaves_no_worker_behind(tmp_path, tmp_path_factory):
    """Killed once the flow runs on a local Dask cluster: its workers and the API server go too."""
    pytest.importorskip("prefect_dask")
    from common import demo_source

    images, desc = demo_source(tmp_path_factory, per_class=1)
    proc = _start(
        [
            "run",
            "-d",
            "x",
            "--source",
            images,
            "--descriptions",
            desc,
            "--root",
            str(tmp_path / "root"),
            *TINY_RUN,
            "--images-per-shard",
            "2",
            "--runner",
            "dask",
            "--workers",
            "2",
        ],
        tmp_path,
    )

    def workers_up(cmds: list[str]) -> bool:
        return _server_up(cmds) and sum("multiprocessing.spawn" in c for c in cmds) >= 2

    _signal_main_and_check(proc, workers_up, signal.SIGKILL, tmp_path, wait_s=240)


def test_a_child_of_a_killed_process_is_stopped(tmp_path):
    """A plain child started after the guardian goes with its SIGKILLed parent, and stderr says so."""
    code = (
        "import subprocess, sys, time; from flows.lifetime import start_guardian; start_guardian(); "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(p.pid, flush=True); time.sleep(600)"
    )
    with (tmp_path / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        sleeper = int(proc.stdout.readline())
        tracked = _descendants(proc.pid)
        assert sleeper in tracked and len(tracked) == 2  # the sleeper and the guardian
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = _wait_gone(tracked)
        assert not left, left
    finally:
        _sigkill(_alive(_descendants(proc.pid)) if proc.poll() is None else [])
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    err_text = (tmp_path / "stderr.txt").read_text()
    assert f"process {proc.pid} is gone; stopped 1 process(es)" in err_text and str(sleeper) in err_text


def test_after_a_normal_exit_the_guardian_ends_quietly(tmp_path):
    code = "from flows.lifetime import start_guardian; print(start_guardian().pid)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    guardian = int(res.stdout)
    deadline = time.monotonic() + 10
    while _stat(guardian) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stat(guardian) is None
    assert "stopped" not in res.stderr


def test_no_guardian_when_turned_off(monkeypatch):
    monkeypatch.setenv(lifetime.DISABLE_ENV, "1")
    monkeypatch.setattr(lifetime, "_guardian", None)
    assert lifetime.start_guardian() is None


def test_the_next_run_ends_what_a_killed_run_and_its_guardian_left(tmp_path):
    """The fallback: the guardian was killed too, so the server stays; the next abs-eval ends it and says so."""
    proc = _start(["demo", "--root", str(tmp_path / "demo"), "--per-class", "1"], tmp_path)
    tracked: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 150
        while not _server_up(list(_alive(tracked).values())):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()[-3000:]
            time.sleep(0.2)
            tracked.update(_descendants(proc.pid))
        guardian = next(p for p, c in _alive(tracked).items() if "flows.lifetime" in c)
        os.kill(guardian, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1)
        server = [p for p, c in _alive(tracked).items() if "uvicorn" in c]
        assert server, "nothing left to clean: the test no longer tests the fallback"
        code = "from flows.lifetime import start_guardian; start_guardian()"
        res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "left running by an earlier abs-eval that was killed" in res.stderr, res.stderr
        assert "Prefect temporary API server" in res.stderr and str(server[0]) in res.stderr
        left = _wait_gone(tracked)
        assert not left, left
    finally:
        _sigkill(_alive(tracked))
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_orphans_are_only_processes_whose_abs_eval_is_gone():
    """A token whose pid now runs another process (start time differs) is an orphan's; a live one's is not."""
    me = lifetime._stat(os.getpid())
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    orphan = subprocess.Popen(sleep, env={**os.environ, lifetime.TOKEN_ENV: f"{os.getpid()}.{me[1] + 1}.x"})
    owned = subprocess.Popen(sleep, env={**os.environ, lifetime.TOKEN_ENV: f"{os.getpid()}.{me[1]}.x"})
    try:
        deadline = time.monotonic() + 30  # until both have exec'd (their environ is the new one)
        while not all(lifetime._token_of(p.pid) for p in (orphan, owned)) and time.monotonic() < deadline:
            time.sleep(0.05)
        ended = lifetime.end_orphans()
        assert orphan.pid in ended and owned.pid not in ended
        assert orphan.wait(timeout=10) is not None and owned.poll() is None
    finally:
        for p in (orphan, owned):
            if p.poll() is None:
                p.kill()
            p.wait()
