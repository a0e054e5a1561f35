"""Kill the evaluate flow's process mid-run (SIGKILL), re-run, compare with an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import TINY_FLOW_PARAMS, demo_source
from flow_helpers import computed_by, predictions


def _committed(root: Path) -> int:
    return len(list((root / "_commits" / "predictions").glob("*/*/*/part-*.json")))


def test_sigkill_then_resume_gives_identical_predictions(prefect_server, tmp_path_factory, tmp_path):
    from flows.evaluate import evaluate

    images, desc = demo_source(tmp_path_factory, per_class=2)
    params = dict(
        dataset="demo",
        source=images,
        descriptions=desc,
        images_per_shard=2,
        deployment="resume",
        report=False,
        **TINY_FLOW_PARAMS,
    )

    clean_root = tmp_path / "uninterrupted"
    clean = evaluate(dict(root=str(clean_root), **params))
    n_shards = clean["shards_total"]
    assert n_shards == 12

    root = tmp_path / "crashed"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "resume_worker.py"), json.dumps({**params, "root": str(root)})],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while _committed(root) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _committed(root)
    assert 3 <= killed_at < n_shards, f"kill landed at {killed_at} of {n_shards} shards"
    crashed_run = next(iter(computed_by(str(root))))
    crashed_parts = computed_by(str(root))[crashed_run]

    resumed = evaluate(dict(root=str(root), **params))
    assert resumed["config"] == clean["config"]
    assert resumed["shards_computed"] == n_shards - killed_at  # nothing committed was recomputed
    by_run = computed_by(str(root))
    assert by_run[crashed_run] == crashed_parts  # committed parts still carry the crashed run's id
    assert by_run[resumed["run_id"]] == set(range(n_shards)) - crashed_parts

    got, want = predictions(str(root)), predictions(str(clean_root))
    assert got == want  # identical predictions, in the same number: no duplicate rows
    keys = [(r[3], r[4]) for r in got]
    assert len(keys) == len(set(keys)) == 24 * 3

    from tasks.store import Storage

    records = {p.parent.name: json.loads(p.read_text()) for p in (root / "runs").glob("run=*/run.json")}
    assert records[f"run={crashed_run}"]["status"] == "interrupted"  # written down by the first reader that saw it dead
    assert records[f"run={crashed_run}"]["pid"] == proc.pid
    assert records[f"run={resumed['run_id']}"]["status"] == "completed"
    assert not list(Storage(str(root)).glob("predictions/**/*.tmp"))

    # status tells the truth per run: the killed one is interrupted (its pid is gone),
    # the resumed one says what it computed and what it reused
    from tasks.results.progress import run_progress

    prog = {r["run_id"]: r for r in run_progress(str(root))}
    assert prog[crashed_run]["status"] == "interrupted"
    assert (prog[crashed_run]["shards_done"], prog[crashed_run]["shards_computed"]) == (killed_at, killed_at)
    assert prog[resumed["run_id"]]["status"] == "completed"
    assert prog[resumed["run_id"]]["shards_computed"] == n_shards - killed_at
    assert prog[resumed["run_id"]]["shards_reused"] == killed_at
    assert records[f"run={resumed['run_id']}"]["reused_shards"] == sorted(crashed_parts)
    assert records[f"run={resumed['run_id']}"]["flow_run_id"]

    # SQL: the killed run stands only for the parts it committed, not for the partition
    # that the resumed run completed later; once its lease has passed it reads interrupted
    from tasks.results.catalog import run_query

    acc = run_query(str(root), "select run_id, run_status, max(n) as n from accuracy group by all").to_pylist()
    n_by_run = {r["run_id"]: (r["run_status"], r["n"]) for r in acc}
    assert n_by_run[resumed["run_id"]] == ("completed", 24)
    assert n_by_run[crashed_run][1] == 2 * killed_at  # images_per_shard=2
    rec = dict(records[f"run={crashed_run}"])
    from datetime import datetime, timedelta, timezone

    from tasks.results.runs import RunRecord

    rec["expires_at"] = datetime.now(timezone.utc) - timedelta(seconds=1)
    rec["started_at"] = datetime.fromisoformat(rec["started_at"])
    rec["heartbeat_at"] = datetime.fromisoformat(rec["heartbeat_at"])
    RunRecord(**rec).write(Storage(str(root)))
    status = run_query(str(root), f"select status from runs where run_id = '{crashed_run}'").to_pylist()
    assert status == [{"status": "interrupted"}]
