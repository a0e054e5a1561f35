"""ABS variants scored from a run's stored crop features (``abs-eval analyze``), against fresh runs.

One evaluation that kept its crop features (the evaluate flow on a real temporary Prefect server,
tiny random-weight models, 24 generated images in 3 shards), then ``abs-eval analyze`` for tau, M',
raw-only, feature-only, an N' prefix and plain averaging, with no model forward. The settings that
change no crop draw are also evaluated fresh, in another root (in the same root a fresh run would
reuse the variant's partition: they share its hash, which is the point). Checked: those variants
have the fresh run's config hash and its rows (exactly where the same numbers go into the same
calls, else within the README's score tolerance); the prefix and the averaging match the formulas
computed here from the stored features; the SQL views list every variant; a rerun writes nothing;
a lost part is recomputed alone; bad requests fail with one line.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from common import TINY_FLOW_PARAMS, demo_source, invoke_cli, one_error_line
from flow_helpers import SCORE_ATOL, SCORE_RTOL, assert_same_predictions, predictions

#: The run's method settings (N, K, M); the description file has 8 per class, the run keeps M = 6.
BASE = {"n_crops": 6, "top_k": 5, "n_descriptions": 6}
#: Variants that change no crop draw -> the abs_config overrides of the fresh run with that setting.
FRESH = {
    "tau=0.05": {"tau": 0.05},
    "n_descriptions=3": {"n_descriptions": 3},
    "crop_kinds=raw": {"feature_crops": False},
    "crop_kinds=feature": {"raw_crops": False},
}
#: Exactly equal to the fresh run: the same stored numbers go into the same calls (tau: the soft
#: matching of the same crops; raw only: the same trunk batch). The others go through another
#: batch shape of the text encoder (M') or of the trunk (feature only): within rounding.
EXACT = {"tau=0.05", "crop_kinds=raw"}
ANALYZE = ["--tau", "0.05", "--m", "3", "--kinds", "raw,feature", "--n-crops", "3", "--plain-averaging"]
NAMES = {*FRESH, "n_crops=3", "matching=average"}


def _params(root: str, **abs_changes) -> dict:
    return dict(
        TINY_FLOW_PARAMS,
        dataset="demo",
        root=root,
        images_per_shard=8,
        deployment="test",
        report=False,
        abs_config={**BASE, **abs_changes},
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return demo_source(tmp_path_factory, per_class=2)


@pytest.fixture(scope="module")
def base(prefect_server, source, tmp_path_factory):
    """The run with kept features, then `abs-eval analyze` on it: (root, run summary, CLI output)."""
    from flows.evaluate import evaluate

    images, desc = source
    root = str(tmp_path_factory.mktemp("root-variants"))
    out = evaluate(dict(_params(root), source=images, descriptions=desc, keep_features=True))
    res = invoke_cli("analyze", "--root", root, *ANALYZE)
    assert res.exit_code == 0, res.output
    return root, out, res.output


@pytest.fixture(scope="module")
def fresh(prefect_server, source, tmp_path_factory):
    """The settings of FRESH evaluated from scratch in another root: ``{variant name: run summary}``."""
    from flows.evaluate import evaluate

    images, desc = source
    root = str(tmp_path_factory.mktemp("root-fresh"))
    out = {}
    for i, (name, change) in enumerate(FRESH.items()):
        first = dict(source=images, descriptions=desc) if i == 0 else {}  # later runs reuse shards and descriptions
        out[name] = evaluate(dict(_params(root, **change), **first))
    return root, out


def _records(root: str) -> dict[str, dict]:
    """Variant name -> run record (run.json) of every variant under ``root``."""
    from tasks.results.runs import list_run_ids, read_run
    from tasks.store import Storage

    st = Storage(root)
    recs = [read_run(st, rid) for rid in list_run_ids(st)]
    return {r["config_json"]["variant"]["name"]: r for r in recs if r["config_json"].get("variant")}


def _rows(root: str, config: str) -> list[tuple]:
    return [r for r in predictions(root) if r[2] == config]


def _stored(root: str, run_id: str, shard: int):
    """The run, its shard's stored features, its text bank and the shard's rows by (image, method)."""
    from tasks.results.runs import read_run
    from tasks.steps.variants import AnalyzedRun, find_text_bank, read_features
    from tasks.store import Storage
    from tasks.store.datasets import read_dataset_info
    from tasks.store.paths import features_part

    st = Storage(root)
    run = AnalyzedRun.from_record(read_run(st, run_id))
    ids, crops, glob = read_features(st, features_part(run.dataset, run.model, run.config, shard))
    bank = find_text_bank(st, run, read_dataset_info(st, run.dataset))
    return st, run, ids, crops, glob, bank


def _part_rows(st, run, config: str, shard: int) -> dict[tuple[str, str], dict]:
    from tasks.store.paths import prediction_part

    return {
        (r["image_id"], r["method"]): r
        for r in st.read_parquet(prediction_part(run.dataset, run.model, config, shard)).to_pylist()
    }


def test_the_analysis_lists_every_variant_and_its_accuracy(base):
    root, out, text = base
    recs = _records(root)
    assert set(recs) == NAMES
    for name, rec in recs.items():
        assert rec["status"] == "completed" and rec["n_images"] == 24 and rec["shards_computed"] == 3, name
        assert rec["deployment"] == f"test:{name}" and rec["config_json"]["variant"]["of_run"] == out["run_id"]
        assert name in text  # the command's table
    assert f"Variants of run {out['run_id']}" in text


def test_analyze_rewrites_the_runs_report_and_publishes_it(base):
    """The sensitivity section right after analyze: in report.md where the evaluate flow writes it, and in a new
    version of the run's report artifact on the session's Prefect server (the run itself published none)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.results.artifacts import artifact_key
    from tasks.results.report import SENSITIVITY_HEADING

    root, out, text = base
    path = os.path.join(root, "runs", f"run={out['run_id']}", "report.md")
    with open(path) as f:
        section = f.read().split(SENSITIVITY_HEADING)[1].split("\n## ")[0]
    assert "](sensitivity.png)" in section and all(f"| {n} |" in section for n in NAMES)
    assert os.path.getsize(os.path.join(os.path.dirname(path), "sensitivity.png")) > 0
    assert f"Report: {path} (rewritten with the sensitivity section)" in text
    key = artifact_key("report", "test", "demo", out["model"])
    assert f"Prefect report artifact: {key} (a new version)" in text

    async def versions():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    ours = sorted(
        (a for a in asyncio.run(versions()) if out["run_id"] in (a.description or "")), key=lambda a: a.created
    )
    assert ours, f"no version of {key} for run {out['run_id']}"
    latest = ours[-1].data.split(SENSITIVITY_HEADING)[1].split("\n## ")[0]
    assert "](data:image/png;base64," in latest and all(f"| {n} |" in latest for n in NAMES)
    assert ours[-1].type == "markdown" and str(ours[-1].flow_run_id) == out["flow_run_id"]  # the run's flow run


def test_variants_that_keep_the_draws_equal_fresh_runs(base, fresh):
    root, _, _ = base
    fresh_root, runs = fresh
    recs = _records(root)
    for name, run in runs.items():
        rec = recs[name]
        assert rec["config_json"]["variant"]["equals_fresh_run"] is True
        assert rec["config"] == run["config"], name  # hashed like any configuration: the fresh run's partition
        got, want = _rows(root, rec["config"]), _rows(fresh_root, run["config"])
        assert len(got) == 24 * 3, name  # abs, clip, cupl (templates none)
        assert_same_predictions(got, want)  # pred, top5, status, crop geometry exact; scores within tolerance
        if name in EXACT:
            assert got == want, name


def test_a_prefix_scores_the_first_crops_of_each_branch(base):
    """N' = 3 of N = 6: its own partition (no fresh run draws these crops), the first 3 raw and the first 3
    feature crops soft-matched (the formula written out here), geometry cut to them, baselines unchanged."""
    from tasks.run.evalspec import short_hash

    root, out, _ = base
    rec = _records(root)["n_crops=3"]
    numbers = rec["config_json"]["numbers"]
    assert numbers["variant"] == {"crops_prefix_of": 6} and numbers["abs"]["n_crops"] == 3
    fresh_like = {k: v for k, v in numbers.items() if k != "variant"}
    assert rec["config"] == short_hash(numbers) != short_hash(fresh_like)
    rows = _rows(root, rec["config"])
    assert len(rows) == 24 * 3 and {r[4] for r in rows} == {"abs", "clip", "cupl"}
    for shard in range(3):
        st, run, ids, crops, _, bank = _stored(root, out["run_id"], shard)
        mine, theirs = _part_rows(st, run, rec["config"], shard), _part_rows(st, run, run.config, shard)
        desc, mask = bank.descriptions.double(), bank.mask
        for j, image in enumerate(ids):
            v = torch.from_numpy(np.concatenate([crops[j, :3], crops[j, 6:9]])).double()
            logits = _dense_soft(v, desc, mask, 0.03)
            row, was = mine[(image, "abs")], theirs[(image, "abs")]
            assert row["pred"] == int(logits.argmax())
            assert math.isclose(row["score_true"], float(logits[row["label"]]), rel_tol=SCORE_RTOL, abs_tol=SCORE_ATOL)
            assert row["raw_boxes"] == was["raw_boxes"][:3] and row["feature_windows"] == was["feature_windows"][:3]
            for m in ("clip", "cupl"):
                assert {k: mine[(image, m)][k] for k in ("pred", "top5", "score_true", "margin")} == {
                    k: theirs[(image, m)][k] for k in ("pred", "top5", "score_true", "margin")
                }


def test_plain_averaging_averages_each_class_descriptions(base):
    root, out, _ = base
    rec = _records(root)["matching=average"]
    assert rec["config_json"]["numbers"]["variant"] == {"matching": "average"}
    assert rec["config_json"]["variant"]["equals_fresh_run"] is False
    st, run, ids, crops, _, bank = _stored(root, out["run_id"], 0)
    mine = _part_rows(st, run, rec["config"], 0)
    desc, w = bank.descriptions.double(), bank.mask.double()
    for j, image in enumerate(ids):
        s = torch.einsum("nd,cmd->ncm", torch.from_numpy(crops[j]).double(), desc) / 0.03
        logits = ((s * w).sum(2) / w.sum(1)).sum(0)  # sum over crops of the mean over descriptions
        row = mine[(image, "abs")]
        assert row["pred"] == int(logits.argmax())
        assert math.isclose(row["score_true"], float(logits[row["label"]]), rel_tol=SCORE_RTOL, abs_tol=SCORE_ATOL)


def test_the_runs_own_setting_scored_from_its_features_is_its_rows(base):
    """Reading the features back loses nothing: the run's own setting gives its rows bit for bit."""
    from abs_model.variants import variant_logits

    root, out, _ = base
    for shard in range(3):
        st, run, ids, crops, glob, bank = _stored(root, out["run_id"], shard)
        logits = variant_logits(torch.from_numpy(crops), run.abs, bank, run.spec, torch.from_numpy(glob))
        rows = _part_rows(st, run, run.config, shard)
        for j, image in enumerate(ids):
            for m, lg in logits.items():
                row = rows[(image, m)]
                assert row["pred"] == int(lg[j].argmax()) and row["top5"] == lg[j].topk(5).indices.tolist()
                assert row["score_true"] == float(np.float32(lg[j, row["label"]].item())), (image, m)


def test_sql_views_list_the_variants_and_the_run_stays_the_latest(base):
    from tasks.results.catalog import run_query

    root, out, _ = base
    recs = _records(root)
    acc = {r["run_id"]: r for r in run_query(root, "accuracy").to_pylist() if r["method"] == "abs"}
    for name, rec in recs.items():
        a = acc[rec["run_id"]]
        rows = _rows(root, rec["config"])
        assert a["n"] == 24 and a["deployment"] == f"test:{name}" and a["config"] == rec["config"]
        assert a["correct"] == sum(1 for r in rows if r[4] == "abs" and r[6] == r[5])
    runs = {r["run_id"]: r for r in run_query(root, "runs").to_pylist()}
    assert all(
        runs[rec["run_id"]]["shards_done"] == 3 and runs[rec["run_id"]]["status"] == "completed"
        for rec in recs.values()
    )
    latest = {r["run_id"] for r in run_query(root, "clip_benchmark").to_pylist()}  # what `export` takes by default
    assert latest == {out["run_id"]}
    # a variant against its run: the regressions view names the setting that differs
    reg = run_query(root, "regressions", {"run_a": out["run_id"], "run_b": recs["tau=0.05"]["run_id"]}).to_pylist()
    assert reg and "numbers.abs.tau" in reg[0]["settings_differ"]


def _tree(root: str) -> dict[str, tuple[int, bytes]]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (os.stat(p).st_mtime_ns, fh.read())
    return out


def test_rerunning_analyze_recomputes_nothing(base):
    root, _, _ = base
    before = _tree(root)
    res = invoke_cli("analyze", "--root", root, *ANALYZE)
    assert res.exit_code == 0, res.output
    assert _tree(root) == before  # no part, rollup, marker, record or report written again
    assert "(already shows these variants)" in res.output
    from flows.analyze import analyze

    again = analyze(root, {"tau": [0.05], "n_crops": [3]})
    assert [(v.shards_computed, v.shards_reused) for v in again.variants] == [(0, 3), (0, 3)]


def test_bad_requests_fail_with_one_line(base, fresh):
    root, out, _ = base
    line = one_error_line(invoke_cli("analyze", "--root", root, "--n-crops", "12"))
    assert "n_crops=12" in line and "N=6" in line
    line = one_error_line(invoke_cli("analyze", "--root", root, "--m", "7", "--kinds", "sideways"))
    assert "sideways" in line
    line = one_error_line(invoke_cli("analyze", "--root", root, "--tau", "hot"))
    assert "--tau" in line
    assert "no run" in one_error_line(invoke_cli("analyze", "--root", root, "--run", "nope", "--tau", "0.1"))
    assert "no variant" in one_error_line(invoke_cli("analyze", "--root", root, "--tau", "0.03"))  # the run's own
    variant = _records(root)["tau=0.05"]["run_id"]
    assert "itself a variant" in one_error_line(invoke_cli("analyze", "--root", root, "--run", variant, "--tau", "0.1"))
    fresh_root, _ = fresh
    assert "kept its crop features" in one_error_line(invoke_cli("analyze", "--root", fresh_root, "--tau", "0.1"))


def test_a_lost_part_is_recomputed_alone_with_the_same_rows(base):
    from flows.analyze import analyze
    from tasks.store import Storage, commits
    from tasks.store.paths import prediction_part

    root, out, _ = base
    rec = _records(root)["tau=0.05"]
    rel = prediction_part("demo", rec["model"], rec["config"], 1)
    rows = Storage(root).read_parquet(rel)
    commits.uncommit(Storage(root), rel)  # marker, then file: as a crash before the marker leaves it
    done = analyze(root, {"tau": [0.05]}, run_id=out["run_id"])
    assert [(v.shards_computed, v.shards_reused) for v in done.variants] == [(1, 2)]
    assert Storage(root).read_parquet(rel).equals(rows)
    assert _records(root)["tau=0.05"]["status"] == "completed"


def test_sweep_one_setting_at_a_time_or_every_combination():
    from abs_model import ABSConfig
    from abs_model.variants import VariantSpec, sweep

    base = VariantSpec.of(ABSConfig())
    one = sweep(base, {"tau": [0.01, 0.03, 0.05], "crop_kinds": ["raw", "feature"]})
    assert [v.name(base) for v in one] == ["crop_kinds=raw", "crop_kinds=feature", "tau=0.01", "tau=0.05"]
    both = sweep(base, {"crop_kinds": ["raw", "both"], "matching": ["soft", "average"]}, cross=True)
    assert [v.name(base) for v in both] == ["crop_kinds=raw", "crop_kinds=raw,matching=average", "matching=average"]
    with pytest.raises(ValueError, match="unknown variant fields"):
        sweep(base, {"top_k": [10]})
    with pytest.raises(ValueError, match="crop_kinds"):
        sweep(base, {"crop_kinds": ["sideways"]})
    with pytest.raises(ValueError, match="the run drew N=60"):
        base.with_changes(n_crops=80).check_against(ABSConfig())
    with pytest.raises(ValueError, match="only raw-space"):
        base.with_changes(crop_kinds="feature").check_against(ABSConfig(feature_crops=False))


def _dense_soft(v: torch.Tensor, desc: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """ABS soft matching as the method states it (ABS_SPEC.md step 6), densely, in float64."""
    s = torch.einsum("nd,cmd->ncm", v, desc) / tau
    p = torch.softmax(s.masked_fill(~mask, float("-inf")).flatten(1), dim=1).view_as(s)
    return (p * s.masked_fill(~mask, 0.0)).sum(dim=(0, 2))


def _random_bank(c: int, m: int, d: int, seed: int, padded: bool = True, subset=None, scale: float = 1.0):
    """A text bank of random unit features (times ``scale``), some classes padded (fewer than M descriptions)."""
    from abs_model.text import TextBank

    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        x = torch.randn(*shape, generator=g)
        return x / x.norm(dim=-1, keepdim=True)

    mask = torch.ones(c, m, dtype=torch.bool)
    if padded:
        mask[1, 2:] = False  # 2 descriptions
        mask[3, m - 1 :] = False
        mask[c - 1, 1:] = False  # 1 description: some blocks of the M' ranges hold only padding
    return TextBank([f"class {i}" for i in range(c)], scale * unit(c, m, d), mask, unit(c, d), unit(c, d), subset)


def _assert_sweep_equals_variant_logits(crops, stored, bank, specs, glob=None, rtol=1e-5, exact=False):
    """``sweep_logits`` against ``variant_logits`` point by point: within float rounding, and with ``exact`` the
    points a fresh run scores with the same call bit for bit."""
    from abs_model.variants import same_call_as_fresh_run, sweep_logits, variant_logits

    got = sweep_logits(crops, stored, bank, specs, glob, exact=exact)
    assert len(got) == len(specs)
    for spec, mine in zip(specs, got):
        want = variant_logits(crops, stored, bank, spec, glob)
        assert list(mine) == list(want), spec
        if exact and same_call_as_fresh_run(spec, stored):
            assert all(torch.equal(mine[m], want[m]) for m in want), spec
        for method, w in want.items():
            assert mine[method].dtype == w.dtype and torch.isfinite(mine[method]).all(), (spec, method)
            # within float rounding, relative to the scale of the logits
            torch.testing.assert_close(
                mine[method], w, rtol=rtol, atol=rtol * float(w.abs().max()), msg=f"{spec} {method}"
            )


@pytest.mark.parametrize(("one_class_blocks", "exact"), [(False, False), (True, False), (False, True)])
def test_a_sweep_scores_every_point_as_variant_logits_does(monkeypatch, one_class_blocks, exact):
    """``sweep_logits`` (the points sharing their products and one exponential pass per tau) against
    ``variant_logits`` point by point: N' prefixes, each branch, M' groups, tau groups (one shifted: unit
    features at tau = 0.002 are past the no-shift bound), plain averaging, padded descriptions, a class
    subset and every baseline. With blocks of one class, some (block, description range) cells hold
    padding only (their shift is -inf, their terms 0). ``exact``: the points a fresh run scores with the same
    call (tau, raw only) are that call's numbers bit for bit, the others still shared."""
    from abs_model import ABSConfig, variants
    from abs_model.variants import VariantSpec

    if one_class_blocks:
        monkeypatch.setattr(variants, "_CPU_SWEEP_BLOCK_BYTES", 1)

    stored = ABSConfig(n_crops=5, top_k=3, n_descriptions=6)
    bank = _random_bank(9, 6, 8, seed=1, subset=[0, 2, 3, 5, 8])
    g = torch.Generator().manual_seed(2)
    crops = torch.randn(4, 10, 8, generator=g)
    crops = crops / crops.norm(dim=-1, keepdim=True)
    glob = torch.randn(4, 8, generator=g)
    own = VariantSpec.of(stored)
    changes = [
        {},
        {"n_crops": 2},
        {"n_crops": 4, "crop_kinds": "raw"},
        {"crop_kinds": "feature", "n_crops": 3},
        {"crop_kinds": "raw"},
        {"n_descriptions": 2},
        {"n_descriptions": 4, "tau": 0.05},
        {"tau": 0.05},
        {"tau": 0.002},
        {"tau": 0.002, "n_descriptions": 1, "crop_kinds": "raw", "n_crops": 1},
        {"matching": "average", "n_descriptions": 3},
        {"matching": "average", "crop_kinds": "feature", "tau": 0.05},
    ]
    specs = [own.with_changes(**c) for c in changes]
    _assert_sweep_equals_variant_logits(crops, stored, bank, specs, glob, exact=exact)
    # no global features, another order
    _assert_sweep_equals_variant_logits(crops, stored, bank, specs[::-1], exact=exact)
    # one point, and a sweep without soft matching
    _assert_sweep_equals_variant_logits(crops, stored, bank, specs[1:2], glob, exact=exact)
    _assert_sweep_equals_variant_logits(crops, stored, bank, specs[-2:], glob, exact=exact)


def test_a_sweep_of_a_one_branch_run_and_of_unnormalised_features():
    """Runs that kept one branch (the feature crops then start at row 0), features of norm 3 (tau = 0.03 is
    then shifted too), every description valid, float64 (within 1e-10)."""
    from abs_model import ABSConfig
    from abs_model.variants import VariantSpec

    g = torch.Generator().manual_seed(3)
    bank = _random_bank(7, 5, 6, seed=4, padded=False, scale=3.0)
    for raw, feature in ((True, False), (False, True)):
        stored = ABSConfig(n_crops=4, top_k=3, n_descriptions=5, raw_crops=raw, feature_crops=feature)
        own = VariantSpec.of(stored)
        specs = [own, *(own.with_changes(**c) for c in ({"n_crops": 2}, {"n_descriptions": 3, "tau": 0.1}))]
        crops = 3.0 * torch.randn(3, 4, 6, generator=g)
        _assert_sweep_equals_variant_logits(crops, stored, bank, specs, torch.randn(3, 6, generator=g))
        _assert_sweep_equals_variant_logits(crops.double(), stored, bank, specs, rtol=1e-10)


def test_a_sweep_keeps_a_description_prefix_whose_scores_are_far_below_the_rest():
    """Tiny tau, and the first M' = 2 descriptions score ~1 cosine (~360 in log2 units at tau = 0.004) below
    the others: shifted by the maximum over all M descriptions, every term of the M'-prefix would underflow
    to 0 (0 / 0). The sweep shifts per description range and rescales to the prefix's own maximum."""
    from abs_model import ABSConfig
    from abs_model.text import TextBank
    from abs_model.variants import VariantSpec

    g = torch.Generator().manual_seed(5)
    c, m, d = 6, 5, 4
    e1, e2 = torch.eye(d)[0], torch.eye(d)[1]
    desc = torch.empty(c, m, d)
    desc[:, :2] = e2 + 0.05 * torch.randn(c, 2, d, generator=g)
    desc[:, 2:] = e1 + 0.05 * torch.randn(c, m - 2, d, generator=g)
    desc = desc / desc.norm(dim=-1, keepdim=True)
    bank = TextBank([f"class {i}" for i in range(c)], desc, torch.ones(c, m, dtype=torch.bool), None, None)
    stored = ABSConfig(n_crops=3, top_k=3, n_descriptions=m)
    crops = e1 + 0.05 * torch.randn(2, 6, d, generator=g)
    crops = crops / crops.norm(dim=-1, keepdim=True)
    own = VariantSpec.of(stored)
    specs = [own.with_changes(tau=0.004), own.with_changes(tau=0.004, n_descriptions=2)]
    _assert_sweep_equals_variant_logits(crops, stored, bank, specs)


def test_an_images_sweep_does_not_depend_on_its_batch():
    """On a CPU a block is one image: an image's logits are the same numbers alone or in a batch."""
    from abs_model import ABSConfig
    from abs_model.variants import VariantSpec, sweep_logits

    stored = ABSConfig(n_crops=5, top_k=3, n_descriptions=6)
    bank = _random_bank(9, 6, 8, seed=6)
    crops = torch.randn(5, 10, 8, generator=torch.Generator().manual_seed(7))
    own = VariantSpec.of(stored)
    specs = [own, own.with_changes(tau=0.002, n_descriptions=3), own.with_changes(n_crops=2, crop_kinds="raw")]
    batch = sweep_logits(crops, stored, bank, specs)
    for i in (0, 3):
        alone = sweep_logits(crops[i : i + 1], stored, bank, specs)
        for b, a in zip(batch, alone):
            assert torch.equal(b["abs"][i : i + 1], a["abs"])
