"""The benchmark scripts: the GPU check's CPU dry run end to end, the machine summary,
the FLOP counter (attention matmuls included) and the GPU-idle arithmetic.

The GPU check is run exactly as on a lent GPU machine, through benchmarks/gpu_check.sh,
with the CPU dry-run options; the existing .venv means its setup step is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"abs_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def test_gpu_check_cpu_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    assert (REPO / ".venv" / "bin" / "python").exists(), "the dry run uses the project's .venv"
    res = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--device", "cpu", "--tiny", "--images", "16", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "running scripts/setup.sh" not in res.stderr  # .venv exists: no install step

    r = json.loads((out / "gpu_check.json").read_text())
    assert r["status"] == "completed"
    assert {
        "machine",
        "settings",
        "targets",
        "flops",
        "matmul",
        "model_only",
        "achieved",
        "precision",
        "end_to_end",
        "timings",
    } <= set(r)
    assert r["settings"]["device"] == "cpu" and r["settings"]["clip"] == "abs-tiny-vit-b16"
    assert r["machine"]["torch"]["version"] == torch.__version__

    e, mo, pr, fl = r["end_to_end"], r["model_only"], r["precision"], r["flops"]
    assert e["rc"] == 0 and not e["timed_out"] and e["images_done"] == 16
    for x in (
        e["images_per_s"],
        e["stage_images_per_s"],
        e["wall_s"],
        mo["images_per_s"],
        mo["wall_s"],
        r["achieved"]["model_tflops"],
        r["matmul"]["tflops"],
        fl["per_image"],
        fl["attention"],
    ):
        assert _positive(x), x
    assert e["target_images_per_s"] == 170 and r["achieved"]["target_share"] == 0.45
    assert fl["attention_counted"] and fl["per_image"] > fl["attention"]
    assert 0.0 <= pr["agreement"] <= 1.0 and pr["max_logit_diff"] >= 0.0 and pr["images"] > 0
    assert set(pr["agreement_by_method"]) >= {"abs", "cupl"}
    assert 0.0 <= mo["outside_model_calls_s"] <= mo["wall_s"]
    assert mo["peak_mem_bytes"] is None and mo["gpu_idle_s"] is None  # no GPU here

    summary = (out / "summary.txt").read_text()
    for needle in ("images/s", "TFLOP/s", "bf16 vs fp32", "CPU:", "torch:", ">= 170"):
        assert needle in summary, needle
    assert summary in res.stdout


def test_machine_summary_names_cpu_and_torch():
    machine = _load("machine")
    info = machine.machine_info()
    text = machine.machine_summary(info)
    assert info["cpu"]["model"] and info["cpu"]["model"] in text
    assert torch.__version__ in text
    assert info["cpu"]["logical_cpus"] >= 1 and isinstance(info["cpu"]["vector_extensions"], list)
    if Path("/proc/cpuinfo").exists():
        flags = Path("/proc/cpuinfo").read_text()
        if " avx2" in flags:
            assert "avx2" in info["cpu"]["vector_extensions"]
    assert json.loads(json.dumps(info)) == info  # stored in the benchmarks' JSON as is


def test_flop_count_includes_attention():
    from abs_model import TINY_CLIP, CLIPBackbone, DINOBackbone, ModelSpec

    flops = _load("flops")
    clip = CLIPBackbone.load(TINY_CLIP)
    dino = DINOBackbone.load(ModelSpec("abs-tiny-dino-vit-b16"))
    f = flops.abs_model_flops(clip, dino, n_crops=3, device="cpu", classes=5, descriptions=4)
    assert f["attention_counted"], (f["attention"], f["attention_analytic"])
    assert f["per_image"] == 4 * f["clip_full"] + 3 * f["clip_last_block"] + f["dino"]
    # without the math SDPA backend the CPU counter misses QK^T and AV: the fix matters
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, 224, 224)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            clip.encode_image(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert fc.get_total_flops() < f["clip_full"]
    assert f["matching"] == 2 * 6 * 5 * 4 * clip.embed_dim
    assert "elementwise" in f["not_counted"]


def test_gpu_busy_union_of_kernel_intervals(tmp_path):
    gc = _load("gpu_check")
    trace = {
        "traceEvents": [
            {"ph": "X", "cat": "kernel", "ts": 0, "dur": 10},
            {"ph": "X", "cat": "kernel", "ts": 5, "dur": 10},  # overlaps: union 0..15
            {"ph": "X", "cat": "gpu_memcpy", "ts": 20, "dur": 5},  # 20..25
            {"ph": "X", "cat": "cpu_op", "ts": 0, "dur": 1000},  # host work: not GPU time
        ]
    }
    p = tmp_path / "trace.json"
    p.write_text(json.dumps(trace))
    busy, kernels = gc.gpu_busy_seconds(str(p))
    assert busy == pytest.approx(20e-6) and kernels == 2


def test_summary_renders_gpu_figures():
    """The GPU-only lines (peak memory, profiler idle time, nvidia-smi, projection) on a made-up H200 result."""
    gc = _load("gpu_check")
    machine = {
        "hostname": "h",
        "os": "Linux",
        "python": "3.11",
        "cpu": {
            "model": "Xeon",
            "arch": "x86_64",
            "vector_extensions": ["avx512f", "amx_bf16"],
            "physical_cores": 16,
            "logical_cpus": 16,
            "usable_cpus": 16,
            "torch_threads": 16,
        },
        "torch": {"version": "2.x", "cuda": "13.0", "cudnn": 1, "cpu_capability": "AVX512", "mkldnn": True},
        "gpu": {
            "name": "NVIDIA H200",
            "count": 1,
            "memory_gib": 139.8,
            "compute_capability": "9.0",
            "multiprocessors": 132,
        },
    }
    res = {
        "machine": machine,
        "settings": {
            "clip": "ViT-B-16",
            "dino": "vit_base_patch16_224.dino",
            "n_crops": 60,
            "top_k": 20,
            "m": 50,
            "images": 2000,
            "classes": 1000,
            "device": "cuda",
            "precision": "bfloat16",
        },
        "end_to_end": {
            "images_per_s": 80.0,
            "meets_target": False,
            "wall_s": 25.0,
            "images_done": 2000,
            "images": 2000,
            "timed_out": False,
            "rc": 0,
            "stage_images_per_s": 200.0,
            "projected_goal_s": 265.0,
            "projected_meets_goal": True,
            "nvidia_smi_stage": {"samples": 40, "util_mean_pct": 91.0, "mem_used_peak_mib": 30000.0},
        },
        "model_only": {
            "images": 512,
            "images_per_s": 250.0,
            "images_per_batch": 64,
            "precision": "bfloat16",
            "peak_mem_gib": 21.5,
            "outside_model_calls_s": 0.3,
            "wall_s": 2.0,
            "outside_model_calls_frac": 0.15,
            "gpu_idle_s": 0.4,
            "profiled_wall_s": 0.8,
            "gpu_idle_frac": 0.5,
            "profiled_images": 192,
        },
        "flops": {"per_image": 2.35e12, "attention": 9.57e10, "attention_counted": True, "not_counted": "x"},
        "matmul": {"dtype": "bfloat16", "n": 8192, "tflops": 750.0},
        "achieved": {"model_tflops": 587.5, "share_of_matmul": 0.78, "meets_target": True},
        "precision": {
            "images": 64,
            "agreement": 0.98,
            "max_logit_diff": 0.5,
            "agreement_by_method": {"abs": 0.98, "clip": 1.0},
        },
    }
    text = gc.summary(res)
    for needle in (
        "NVIDIA H200",
        "21.50 GiB",
        "GPU idle waiting for host",
        "91% util",
        "265 s",
        "MISSED",
        "ok",
        "78.0%",
        "agree 0.980",
    ):
        assert needle in text, needle
    assert "CPU DRY RUN" not in text


def test_bench_sql_replays_a_run_into_the_real_layout(tmp_path):
    """bench_sql.py's data is real layout: runs of N images in shards with markers and run
    records, answered by every named query and `abs-eval status` (timed, not judged here)."""
    from test_sql import METHODS, build_results

    from tasks.results import catalog
    from tasks.results.progress import run_progress

    bench = _load("bench_sql")
    build_results(str(tmp_path / "template"))
    shape = bench.build(tmp_path / "template", tmp_path / "root", images_per_run=40, runs=3, shard_size=16)
    assert shape["rows"] == 3 * 40 * len(METHODS) and shape["parts"] == 3 * 3
    con = catalog.connect(str(tmp_path / "root"))
    try:
        per_run = con.execute(
            "SELECT run_id, count(*), count(DISTINCT image_id), count(DISTINCT shard) "
            "FROM run_predictions GROUP BY run_id ORDER BY run_id"
        ).fetchall()
        assert [r[1:] for r in per_run] == [(40 * len(METHODS), 40, 3)] * 3
        pair = con.execute("SELECT run_a, run_b FROM run_pair").fetchall()[0]
        assert pair == (per_run[1][0], per_run[2][0])  # a history: the last run and its previous one
    finally:
        con.close()
    progress = run_progress(str(tmp_path / "root"))
    assert [(p["status"], p["shards_done"], p["n_images"]) for p in progress] == [("completed", 3, 40)] * 3
    seconds, results = bench.time_queries(tmp_path / "root", tmp_path / "results.duckdb", reps=1)
    assert set(catalog.list_queries()) <= set(seconds) and "abs-eval status (whole command)" in seconds
    assert all(_positive(s) for s in seconds.values())


def test_bench_variants_prints_its_figures_at_a_tiny_size(tmp_path, capsys):
    """bench_variants.py end to end on 12 generated images (tiny models, N=6): the base run, one fresh run, the
    10-point sweep from the kept features, the bytes per image, the float16 check and the profiled point."""
    bench = _load("bench_variants")
    out_json = tmp_path / "variants.json"
    argv = ["--per-class", "1", "--n-crops", "6", "--m", "4", "--images-per-shard", "12", "--profile"]
    out = bench.main([*argv, "--root", str(tmp_path / "root"), "--json", str(out_json)])
    assert json.loads(out_json.read_text()) == json.loads(json.dumps(out))
    assert (out["images"], out["shards"], out["n_crops"], out["top_k"], out["m"]) == (12, 1, 6, 20, 4)
    assert len(out["sweep_points"]) == 10 and "matching=average" in out["sweep_points"]
    assert all(_positive(s) for s in out["seconds"].values()) and _positive(out["ratio_sweep_to_fresh_inference"])
    assert 0 < out["features"]["fp16_bytes_per_image"] < out["features"]["fp32_bytes_per_image"]
    assert out["fp16"]["decisions_compared"] % (10 * 12) == 0 and out["fp16"]["decisions_compared"] > 0
    assert out["profile"]["point"] == "tau=0.07" and "analyze" in " ".join(out["profile"]["cumulative"])
    text = capsys.readouterr().out
    assert "10-point sweep from features" in text and "ratio sweep / fresh inference:" in text
    assert "profile of one more point, tau=0.07" in text


def test_bench_progress_reads_the_runs_cost_line_and_judges_a_timeline():
    """bench_progress.py parses the line flows.live logs (the two must not drift apart) and the artifact's
    real description texts, and its checks fail a timeline with too few intermediate values."""
    from flows.live import ProgressCost
    from tasks.results.artifacts import RunProgress

    bench = _load("bench_progress")
    cost = ProgressCost(seconds=0.31, cpu_seconds=0.05, api_seconds=0.18, first_api_seconds=0.09, updates=14)
    cost.shards, cost.span_s = 12, 1512.0
    m = bench.COST_LINE.search(f"04:00:00.000 | INFO    | Flow run 'shards' - {cost.line('r1')}")
    assert m and (m["run_id"], m["updates"], m["shards"], m["span"]) == ("r1", "14", "12", "1,512")
    assert (m["seconds"], m["cpu"], m["api"], m["first"], m["percent"]) == ("0.31", "0.05", "0.18", "0.09", "0.021")

    now = [0.0]
    p = RunProgress("r1", "demo", "m", shards_total=4, images_total=40, min_interval=0, clock=lambda: now[0])
    seen = [bench.Seen.parse(0, p.percent, p.description(["abs"]))]
    for k in range(4):
        now[0] += 10
        p.shard_done({"n_images": 10, "n_error": 0, "computed": True})
        p.add_counts([{"method": "abs", "n_ok": 10, "n_correct": k}])
        seen.append(bench.Seen.parse(now[0], p.percent, p.description(["abs"])))
    mid = seen[2]
    assert (mid.shards, mid.images, mid.rate, mid.left) == ("2/4", "20/40", 1.0, "20 s")
    assert mid.accuracy == "abs 5.0%"
    cost = {"updates": 5}
    assert bench.checks(0, seen, cost) == []
    assert len(bench.checks(0, seen[:1] + seen[2:], cost)) == 1  # 2 intermediate values: one failure
    assert len(bench.checks(0, seen, None)) == 1  # no cost line in the run's output
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0


def test_gpu_pack_takes_what_the_lent_image_lacks():
    """``gpu_pack.py`` packs Prefect, open_clip and DuckDB for the lent machine, never torch or numpy (the
    image's CUDA builds), nor dev tools; the CLI's pure-Python stack goes at the tested versions."""
    gp = _load("gpu_pack")
    image = gp.image_packages()
    assert {"torch", "torchvision", "numpy", "pyarrow", "timm", "typer"} <= image
    venv = {
        "prefect": "3.9.1",
        "open_clip_torch": "3.3.0",
        "duckdb": "2.0.1",
        "duckdb-cli": "1.5.6",
        "torch": "2.14.1",
        "numpy": "2.4.6",
        "ruff": "0.17.6",
        "typer": "0.29.2",
        "typing_extensions": "4.16.0",
        "SQLAlchemy": "2.1.9",
    }
    packed = gp.to_pack(venv, image)
    assert packed == sorted(
        [
            "SQLAlchemy==2.1.9",
            "duckdb==2.0.1",
            "open_clip_torch==3.3.0",
            "prefect==3.9.1",
            "typer==0.29.2",
            "typing_extensions==4.16.0",
        ]
    )
