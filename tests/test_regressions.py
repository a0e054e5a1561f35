"""Regressions announce themselves: the exact McNemar test in SQL (sql/views/00_macros.sql,
44_regressions.sql), and the Prefect event the flow emits for a significant drop.

The fixture (``build_regression_results``) writes, by hand, three completed runs of deployment
``nightly`` on the same 80 images (4 classes, 2 shards; image 79 unreadable in every run):

    rA   abs right on images 0-59 (except 79), wrong on 60-79
    rB   abs: 30 images right -> wrong (0-29), 2 wrong -> right (60, 61);
         clip: identical to rA; cupl: 3 right -> wrong and 3 wrong -> right
    rC   identical to rB (nothing changed)

Every expected p-value is computed in Python with exact integers (math.comb, Fraction).
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pytest
from test_sql import DATASET, MODEL, write_run

from tasks.results import catalog
from tasks.store import Storage
from tasks.store.paths import prediction_part
from tasks.store.tables import PREDICTION_SCHEMA

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["ant", "bee", "cow", "doe"]
N_IMAGES = 80
PER_SHARD = 40
BROKEN = set(range(30))  # abs: right in rA, wrong in rB
FIXED = {60, 61}  # abs: wrong in rA, right in rB
CUPL_BROKEN, CUPL_FIXED = {0, 1, 2}, {70, 71, 72}
ERROR_IMAGE = 79


def exact_mcnemar(b: int, c: int) -> float:
    """min(1, 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c)), 1 when b + c = 0, in exact arithmetic."""
    n = b + c
    if n == 0:
        return 1.0
    return float(min(Fraction(1), Fraction(2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)), 2**n)))


def _right(run: str, method: str, i: int) -> bool:
    base = i < 60
    if run == "rA":
        return base
    if method == "abs":
        return (base and i not in BROKEN) or i in FIXED
    if method == "cupl":
        return (base and i not in CUPL_BROKEN) or i in CUPL_FIXED
    return base


def regression_rows(run: str, computed_by: str) -> list[dict]:
    rows = []
    for i in range(N_IMAGES):
        label = i % len(CLASSES)
        for method in ("abs", "clip", "cupl"):
            pred = label if _right(run, method, i) else (label + 1) % len(CLASSES)
            row = {
                "image_id": f"im{i:03d}",
                "shard": i // PER_SHARD,
                "label": label,
                "class_name": CLASSES[label],
                "method": method,
                "pred": pred,
                "pred_name": CLASSES[pred],
                "top5": [pred] + [c for c in range(len(CLASSES)) if c != pred],
                "score_true": 0.5,
                "margin": 0.1,
                "status": "ok",
                "error": None,
                "run_id": computed_by,
            }
            if i == ERROR_IMAGE:
                row.update(pred=None, pred_name=None, top5=None, status="truncated", error="image file is truncated")
            rows.append(row)
    return rows


def build_regression_results(root: str) -> dict[str, list[dict]]:
    """Write rA, rB, rC (module docstring) under ``root``; returns each run's rows."""
    st = Storage(root)
    out = {}
    for day, (run, kind) in enumerate((("rA", "rA"), ("rB", "rB"), ("rC", "rB")), start=1):
        rows = regression_rows(kind, run)
        config = f"cfg-{run}"
        for shard in range(N_IMAGES // PER_SHARD):
            part = [r for r in rows if r["shard"] == shard]
            st.write_parquet(
                prediction_part(DATASET, MODEL, config, shard), pa.Table.from_pylist(part, schema=PREDICTION_SCHEMA)
            )
        write_run(st, run, config, "nightly", day)
        out[run] = rows
    return out


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("regressions"))
    return root, build_regression_results(root)


# ---------------------------------------------------------------------- the test itself
@pytest.mark.parametrize(
    "b, c",
    [
        (0, 0),
        (1, 0),
        (0, 1),
        (5, 5),
        (30, 2),
        (2, 30),
        (0, 10),
        (7, 3),
        (100, 60),
        (500, 400),
        (1500, 1400),
        (2000, 1900),
        (2500, 2400),
        (3000, 2700),
        (1000, 0),
        (4000, 3900),
    ],
)
def test_mcnemar_p_in_sql_equals_the_exact_binomial(b, c, tmp_path):
    con = catalog.connect(str(tmp_path / "empty"))
    try:
        got = con.execute("SELECT mcnemar_p(?::BIGINT, ?::BIGINT)", [b, c]).fetchone()[0]
    finally:
        con.close()
    want = exact_mcnemar(b, c)
    assert got == pytest.approx(want, rel=1e-9, abs=0.0)
    assert 0.0 <= got <= 1.0


def test_regression_view_gives_the_exact_p_value(reg):
    root, rows = reg
    got = {
        (r["method"], r["scope"], r["label"]): r
        for r in catalog.run_query(root, "regressions", {"run_a": "rA", "run_b": "rB"}).to_pylist()
    }
    abs_ = got[("abs", "method", None)]
    assert (abs_["n_broken"], abs_["n_fixed"], abs_["n_paired"]) == (30, 2, N_IMAGES)
    assert abs_["p_value"] == pytest.approx(exact_mcnemar(30, 2), rel=1e-9) and abs_["p_value"] < 1e-6
    n_ok = N_IMAGES - 1
    assert abs_["accuracy_a"] == pytest.approx(60 / n_ok) and abs_["accuracy_b"] == pytest.approx(32 / n_ok)
    assert abs_["change"] == pytest.approx((32 - 60) / n_ok)
    assert abs_["significant"] and abs_["regressed"] and abs_["class_name"] is None
    # per class: the flips of each class, and its own exact p-value
    for label in range(len(CLASSES)):
        b = sum(1 for i in BROKEN if i % len(CLASSES) == label)
        c = sum(1 for i in FIXED if i % len(CLASSES) == label)
        r = got[("abs", "class", label)]
        assert (r["n_broken"], r["n_fixed"], r["class_name"]) == (b, c, CLASSES[label])
        assert r["p_value"] == pytest.approx(exact_mcnemar(b, c), rel=1e-9)
        ok = [x for x in rows["rB"] if x["method"] == "abs" and x["label"] == label and x["status"] == "ok"]
        assert r["accuracy_b"] == pytest.approx(sum(x["pred"] == x["label"] for x in ok) / len(ok))
        assert r["regressed"] == (r["p_value"] < 0.05)
    # cupl: as many flips each way: no significant change; clip: nothing changed at all
    cupl = got[("cupl", "method", None)]
    assert (cupl["n_broken"], cupl["n_fixed"], cupl["p_value"], cupl["change"]) == (3, 3, 1.0, 0.0)
    assert not cupl["regressed"] and not cupl["significant"]
    clip = got[("clip", "method", None)]
    assert (clip["n_broken"], clip["n_fixed"], clip["p_value"], clip["change"], clip["regressed"]) == (
        0,
        0,
        1.0,
        0.0,
        False,
    )
    # the flips are exactly compare_methods' broken / fixed counts
    cm = {
        r["method"]: r for r in catalog.run_query(root, "compare_methods", {"run_a": "rA", "run_b": "rB"}).to_pylist()
    }
    for m in ("abs", "clip", "cupl"):
        assert (cm[m]["n_broken"], cm[m]["n_fixed"]) == (
            got[(m, "method", None)]["n_broken"],
            got[(m, "method", None)]["n_fixed"],
        )
    # alpha is a parameter: at 1e-9 the abs drop is no longer significant
    strict = catalog.run_query(
        root, "regressions", {"run_a": "rA", "run_b": "rB", "scope": "method", "method": "abs", "alpha": 1e-9}
    )
    assert strict.to_pylist()[0]["regressed"] is False


def test_default_pair_and_nothing_changed(reg):
    root, _ = reg
    # default pair: the latest run (rC) and its previous run (rB): identical predictions
    rows = catalog.run_query(root, "regressions").to_pylist()
    assert {(r["run_a"], r["run_b"]) for r in rows} == {("rB", "rC")}
    assert len(rows) == 3 * (1 + len(CLASSES))
    for r in rows:
        assert (r["n_broken"], r["n_fixed"], r["p_value"], r["change"]) == (0, 0, 1.0, 0.0), r
        assert not r["significant"] and not r["regressed"]
    # only run_b: run_a is its previous run, as for the compare_* views
    assert {r["run_a"] for r in catalog.run_query(root, "regressions", {"run_b": "rB"}).to_pylist()} == {"rA"}
    # a run without a previous run: nothing to pair, nothing regressed
    first = catalog.run_query(root, "regressions", {"run_b": "rA"}).to_pylist()
    assert all(
        r["run_a"] is None
        and r["n_paired"] == 0
        and r["p_value"] is None
        and not r["regressed"]
        and r["present"] == "absent from run_a"
        for r in first
    )


# ---------------------------------------------------------------------- the Prefect event
def _regression_events(run_id: str, want: int, timeout: float = 90.0) -> list:
    import asyncio
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from flows.evaluate import REGRESSION_EVENT

    async def read():
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[REGRESSION_EVENT]),
                    resource=EventResourceFilter(id=[f"abs-eval.run.{run_id}"]),
                ),
                limit=50,
            )  # the server allows <= 50
            return page.events

    deadline = time.monotonic() + timeout
    events = asyncio.run(read())
    while len(events) < want and time.monotonic() < deadline:  # the server persists events in the background
        time.sleep(1.0)
        events = asyncio.run(read())
    return events


def test_flow_emits_one_event_per_regressed_method(reg, prefect_server):
    from prefect import flow
    from prefect.events.worker import EventsWorker

    from flows.evaluate import REGRESSION_EVENT, announce_regressions

    root, _ = reg

    @flow(name="announce-regressions-test")
    def announce(run_id: str) -> list[dict]:
        return announce_regressions(root, run_id, "nightly")

    emitted = announce("rB")
    assert [p["method"] for p in emitted] == ["abs"]  # cupl and clip did not drop significantly
    p = emitted[0]
    assert (p["run_a"], p["run_b"], p["dataset"], p["model"], p["deployment"]) == (
        "rA",
        "rB",
        DATASET,
        MODEL,
        "nightly",
    )
    assert (p["n_broken"], p["n_fixed"]) == (30, 2)
    assert p["p_value"] == pytest.approx(exact_mcnemar(30, 2), rel=1e-9)
    assert p["change"] == pytest.approx(p["accuracy_b"] - p["accuracy_a"]) and p["change"] < 0
    # what `abs-eval run` prints after its accuracy table (and the matrix summary per cell)
    from flows.cli import regression_lines

    (line,) = regression_lines(emitted)
    pp = 100 * (p["accuracy_b"] - p["accuracy_a"])
    assert line.startswith("REGRESSION abs: ") and f"({pp:+.1f} pp)" in line and "since run rA" in line
    assert "30 right -> wrong, 2 wrong -> right" in line and f"p={p['p_value']:.2g}" in line
    assert announce("rC") == []  # nothing changed since rB: no event
    EventsWorker.drain_all()

    events = _regression_events("rB", want=1)
    assert len(events) == 1, events
    ev = events[0]
    assert ev.event == REGRESSION_EVENT and ev.resource.id == "abs-eval.run.rB"
    assert ev.resource.get("abs-eval.method") == "abs"
    assert ev.payload["n_broken"] == 30 and ev.payload["n_fixed"] == 2 and ev.payload["run_a"] == "rA"
    assert ev.payload["p_value"] == pytest.approx(exact_mcnemar(30, 2), rel=1e-9)
    assert _regression_events("rC", want=0, timeout=0) == []


def test_the_documented_automation_is_accepted_by_prefect(prefect_server):
    """The YAML of docs/sql.md "Regression alerts" creates an automation on a real Prefect server
    (with a real notification block), triggered by the event the flow emits."""
    import asyncio

    import yaml
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    from flows.evaluate import REGRESSION_EVENT

    doc = (REPO / "docs" / "sql.md").read_text()
    section = doc.split("## Regression alerts", 1)[1]
    text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    block_id = CustomWebhookNotificationBlock(name="abs-eval-test", url="http://127.0.0.1:9/hook").save(
        "abs-eval-regression-test", overwrite=True
    )
    data = yaml.safe_load(text.replace("<BLOCK_DOCUMENT_ID>", str(block_id)))
    automation = AutomationCore.model_validate(data)
    assert automation.trigger.expect == {REGRESSION_EVENT}
    assert automation.actions[0].type == "send-notification"

    async def create_and_read():
        async with get_client() as client:
            automation_id = await client.create_automation(automation)
            return await client.read_automation(automation_id)

    created = asyncio.run(create_and_read())
    assert created.name == data["name"] and created.trigger.expect == {REGRESSION_EVENT}


def test_a_method_one_run_lacks_is_absent_not_compared(tmp_path):
    """rD scores abs and clip only: against rC its cupl is reported absent (no flips, no p-value,
    no regression), not as 80 changed images."""
    root = str(tmp_path)
    build_regression_results(root)
    st = Storage(root)
    rows = [r for r in regression_rows("rB", "rD") if r["method"] != "cupl"]
    for shard in range(N_IMAGES // PER_SHARD):
        part = [r for r in rows if r["shard"] == shard]
        st.write_parquet(
            prediction_part(DATASET, MODEL, "cfg-rD", shard), pa.Table.from_pylist(part, schema=PREDICTION_SCHEMA)
        )
    write_run(st, "rD", "cfg-rD", "nightly", 4)
    pair = {"run_a": "rC", "run_b": "rD"}
    cm = {r["method"]: r for r in catalog.run_query(root, "compare_methods", pair).to_pylist()}
    assert cm["cupl"]["present"] == "absent from run_b" and cm["cupl"]["n_changed"] is None
    assert cm["abs"]["present"] == "both" and cm["abs"]["n_changed"] == 0
    reg_rows = catalog.run_query(root, "regressions", {**pair, "scope": "method"}).to_pylist()
    by = {r["method"]: r for r in reg_rows}
    assert by["cupl"]["present"] == "absent from run_b" and by["cupl"]["p_value"] is None
    assert not by["cupl"]["regressed"] and by["abs"]["present"] == "both" and by["abs"]["p_value"] == 1.0


def test_setting_differences_name_what_changed():
    """The report says which settings differ between the compared runs, not only that a hash did."""
    from tasks.results.runs import setting_differences

    a = {
        "config_json": {
            "numbers": {
                "abs": {"n_crops": 60, "tau": 0.03},
                "clip": {"name": "ViT-B-16", "digest": "aa"},
                "subset": [1, 2, 3],
            }
        }
    }
    b = {
        "config_json": '{"numbers": {"abs": {"n_crops": 2, "tau": 0.03}, "clip": {"name": "ViT-B-16", "digest": "bb"},'
        ' "subset": [1, 2, 4]}}'
    }
    assert setting_differences(a, b) == [
        {"setting": "abs.n_crops", "before": 60, "after": 2},
        {"setting": "clip.digest", "before": "aa", "after": "bb"},
        {"setting": "subset", "before": "one list", "after": "another list of the same length"},
    ]
    assert setting_differences(a, a) == []


def test_regressions_name_the_settings_that_differ(tmp_path):
    """Two runs at different settings (N=60 then N=2, another class list): every regressions row
    names the differing configuration keys, a list setting once; the same settings: none."""
    from tasks.store.paths import run_record_parquet
    from tasks.store.tables import RUN_SCHEMA

    st = Storage(str(tmp_path / "root"))
    configs = {
        "rX": {"abs": {"n_crops": 60, "tau": 0.03}, "classnames": ["a", "b"], "prompt": "p"},
        "rY": {"abs": {"n_crops": 2, "tau": 0.03}, "classnames": ["a", "c"], "prompt": "p"},
        "rZ": {"abs": {"n_crops": 2, "tau": 0.03}, "classnames": ["a", "c"], "prompt": "p"},
    }
    for day, run in enumerate(configs, start=1):
        rows = regression_rows("rA" if run == "rX" else "rB", run)
        for shard in range(N_IMAGES // PER_SHARD):
            part = [r for r in rows if r["shard"] == shard]
            st.write_parquet(
                prediction_part(DATASET, MODEL, f"cfg-{run}", shard),
                pa.Table.from_pylist(part, schema=PREDICTION_SCHEMA),
            )
        rec = write_run(st, run, f"cfg-{run}", "nightly", day)
        rec["config_json"] = json.dumps(configs[run])
        st.write_parquet(run_record_parquet(run), pa.Table.from_pylist([rec], schema=RUN_SCHEMA))
    got = catalog.run_query(str(tmp_path / "root"), "regressions", {"run_a": "rX", "run_b": "rY"}).to_pylist()
    assert got and all(r["settings_differ"] == ["abs.n_crops", "classnames"] for r in got)
    same = catalog.run_query(str(tmp_path / "root"), "regressions", {"run_a": "rY", "run_b": "rZ"}).to_pylist()
    assert same and all(r["settings_differ"] == [] for r in same)
