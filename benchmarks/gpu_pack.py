"""Pack the Python packages a lent GPU machine lacks, for ``benchmarks/gpu_check.sh`` to unpack there.

Why: the lent H200 machine has no network and no package index, and its own Python (3.12, with CUDA
torch, torchvision, timm, numpy, pyarrow, matplotlib ... preinstalled) is the one that sees the GPU. So
``scripts/setup.sh`` cannot build a venv there (it needs an index and the CPU torch wheels of this
project's machines). What it lacks (Prefect and its server stack, open_clip, DuckDB, Dask ...) travels
with the working tree instead: this script, run HERE where pip reaches an index, downloads those
packages as wheels for the machine's Python and platform, unpacks them into one folder and writes it as
``.whl/site312.tar.xz`` (``.whl/`` is git-ignored). The working tree that travels is capped (64 MiB),
so the folder is xz-compressed (~42 MiB: DuckDB's library alone is 66 MiB unpacked) and Prefect's
bundled web UI is left out (the check uses Prefect's API only).

Which packages: those in this project's ``.venv`` (the tested versions) that are not in the machine
image's list (``gpu_image_packages.txt``, from the device tool's KINDS.md), without the dev tools, plus
the pure-Python packages Prefect's and the CLI's imports pin (``SHADOW``) so that the image's own
versions do not decide them. The image keeps torch, torchvision, numpy, pyarrow and the other compiled
packages built against its CUDA torch.

    .venv/bin/python benchmarks/gpu_pack.py            # writes .whl/site312.tar.xz (~2 min)
    .venv/bin/python benchmarks/gpu_pack.py --list     # only print what would be packed
    # then, on the lent machine (device tool: carry [".whl"]):  bash benchmarks/gpu_check.sh --out "$OUT"
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_LIST = Path(__file__).with_name("gpu_image_packages.txt")
OUT = REPO / ".whl" / "site312.tar.xz"
#: Never packed: this project itself, its dev tools, the DuckDB shell (a separate 21 MB binary the check does not run).
SKIP = {"abs-eval", "mypy", "ruff", "librt", "ast-serialize", "duckdb-cli", "pip", "setuptools", "wheel"}
#: Packed although the image has them: the pure-Python stack Prefect and the CLI import, at the tested versions.
SHADOW = {
    "typer",
    "click",
    "rich",
    "httpx",
    "httpcore",
    "anyio",
    "h11",
    "shellingham",
    "typing-extensions",
    "cloudpickle",
}
#: Platform tags pip must match exactly (manylinux_2_N for the N that packages use).
PLATFORMS = ["manylinux1_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)
]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(path: Path = IMAGE_LIST) -> set[str]:
    """The image's package names: one per line or comma-separated, ``#`` comments."""
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0]
        names.update(norm(x) for x in line.replace(",", " ").split() if x)
    return names


def venv_packages(python: str) -> dict[str, str]:
    """``{name: version}`` installed in the venv of ``python``."""
    out = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True, text=True
    ).stdout
    pkgs = {}
    for line in out.splitlines():
        if "==" in line:
            name, version = line.strip().split("==", 1)
            pkgs[name] = version
    return pkgs


def to_pack(venv: dict[str, str], image: set[str]) -> list[str]:
    """``name==version`` for every venv package the machine lacks or that ``SHADOW`` pins, sorted."""
    return sorted(
        f"{name}=={version}"
        for name, version in venv.items()
        if norm(name) not in SKIP and (norm(name) not in image or norm(name) in SHADOW)
    )


def _pip(cmd: list[str]) -> None:
    """Run pip quietly (this machine's index setup warns once per package); its output only when it fails."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"pip failed ({p.returncode}): {' '.join(cmd[:4])} ...")


def pack(requirements: list[str], python_version: str, out: Path) -> int:
    """Download, unpack into one folder, drop Prefect's UI, xz-tar it to ``out``; returns its size in bytes."""
    tag = [f"--platform={p}" for p in PLATFORMS]
    target = ["--python-version", python_version, "--implementation", "cp", "--only-binary=:all:", *tag]
    with tempfile.TemporaryDirectory(prefix="abs-gpu-pack-") as tmp:
        wheels, site = Path(tmp, "wheels"), Path(tmp, "site")
        req = Path(tmp, "requirements.txt")
        req.write_text("\n".join(requirements) + "\n")
        pip = [sys.executable, "-m", "pip"]
        _pip([*pip, "download", "-q", "--no-deps", "-d", str(wheels), *target, "-r", str(req)])
        _pip(
            [*pip, "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site), *target]
            + sorted(str(w) for w in wheels.glob("*.whl"))
        )
        shutil.rmtree(site / "prefect" / "server" / "ui", ignore_errors=True)
        shutil.rmtree(site / "bin", ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_suffix(".part")
        with tarfile.open(part, "w:xz") as tar:
            for child in sorted(site.iterdir()):
                tar.add(child, arcname=child.name)
        part.replace(out)
    return out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="the venv whose versions are packed (default: this one)")
    ap.add_argument("--python-version", default="3.12", help="the lent machine's Python (default 3.12)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"the archive (default {OUT.relative_to(REPO)})")
    ap.add_argument("--list", action="store_true", help="print the packages and stop")
    args = ap.parse_args(argv)
    reqs = to_pack(venv_packages(args.python), image_packages())
    print(f"{len(reqs)} packages for the lent machine's Python {args.python_version}:")
    print("  " + " ".join(reqs))
    if args.list:
        return 0
    t = time.perf_counter()
    size = pack(reqs, args.python_version, args.out)
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB) in {time.perf_counter() - t:.0f} s")
    if size > 60 * 2**20:
        print("warning: over 60 MiB; the working tree that travels to a lent machine is capped at 64 MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
