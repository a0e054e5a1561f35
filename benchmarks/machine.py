"""The machine a benchmark ran on, printed next to its figures and stored in its JSON.

Why: a figure without its machine cannot be compared. An images/s number from a
2-core VM without AVX-512 and one from a 16-core host with AMX differ by an order
of magnitude for the same code, and a GPU figure means little without the GPU's
name and the torch / CUDA build.

    .venv/bin/python benchmarks/machine.py          # readable summary
    .venv/bin/python benchmarks/machine.py --json   # the same as JSON

Cheap (reads /proc/cpuinfo and asks torch), safe without a GPU, and does not
initialise CUDA beyond ``torch.cuda.is_available()`` / device properties.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

#: CPU flags worth naming for matmul speed (x86 and ARM spellings), in this order.
VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "asimd",
    "asimddp",
    "asimdhp",
    "bf16",
    "i8mm",
    "sve",
    "sve2",
    "sme",
)


def _cpuinfo() -> dict[str, Any]:
    """Model name, flags and physical core count from /proc/cpuinfo (Linux); best effort elsewhere."""
    model, flags, cores = None, set(), set()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    phys = core = None
    for line in text.splitlines():
        if ":" not in line:
            if phys is not None or core is not None:
                cores.add((phys, core))
            phys = core = None
            continue
        key, _, val = line.partition(":")
        key, val = key.strip().lower(), val.strip()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = val
        elif key in ("flags", "features"):
            flags.update(val.split())
        elif key == "physical id":
            phys = val
        elif key == "core id":
            core = val
    if phys is not None or core is not None:
        cores.add((phys, core))
    if not model:
        model = platform.processor() or platform.machine() or "unknown CPU"
    return {"model": model, "flags": flags, "physical_cores": len(cores) or None}


def _nvidia_smi() -> dict[str, str] | None:
    """Driver version and GPU name from nvidia-smi, when it is installed (None otherwise)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = (
            subprocess.run(
                [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            .stdout.strip()
            .splitlines()
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    parts = [p.strip() for p in out[0].split(",")]
    parts += [""] * (3 - len(parts))
    return {"name": parts[0], "driver": parts[1], "memory": parts[2]}


def machine_info() -> dict[str, Any]:
    """A JSON-ready description of the CPU, the torch build and the GPU (if any)."""
    import torch

    cpu = _cpuinfo()
    flags = cpu["flags"]
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        capability = None
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": {
            "model": cpu["model"],
            "arch": platform.machine(),
            "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
            "physical_cores": cpu["physical_cores"],
            "logical_cpus": os.cpu_count(),
            "usable_cpus": affinity,
            "torch_threads": torch.get_num_threads(),
        },
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": (torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None),
            "cpu_capability": capability,
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
        },
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
        }
        smi = _nvidia_smi()
        if smi:
            gpu["driver"] = smi["driver"]
        info["gpu"] = gpu
    return info


def machine_summary(info: dict[str, Any] | None = None) -> str:
    """Three or four readable lines: CPU, torch build, GPU."""
    info = info or machine_info()
    c, t, g = info["cpu"], info["torch"], info["gpu"]
    ext = ", ".join(c["vector_extensions"]) or "none of " + "/".join(VECTOR_FLAGS[:4])
    lines = [
        f"machine: {info['hostname']} ({info['os']}, Python {info['python']})",
        f"  CPU:   {c['model']} [{c['arch']}]; {c['physical_cores'] or '?'} cores / {c['logical_cpus']} threads "
        f"({c['usable_cpus']} usable, torch uses {c['torch_threads']}); vector: {ext}",
        f"  torch: {t['version']} (CUDA {t['cuda'] or 'none'}, cuDNN {t['cudnn'] or 'none'}, "
        f"CPU kernels {t['cpu_capability'] or '?'}, oneDNN {'yes' if t['mkldnn'] else 'no'})",
    ]
    if g:
        lines.append(
            f"  GPU:   {g['name']} x{g['count']}, {g['memory_gib']} GiB, sm_{g['compute_capability']}, "
            f"{g['multiprocessors']} SMs" + (f", driver {g['driver']}" if g.get("driver") else "")
        )
    else:
        lines.append("  GPU:   none visible to torch")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    info = machine_info()
    print(json.dumps(info, indent=1) if "--json" in argv else machine_summary(info))


if __name__ == "__main__":
    main()
