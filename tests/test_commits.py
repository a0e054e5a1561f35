"""The commit protocol's one home (``tasks/store/commits.py``) and its typed markers.

Resume rests on three rules: a marker is written after its data file, a unit is skipped
only when its marker holds the expected values and its file is there, and removal takes
the marker first. Markers keep the keys they had before they were typed, so roots
written by earlier versions resume unchanged.
"""

import json

import pyarrow as pa
import pytest

from tasks.store import Storage, commits
from tasks.store.markers import DinoPartMarker, PredictionPartMarker, ShardPartMarker
from tasks.store.paths import marker_key


@pytest.fixture(params=["local", "memory"])
def st(request, tmp_path):
    if request.param == "local":
        return Storage(str(tmp_path / "root"))
    import uuid

    return Storage(f"memory://commits-{uuid.uuid4().hex}")


def test_commit_then_committed_with_expected_values(st):
    rel = "cache/dino/model=m/key=k/dataset=d/part-00000.parquet"
    assert commits.committed(st, rel) is None
    marker = DinoPartMarker(fingerprint="f1", n_ok=2, n_error=1, dino="m", weights=None)
    commits.commit_parquet(st, rel, pa.table({"x": [1, 2, 3]}), marker)
    assert st.read_parquet(rel).num_rows == 3
    assert commits.committed(st, rel) == marker.to_dict()
    assert commits.committed(st, rel, fingerprint="f1")["n_ok"] == 2
    assert commits.committed(st, rel, fingerprint="f2") is None  # other settings: recompute
    st.fs.rm(st.path(rel))
    assert commits.committed(st, rel) is None  # a marker without its file is not a commit


def test_uncommit_takes_the_marker_first_and_data_only_when_asked(st):
    rel = "predictions/dataset=d/model=m/config=c/part-00001.parquet"
    commits.commit_parquet(st, rel, pa.table({"x": [1]}), PredictionPartMarker(1, 1, 0, "r"))
    assert commits.uncommit(st, rel, data=False) == [st.marker_path(marker_key(rel))]
    assert st.exists(rel) and commits.marker_of(st, rel) is None
    commits.mark(st, rel, {"n_images": 1})
    assert commits.uncommit(st, rel) == [st.marker_path(marker_key(rel)), rel]
    assert commits.uncommit(st, rel) == []  # already gone: nothing to say


def test_markers_keep_their_stored_keys_and_read_leniently():
    """The keys each marker held before markers were typed (what older roots hold)."""
    assert list(PredictionPartMarker(5, 4, 1, "r").to_dict()) == ["n_images", "n_ok", "n_error", "run_id"]
    assert set(DinoPartMarker("f", 1, 0, "m", "w").to_dict()) == {"fingerprint", "n_ok", "n_error", "dino", "weights"}
    shard = {
        "index": 0,
        "path": "p",
        "n_total": 2,
        "n_ok": 2,
        "n_error": 0,
        "status_counts": {"ok": 2},
        "first_image_id": "a",
        "last_image_id": "b",
        "digest": "d",
        "n_bytes": 10,
        "dataset": "x",
        "fingerprint": "f",
        "committed_at": "t",
    }
    assert ShardPartMarker.from_dict({**shard, "added_later": 1}).to_dict() == shard


def test_steps_save_through_the_protocol_only():
    """No step writes or reads a marker by itself: ``mark_done`` / ``read_marker`` / ``is_done``
    appear only in the store (the rollup writers included: ``tasks/store/rollups.py`` goes through ``commits``)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    allowed = {"tasks/store/storage.py", "tasks/store/commits.py", "tasks/results/runs.py"}
    for path in list((repo / "tasks").rglob("*.py")) + list((repo / "flows").rglob("*.py")):
        rel = path.relative_to(repo).as_posix()
        if rel in allowed:
            continue
        text = path.read_text()
        for call in (".mark_done(", ".read_marker(", ".is_done("):
            assert call not in text, f"{rel} calls {call} (use tasks.store.commits)"


def test_a_marker_is_plain_json(st):
    rel = "x/part-00000.parquet"
    commits.commit_parquet(st, rel, pa.table({"x": [1]}), PredictionPartMarker(1, 1, 0, "r"))
    with st.fs.open(st.path(st.marker_path(marker_key(rel)))) as f:
        assert json.load(f) == {"n_images": 1, "n_ok": 1, "n_error": 0, "run_id": "r"}
