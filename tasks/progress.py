"""How far runs have got, read from run records and commit markers (no SQL needed).

Why markers: a run in progress has committed some prediction parts; counting
their done-markers under the run's (dataset, model, config) partition gives
shards done, and the markers carry the error counts.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from tasks.schema import predictions_dir
from tasks.storage import COMMITS_DIR, Storage


def run_progress(root: str | Storage, run_id: str | None = None, latest: int = 10) -> list[dict[str, Any]]:
    st = root if isinstance(root, Storage) else Storage(root)
    paths = st.glob("runs/run=*/run.json")
    ids = sorted((re.search(r"run=([^/]+)/run\.json$", p).group(1) for p in paths), reverse=True)
    if run_id is not None:
        if run_id not in ids:
            raise KeyError(f"no run {run_id!r} under {st.root}")
        ids = [run_id]
    out = []
    for rid in ids[:latest]:
        rec = st.read_json(f"runs/run={rid}/run.json")
        mdir = posixpath.join(COMMITS_DIR, predictions_dir(rec["dataset"], rec["model"], rec["config"]))
        markers = st.glob(posixpath.join(mdir, "part-*.json"))
        n_images = n_error = 0
        for m in markers:
            d = st.read_json(posixpath.relpath(m, st.root_path))
            n_images += d.get("n_images", 0)
            n_error += d.get("n_error", 0)
        out.append({"run_id": rid, "status": rec.get("status"), "dataset": rec["dataset"], "model": rec["model"],
                    "config": rec["config"], "shards_total": rec.get("shards_total", 0),
                    "shards_done": len(markers), "n_images": n_images, "n_error": n_error})
    return out
