"""No process started by ``abs-eval`` outlives it: a small guardian process ends them.

Why: without ``PREFECT_API_URL`` a flow starts Prefect's temporary API server (a
uvicorn child, ~235 MB and a port), and ``--runner dask`` starts a local cluster's
worker processes. Prefect and Dask stop them from ``atexit`` hooks and ``finally``
blocks, which never run when the ``abs-eval`` process is SIGKILLed (the OOM killer,
``kill -9``) or dies of an unhandled SIGTERM: the children were left running for
good, one server per crashed and resumed run.

How: :func:`start_guardian` (called by ``abs-eval run`` and ``demo`` before any
flow starts) marks this process's environment with a token that every child
started afterwards inherits (subprocess, multiprocessing spawn, Dask workers,
Prefect's server all pass the environment on), and starts a guardian: this
module's :func:`main` in a small Python process (standard library only, ~10 MB),
in its own session so that a Ctrl-C or a terminal hang-up does not reach it. The
guardian holds the read end of a pipe whose write end only the ``abs-eval``
process holds; it sleeps in ``select`` and, every :data:`SNAPSHOT_S` seconds,
notes the descendants of that process (pid and start time; a few ms of CPU).
When the pipe reaches end-of-file or the guardian is re-parented (the ``abs-eval``
process is gone, however it ended, normal exit included), it ends every process
still alive that carries the token or that it saw as a descendant (same start
time, so a reused pid is never hit), and their children: SIGTERM, then SIGKILL
after :data:`GRACE_S`. It says on stderr what it stopped; after a normal run
(Prefect and Dask stopped their own) there is nothing left and it says nothing.

Why not ``prctl(PR_SET_PDEATHSIG)`` in the children: it fires when the *thread*
that started the child ends, not the process (a server started from a short-lived
thread would die early), it is Linux only, and it needs a hook into every library
that starts processes (Prefect's ``subprocess.Popen``, multiprocessing's spawn).

Fallback, should the guardian have been killed too: the token names its process
(pid and start time), so the next ``abs-eval run`` or ``demo`` (:func:`end_orphans`)
ends every process carrying a token whose process is gone, and says so on stderr.

Portability: Linux reads ``/proc``; elsewhere ``psutil`` is used when installed,
and with neither (or on Windows) no guardian starts and nothing changes.
``ABS_EVAL_NO_GUARDIAN=1`` turns it off.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid

#: The environment variable carrying this ``abs-eval`` process's token to its children.
TOKEN_ENV = "ABS_EVAL_LIFETIME_TOKEN"
#: Set to 1 to start no guardian.
DISABLE_ENV = "ABS_EVAL_NO_GUARDIAN"
#: Seconds between two notes of the descendants (the token catches what starts in between).
SNAPSHOT_S = 2.0
#: Seconds a leftover process has to exit after SIGTERM before it gets SIGKILL.
GRACE_S = 5.0

# The guardian imports this module from where it lies, whatever the working folder or installation.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_GUARDIAN_CODE = "import sys; sys.path.insert(0, sys.argv.pop(1)); from flows.lifetime import main; sys.exit(main())"
_LINUX = sys.platform.startswith("linux") and os.path.isdir("/proc/self")
_guardian: subprocess.Popen | None = None


# ------------------------------------------------------------------------------ process table
def _psutil():
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def supported() -> bool:
    """Whether a guardian can work here: POSIX with ``/proc`` (Linux) or ``psutil``."""
    return os.name == "posix" and (_LINUX or _psutil() is not None)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, or None when it is gone (or a zombie)."""
    if _LINUX:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return None
        fields = data[data.rindex(b")") + 2 :].split()  # after "pid (comm) "
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[1]), int(fields[19])
    ps = _psutil()
    try:
        p = ps.Process(pid)
        if p.status() == ps.STATUS_ZOMBIE:
            return None
        return p.ppid(), int(p.create_time() * 100)
    except (ps.Error, OSError):
        return None


def _all_pids() -> list[int]:
    if _LINUX:
        return [int(d) for d in os.listdir("/proc") if d.isdigit()]
    return list(_psutil().pids())


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every live process."""
    out = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None:
            out[pid] = st
    return out


def _descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), list(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _token_of(pid: int) -> str | None:
    if _LINUX:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            return None
        for item in env.split(b"\0"):
            if item.startswith(TOKEN_ENV.encode() + b"="):
                return item.split(b"=", 1)[1].decode(errors="replace")
        return None
    ps = _psutil()
    try:
        return ps.Process(pid).environ().get(TOKEN_ENV)
    except (ps.Error, OSError):
        return None


def _has_token(pid: int, token: str) -> bool:
    """Whether the process was started with ``TOKEN_ENV=token`` (processes of other users: no)."""
    return _token_of(pid) == token


def _describe(pid: int) -> str:
    try:
        if _LINUX:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        else:
            cmd = " ".join(_psutil().Process(pid).cmdline())
    except Exception:
        cmd = ""
    if "uvicorn" in cmd and "prefect" in cmd:
        port = cmd.split("--port", 1)[1].split()[0] if "--port " in cmd else "?"
        return f"{pid} (Prefect temporary API server, port {port})"
    if "resource_tracker" in cmd:
        return f"{pid} (multiprocessing resource tracker)"
    if "multiprocessing" in cmd or "distributed" in cmd:
        return f"{pid} (worker process)"
    return f"{pid} ({cmd[:60] or 'process'})"


# ------------------------------------------------------------------------------ the guardian
def _token_owner_alive(token: str) -> bool:
    """Whether the process a token names (``PID.STARTTIME.RANDOM``) is still running."""
    try:
        pid, start, _ = token.split(".", 2)
        st = _stat(int(pid))
    except ValueError:
        return True  # not one of ours: leave it alone
    return st is not None and st[1] == int(start)


def end_orphans() -> set[int]:
    """The fallback: end processes an earlier ``abs-eval`` started and whose guardian did not (both killed).

    They carry a token whose process is gone. Says so on stderr. Returns the pids ended.
    """
    if not supported():
        return set()
    table = _table()
    mine, pid = set(), os.getpid()  # this process and its ancestors are never touched
    while pid in table and pid not in mine:
        mine.add(pid)
        pid = table[pid][0]
    found = {pid for pid in table if pid not in mine and (t := _token_of(pid)) and not _token_owner_alive(t)}
    found = (found | _descendants(found, table)) - mine
    if not found:
        return set()
    names = {pid: _describe(pid) for pid in found}
    _end(found)
    print(
        f"abs-eval: stopped {len(found)} process(es) left running by an earlier abs-eval that was killed: "
        + ", ".join(names[p] for p in sorted(found)),
        file=sys.stderr,
        flush=True,
    )
    return found


def _leftovers(main_pid: int, token: str, seen: dict[int, int]) -> set[int]:
    """Live processes the ``abs-eval`` process started: noted descendants, token carriers, their children."""
    table = _table()
    me = os.getpid()
    found = {pid for pid, start in seen.items() if pid in table and table[pid][1] == start}
    found |= {pid for pid in table if pid not in (me, main_pid) and _has_token(pid, token)}
    found |= _descendants(found, table)
    found.discard(me)
    found.discard(main_pid)
    return found


def _end(pids: set[int]) -> None:
    """SIGTERM, up to :data:`GRACE_S` to exit, then SIGKILL."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + GRACE_S
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {pid for pid in alive if _stat(pid) is not None}
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def watch(main_pid: int, token: str, fd: int = 0) -> set[int]:
    """The guardian's loop: wait for ``main_pid`` to end, then end what it left. Returns what it ended."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    main = _stat(main_pid)
    seen: dict[int, int] = {}
    next_note = 0.0
    while main is not None and os.getppid() == main_pid:
        now = time.monotonic()
        if now >= next_note:
            table = _table()
            seen = {pid: start for pid, start in seen.items() if pid in table and table[pid][1] == start}
            seen.update((pid, table[pid][1]) for pid in _descendants({main_pid}, table) if pid != os.getpid())
            next_note = now + SNAPSHOT_S
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                if not os.read(fd, 4096):
                    break  # end-of-file: the abs-eval process has exited
            except OSError:
                break
    time.sleep(0.2)  # let Prefect's and Dask's own shutdown, if any, finish
    pids = _leftovers(main_pid, token, seen)
    if pids:
        names = {pid: _describe(pid) for pid in pids}
        _end(pids)
        more = _leftovers(main_pid, token, {})  # a child may have started one of its own meanwhile
        if more:
            names.update({pid: _describe(pid) for pid in more})
            _end(more)
            pids |= more
        try:
            print(
                f"abs-eval: process {main_pid} is gone; stopped {len(pids)} process(es) it had left running: "
                + ", ".join(names[p] for p in sorted(pids)),
                file=sys.stderr,
                flush=True,
            )
        except Exception:  # no terminal any more
            pass
    return pids


def start_guardian() -> subprocess.Popen | None:
    """Start this process's guardian (once; later calls return the same one). None where unsupported."""
    global _guardian
    if _guardian is not None and _guardian.poll() is None:
        return _guardian
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes") or not supported():
        return None
    try:
        end_orphans()
    except Exception as exc:  # pragma: no cover - never stop a run for this
        print(f"abs-eval: warning: could not look for processes left by earlier runs ({exc})", file=sys.stderr)
    me = _stat(os.getpid())
    if me is None:  # pragma: no cover
        return None
    token = f"{os.getpid()}.{me[1]}.{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _GUARDIAN_CODE, _PACKAGE_PARENT, str(os.getpid()), token],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:  # pragma: no cover - e.g. no processes left
        print(f"abs-eval: warning: no guardian for child processes ({exc})", file=sys.stderr)
        return None
    os.environ[TOKEN_ENV] = token  # every child started from now on carries it
    _guardian = proc
    return proc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m flows.lifetime PID TOKEN  (the guardian of process PID)", file=sys.stderr)
        return 2
    watch(int(args[0]), args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
