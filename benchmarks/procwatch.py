"""The processes of a benchmarked command: peak RSS of each, CPU time of the whole tree.

Shared by ``rehearsal.py`` and ``bench_shard.py``: both start a command (with its temporary
Prefect API, Dask or shard workers) and report what every process of it used.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class ProcessWatch:
    """Samples a process tree every ``every`` s: the peak RSS (VmHWM) of each process, and
    the tree's CPU seconds over time (utime + stime of every process ever seen in it, so
    processes that exit keep what they used). ``cpu_between(a, b)`` reads the latter."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every = pid, every
        self.peaks: dict[int, tuple[str, int]] = {}
        self._cpu: dict[int, float] = {}
        self.samples: list[tuple[float, float]] = []  # (epoch s, tree CPU s)
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += children.get(p, [])
        return out

    def _sample(self) -> None:
        for p in self._tree():
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{p}/status") as f:
                    hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, StopIteration, ValueError):
                continue
            self._cpu[p] = (int(fields[11]) + int(fields[12])) / self._tick
            name = " ".join(Path(x).name if "/" in x else x for x in cmd.split()[:3])[:60]
            if "forkserver" in cmd:  # the server and the workers it forks have the same command line
                name = "forkserver / shard worker"
            if hwm * 1024 > self.peaks.get(p, ("", 0))[1]:
                self.peaks[p] = (name, hwm * 1024)
        self.samples.append((time.time(), sum(self._cpu.values())))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._t.join()
        return {f"{name} (pid {p})": b for p, (name, b) in sorted(self.peaks.items())}

    def cpu_between(self, a: float, b: float) -> float | None:
        """CPU seconds the tree used between epoch times ``a`` and ``b`` (nearest samples)."""
        inside = [c for t, c in self.samples if a - self.every <= t <= b + self.every]
        return inside[-1] - inside[0] if len(inside) >= 2 else None
