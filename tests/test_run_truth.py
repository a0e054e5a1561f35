"""One truth about a run (issue 17): ``abs-eval status``, the ``runs`` view, ``accuracy.run_status``,
``export`` and the report say the same status, shards and images at every moment: while the run
starts, while it runs, right after a SIGKILL of its main process (long before its lease expires),
after it failed and after it completed.

How they agree: every reader reads the run through SQL (``run_records`` for the status, ``runs`` for
shards and images, counted from the committed parts); a process that died on this host is written
into the record as ``interrupted`` by the first reader (``tasks.results.runs.reap_dead_runs``), since SQL
cannot ask whether a pid exists; ``abs-eval run`` writes a ``starting`` record before Prefect starts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest
from common import demo_source, invoke_cli

from tasks.results import catalog, runs
from tasks.results.export import ExportError, clip_benchmark_results
from tasks.results.progress import run_progress
from tasks.results.runs import RunRecord, RunTracker, announce_runs, claim_run_id, reap_dead_runs, release_pending
from tasks.store import Storage

REPO = Path(__file__).resolve().parent.parent
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
    "--n-crops",
    "6",
    "--top-k",
    "5",
    "--m",
    "4",
]
FIELDS = ("status", "shards_done", "shards_computed", "shards_reused", "n_images", "n_error")


# ---------------------------------------------------------------------- every reader of one run
def cli_status(root: str, run_id: str) -> tuple:
    """``abs-eval status --run``, as printed."""
    res = invoke_cli("status", "--root", root, "--run", run_id)
    assert res.exit_code == 0, res.output
    head, counts = res.output.splitlines()[:2]
    status = head.split()[1]
    m = re.search(r"shards (\d+)/(\d+) \(computed (\d+), reused (\d+)\)\s+images (\d+)\s+errors (\d+)", counts)
    assert m, res.output
    done, _total, computed, reused, images, errors = map(int, m.groups())
    return status, done, computed, reused, images, errors


def every_reader(root: str, run_id: str, tmp_path: Path) -> dict[str, tuple]:
    """What each reader says about ``run_id``: (status, shards done, computed, reused, images, errors)
    where it says it (None where a reader does not give a number)."""
    out: dict[str, tuple] = {}
    (prog,) = run_progress(root, run_id)
    out["run_progress"] = tuple(prog[k] for k in FIELDS)
    out["abs-eval status"] = cli_status(root, run_id)
    (view,) = catalog.run_query(root, "SELECT * FROM runs WHERE run_id = getvariable('r')", {"r": run_id}).to_pylist()
    out["runs view"] = tuple(view[k] for k in FIELDS)
    named = [r for r in catalog.run_query(root, "runs").to_pylist() if r["run_id"] == run_id]
    out["runs query"] = tuple(named[0][k] for k in FIELDS)
    acc = catalog.run_query(root, "accuracy", {"run_id": run_id}).to_pylist()
    if acc:  # n is per method: the images the run stands for
        assert len({(r["run_status"], r["n"], r["n_error"]) for r in acc}) == 1, acc
        out["accuracy"] = (acc[0]["run_status"], None, None, None, acc[0]["n"], acc[0]["n_error"])
    try:
        exported = clip_benchmark_results(root, [run_id])
        out["export"] = ("completed", None, None, None, exported[0]["n"], exported[0]["n_error"])
    except ExportError as exc:
        m = re.search(rf"run {re.escape(run_id)} \((\w+)\) is not completed", str(exc))
        assert m, exc
        out["export"] = (m.group(1), None, None, None, None, None)
    from tasks.results.report import write_report

    text = Path(Storage(root).path(write_report(root, run_id, gallery_size=0).report)).read_text()
    status = re.search(r"\| status \| (\w+) \|", text).group(1)
    computed = re.search(r"\| shards computed by this run \| (\d+) of \d+ \|", text).group(1)
    out["report"] = (status, None, int(computed), None, None, None)
    cat = catalog.write_catalog(root, tmp_path / f"catalog-{run_id}.duckdb")
    with duckdb.connect(cat, read_only=True) as con:
        row = con.execute(f"SELECT {', '.join(FIELDS)} FROM runs WHERE run_id = ?", [run_id]).fetchone()
    out["duckdb shell (catalog)"] = row
    return out


def assert_one_truth(says: dict[str, tuple]) -> tuple:
    truth = says["run_progress"]
    for reader, got in says.items():
        for k, (a, b) in enumerate(zip(truth, got)):
            assert b is None or a == b, f"{reader} says {FIELDS[k]} = {b}, status says {a}: {says}"
    return truth


# ---------------------------------------------------------------------- the real thing
def _committed(root: Path) -> int:
    return len(list((root / "_commits" / "predictions").glob("*/*/*/part-*.json")))


def _records(root: Path) -> list[Path]:
    return sorted((root / "runs").glob("run=*/run.json"))


def test_sigkill_of_abs_eval_run_status_and_every_view_agree(prefect_server, tmp_path_factory, tmp_path):
    """A real `abs-eval run`: visible as `starting` before its flow runs, `running` while it commits
    parts, `interrupted` the moment its main process is SIGKILLed (the lease is still 5 minutes off),
    with the shards and images it committed, in status, every SQL view, export, the report and the
    duckdb shell; the rerun completes, and both runs keep agreeing."""
    images, desc = demo_source(tmp_path_factory, per_class=2)
    root = tmp_path / "root"
    args = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--dataset",
        "demo",
        "--source",
        images,
        "--descriptions",
        desc,
        "--root",
        str(root),
        "--images-per-shard",
        "2",
        "--deployment",
        "truth",
        *TINY_RUN,
    ]
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "stderr.txt").open("wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        seen = []
        deadline = time.monotonic() + 300
        while _committed(root) < 3:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no 3 parts after 300 s; statuses seen {seen}"
            if _records(root):
                (p,) = run_progress(str(root))
                if not seen or seen[-1][0] != p["status"]:
                    seen.append((p["status"], p["shards_done"], round(time.monotonic() - t0, 1)))
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # visible before its flow ran a shard: `starting` with nothing done, then `running`
    assert seen and seen[0][:2] == ("starting", 0), seen
    assert "running" in [s[0] for s in seen], seen
    (record,) = _records(root)
    run_id = record.parent.name.removeprefix("run=")
    import json

    as_written = json.loads(record.read_text())
    assert as_written["status"] == "running" and as_written["pid"] == proc.pid
    lease_left = datetime.fromisoformat(as_written["expires_at"]) - datetime.now(timezone.utc)
    assert lease_left > timedelta(minutes=3)  # what follows is not the lease

    says = every_reader(str(root), run_id, tmp_path)
    status, done, computed, reused, n_images, n_error = assert_one_truth(says)
    killed_at = _committed(root)
    assert status == "interrupted" and computed == done and reused == 0 and n_error == 0
    assert killed_at <= done <= killed_at + 1 and n_images == 2 * done  # a part may be in place, its marker not yet
    written = json.loads(record.read_text())  # the first reader wrote down what it saw
    assert written["status"] == "interrupted" and written["extra"]["interrupted"]["by_pid"] == os.getpid()

    # the rerun completes: it reuses what the killed run committed; both keep agreeing everywhere
    res = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    new_id = next(p.parent.name.removeprefix("run=") for p in _records(root) if run_id not in p.parent.name)
    again = assert_one_truth(every_reader(str(root), run_id, tmp_path))
    # the killed run stands for the parts it committed; one it had moved into place but not marked done
    # (killed in between) counted for it until the rerun, which recomputed it, committed it as its own
    assert again == (status, killed_at, killed_at, 0, 2 * killed_at, 0)
    final = assert_one_truth(every_reader(str(root), new_id, tmp_path))
    assert final == ("completed", 12, 12 - killed_at, killed_at, 24, 0)


# ---------------------------------------------------------------------- each state, each reader
def test_failed_completed_and_running_runs_read_the_same_everywhere(tmp_path):
    """The SQL fixture's runs (completed, failed after one shard, a rerun reusing everything) plus a live
    run and one whose lease passed: every reader says the same status, shards and images."""
    from test_sql import DATASET, MODEL, build_results

    root = str(tmp_path / "root")
    build_results(root)
    st = Storage(root)
    now = datetime.now(timezone.utc)
    RunRecord(
        "r-live",
        DATASET,
        MODEL,
        "c2",
        deployment="weekly",
        started_at=now,
        host="elsewhere",
        reused_shards=[0],
        expires_at=now + timedelta(minutes=5),
    ).write(st)
    RunRecord(
        "r-lost",
        DATASET,
        MODEL,
        "c2",
        deployment="weekly",
        started_at=now - timedelta(hours=1),
        host="elsewhere",
        reused_shards=[0, 1],
        expires_at=now - timedelta(seconds=1),
    ).write(st)
    want = {
        "r1": ("completed", 3, 3, 0, 24, 2),
        "r2": ("completed", 3, 2, 1, 24, 2),
        "r2-crashed": ("failed", 1, 1, 0, 8, 1),
        "r3": ("completed", 3, 0, 3, 24, 2),
        "r-live": ("running", 1, 0, 1, 8, 1),
        "r-lost": ("interrupted", 2, 0, 2, 16, 1),
    }
    for run_id, expected in want.items():
        assert assert_one_truth(every_reader(root, run_id, tmp_path)) == expected, run_id


# ---------------------------------------------------------------------- the pieces
class _Params:
    def __init__(self, root: str, dataset: str, clip_model: str = "abs-tiny-vit-b16", clip_pretrained=None):
        self.root, self.dataset, self.clip_model, self.clip_pretrained = root, dataset, clip_model, clip_pretrained
        self.dino_model, self.dino_pretrained, self.deployment = "abs-tiny-dino-vit-b16", None, None


def test_a_run_is_visible_from_its_first_second_and_the_flow_takes_its_record_over(tmp_path):
    root = str(tmp_path / "root")
    try:
        first, second = announce_runs([_Params(root, "a"), _Params(root, "b", "ViT-B-16", "openai")])
        prog = {r["run_id"]: r for r in run_progress(root)}
        assert (prog[first]["status"], prog[first]["shards_done"], prog[first]["n_images"]) == ("starting", 0, 0)
        assert prog[second]["status"] == "queued" and prog[second]["model"] == "ViT-B-16_openai"
        view = {r["run_id"]: r["status"] for r in catalog.run_query(root, "runs").to_pylist()}
        assert view == {first: "starting", second: "queued"}
        # the flow of the second cell: the first never started (its job failed), so its record goes
        assert claim_run_id(root, "b", "ViT-B-16/openai") == second
        assert [r["run_id"] for r in run_progress(root)] == [second]
        assert run_progress(root)[0]["status"] == "starting"
        started = Storage(root).read_json(f"runs/run={second}/run.json")["started_at"]
        rec = RunRecord(second, "b", "ViT-B-16/openai", "cfg", shards_total=3)
        tracker = RunTracker(Storage(root), rec).start()  # the flow's tracker: running, same start
        try:
            (p,) = run_progress(root)
            assert (p["status"], p["shards_total"], str(p["started_at"])) == (
                "running",
                3,
                str(datetime.fromisoformat(started)),
            )
            assert not runs._PENDING
            release_pending()  # nothing left to release: the flow owns the record
            assert [r["run_id"] for r in run_progress(root)] == [second]
        finally:
            tracker.finish("completed")
        assert claim_run_id(root, "b", "ViT-B-16/openai") != second  # a later run of the same job: a new id
    finally:
        release_pending()


def test_an_announced_run_that_never_started_is_removed_when_the_command_ends(tmp_path):
    root = str(tmp_path / "root")
    (rid,) = announce_runs([_Params(root, "a")])
    assert (Path(root) / "runs" / f"run={rid}" / "run.json").exists()
    release_pending()
    assert not (Path(root) / "runs" / f"run={rid}").exists() and run_progress(root) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_dead_process_on_this_host_is_written_down_by_the_first_reader(tmp_path):
    """SQL cannot see processes: the reader that notices (status, any query, export, report) writes it."""
    root = str(tmp_path / "root")
    st = Storage(root)
    lease = datetime.now(timezone.utc) + timedelta(minutes=5)
    dead = _dead_pid()
    RunRecord("r-dead", "d", "m", "c", pid=dead, process={}, expires_at=lease).write(st)
    RunRecord("r-alive", "d", "m", "c", expires_at=lease).write(st)  # this process
    RunRecord("r-elsewhere", "d", "m", "c", host="another-host", pid=dead, expires_at=lease).write(st)
    other_boot = dict(runs.process_identity(), boot_id="another-boot")
    RunRecord("r-other-boot", "d", "m", "c", pid=dead, process=other_boot, expires_at=lease).write(st)
    # a pid that now belongs to a process that started later than the run's; and one alive, as recorded
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        now_there = runs.process_identity(sleeper.pid)
        RunRecord(
            "r-pid-reused",
            "d",
            "m",
            "c",
            pid=sleeper.pid,
            process=dict(now_there, start=now_there["start"] - 1),
            expires_at=lease,
        ).write(st)
        RunRecord("r-other-alive", "d", "m", "c", pid=sleeper.pid, process=now_there, expires_at=lease).write(st)
        _check_reaping(root, st, tmp_path, dead)
    finally:
        sleeper.kill()
        sleeper.wait()


def _check_reaping(root: str, st: Storage, tmp_path: Path, dead: int) -> None:
    cat = catalog.write_catalog(root, tmp_path / "results.duckdb")
    with duckdb.connect(cat, read_only=True) as con:  # nobody has looked yet: the record says running
        assert dict(con.execute("SELECT run_id, status FROM runs").fetchall())["r-dead"] == "running"
    statuses = {
        r["run_id"]: r["status"] for r in catalog.run_query(root, "SELECT run_id, status FROM runs").to_pylist()
    }
    assert statuses == {
        "r-dead": "interrupted",
        "r-alive": "running",
        "r-elsewhere": "running",
        "r-other-boot": "running",
        "r-pid-reused": "interrupted",
        "r-other-alive": "running",
    }
    with duckdb.connect(cat, read_only=True) as con:  # from then on the shell reads it too
        assert dict(con.execute("SELECT run_id, status FROM runs").fetchall()) == statuses
    assert {r["run_id"]: r["status"] for r in run_progress(root)} == statuses
    assert reap_dead_runs(root) == []  # written once
    rec = st.read_json("runs/run=r-dead/run.json")
    assert (
        rec["ended_at"] is None
        and rec["expires_at"] is None
        and f"process {dead}" in rec["extra"]["interrupted"]["why"]
    )


def test_a_reader_that_cannot_write_keeps_the_lease_rule(tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    st = Storage(root)
    RunRecord(
        "r-dead",
        "d",
        "m",
        "c",
        pid=_dead_pid(),
        process={},
        expires_at=datetime.now(timezone.utc) + timedelta(minutes=5),
    ).write(st)

    def read_only(self, storage):
        raise PermissionError("read-only root")

    monkeypatch.setattr(RunRecord, "write", read_only)
    assert [r["status"] for r in run_progress(root)] == ["running"]  # status and SQL: one rule, the lease
    assert catalog.run_query(root, "SELECT status FROM runs").to_pylist() == [{"status": "running"}]


@pytest.mark.parametrize("status", ["queued", "starting", "running"])
def test_the_lease_rule_is_one_rule(tmp_path, status):
    from tasks.results.runs import effective_status

    root = str(tmp_path / "root")
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    RunRecord("r", "d", "m", "c", status=status, host="elsewhere", expires_at=past).write(Storage(root))
    assert effective_status(Storage(root).read_json("runs/run=r/run.json")) == "interrupted"
    assert catalog.run_query(root, "SELECT status FROM run_records").to_pylist() == [{"status": "interrupted"}]
