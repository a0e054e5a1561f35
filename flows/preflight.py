"""Checks of a job that the command line runs before Prefect or any model starts.

Why: a mistake in the job (a path typo, a root that cannot be written, a DINO model
whose grid ABS cannot use, weights that cannot be downloaded) must end the command in
one ``error:`` line with exit code 2, not in a traceback from a worker after Prefect
started and the data was sharded. Every function here raises :class:`PreflightError`
(or returns problem strings) with a message that says what to do; ``flows/cli.py``
prints it as ``error: <message>`` and exits with 2.

Two depths, so that a typo is reported in well under 2 seconds:

* **cheap** (standard library and fsspec only; no torch, open_clip, timm, Prefect):
  paths that must exist, storage roots and output files that must be writable,
  dataset names and layouts. The CLI runs these before importing anything heavy.
* **models** (torch, timm, open_clip; no weights read): the architecture of each model
  built on the ``meta`` device (the same checks the backbones make when they load),
  then the pretrained weights fetched into the local cache, which the run needs anyway;
  on a machine that is offline and lacks them this fails at once.

Local paths are checked on disk (a temporary probe folder is created and removed, so
nothing is left behind); remote fsspec URLs (``s3://``, ``gs://``, ``memory://``) are
only checked for a known protocol with its package installed, never probed over the
network.
"""

from __future__ import annotations

import difflib
import glob as _glob
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "PreflightError",
    "is_remote",
    "check_root_exists",
    "check_writable_dir",
    "check_writable_file",
    "check_exists",
    "job_problems",
    "model_problems",
    "fetch_weights",
    "problems_text",
]


def is_weights_path(p: str) -> bool:
    """Whether a ``--*-pretrained`` value is a checkpoint path (rather than a tag such as ``openai``)."""
    return "/" in p or os.sep in p or p.endswith((".pt", ".pth", ".bin", ".safetensors"))


class PreflightError(ValueError):
    """A job-level mistake found before any work; the CLI prints ``error: <message>`` and exits with 2."""


# ------------------------------------------------------------------------------ paths
def is_remote(url: str) -> bool:
    """True for an fsspec URL other than a local file (``s3://``, ``memory://``, ``simplecache::s3://``)."""
    return ("://" in url or "::" in url) and not url.startswith(("file://", "local://"))


def _local(url: str) -> str:
    """The absolute local path of a local URL (``file://`` stripped, ``~`` expanded), as fsspec reads it."""
    for prefix in ("file://", "local://"):
        if url.startswith(prefix):
            url = url[len(prefix) :]
    return os.path.abspath(os.path.expanduser(url))


def _check_protocol(url: str, what: str) -> None:
    """A remote URL: its protocol must be known to fsspec and its package installed (no network).

    Why only this: probing an object store costs a request and credentials, and a
    ``memory://`` root lives in this process (a probe must not create or change it).
    """
    import fsspec

    for part in url.split("::"):
        protocol = part.split("://", 1)[0] if "://" in part else part
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PreflightError(f"{what} {url}: {reason}") from None


def _nearest_existing(path: str) -> str:
    """``path`` or its nearest ancestor that exists (``/`` at worst)."""
    p = path
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _probe(folder: str) -> str | None:
    """Create and remove a temporary folder in ``folder``; returns why that failed, or None.

    Why a probe instead of ``os.access``: ``os.access`` says yes to root everywhere, and
    is wrong for read-only mounts, ``/proc`` and most network filesystems.
    """
    try:
        tmp = tempfile.mkdtemp(prefix=".abs-eval-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    try:
        os.rmdir(tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return None


def check_writable_dir(url: str, what: str = "--root") -> None:
    """``url`` is a folder that exists and can be written, or one that can be created.

    Why: a command that writes (``run``, ``demo``, ``shard``, ``export --out`` ...) must
    not find out after Prefect started, or after an hour of inference, that its root is
    under a regular file, in ``/proc`` or on a read-only disk. Nothing is created: the
    probe folder goes into the folder itself or its nearest existing ancestor (what
    ``makedirs`` would need) and is removed at once. Remote URLs: protocol only.
    """
    if is_remote(url):
        _check_protocol(url, what)
        return
    path = _local(url)
    why = _write_problem(path, itself=True)
    if why is not None:
        raise PreflightError(f"cannot write to {url}: {why} ({what})")


def _write_problem(path: str, itself: bool) -> str | None:
    """Why the local folder ``path`` cannot be written or created, or None. ``itself``: the
    folder is what the user named (say "it is a file"), else the folder of a named file."""
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        return "it is a file, not a folder" if itself and base == path else f"{base} is a file, not a folder"
    why = _probe(base)
    if why is not None:
        return f"cannot create anything in {base} ({why})"
    return None


def check_writable_file(url: str, what: str = "--out", make_parents: bool = False) -> None:
    """``url`` is a file that can be written: not a folder, in a writable folder.

    ``make_parents``: the writer creates missing parent folders (``sql catalog``); else
    the parent folder must exist (``sql run --out``). ``-`` (stdout) passes.
    """
    if url == "-":
        return
    if is_remote(url):
        _check_protocol(url, what)
        return
    path = _local(url)
    if os.path.isdir(path):
        raise PreflightError(f"cannot write to {url}: it is a folder; give a file name ({what})")
    parent = os.path.dirname(path)
    if not make_parents and not os.path.lexists(parent):
        raise PreflightError(f"cannot write to {url}: the folder {parent} does not exist ({what})")
    why = _write_problem(parent, itself=False)
    if why is not None:
        raise PreflightError(f"cannot write to {url}: {why} ({what})")


def check_root_exists(root: str, what: str = "--root") -> None:
    """A root that a command only reads (``status``, ``sql``, ``export``, ``report``) must exist.

    Why: ``status --root abs-outptu`` used to answer "no runs" with exit code 0; a path
    typo is a mistake, said as one. An existing root without runs still gives its empty
    answer. Remote roots: protocol only.
    """
    if is_remote(root):
        _check_protocol(root, what)
        return
    path = _local(root)
    if not os.path.exists(path):
        raise PreflightError(f"no runs under {root}: no such folder (pass --root or set ABS_EVAL_ROOT)")
    if not os.path.isdir(path):
        raise PreflightError(f"no runs under {root}: it is a file, not a folder (pass --root or set ABS_EVAL_ROOT)")


def _exists_local(url: str) -> bool:
    """A local path, or a glob (the hf-parquet layout takes one) that matches something."""
    path = _local(url)
    if any(c in url for c in "*?["):
        return bool(_glob.glob(path)) or os.path.exists(path)
    return os.path.exists(path)


def check_exists(url: str, what: str) -> None:
    """A local input (dataset source, description file, matrix file) exists; remote ones pass here
    (``flows.params.check`` looks them up through fsspec, which may need the network)."""
    if not is_remote(url) and not _exists_local(url):
        raise PreflightError(f"{what} not found: {url}")


def name_problems(dataset: str, layout: str) -> list[str]:
    """A dataset name that cannot be a path / hive value, an unknown layout (with the nearest
    known one): the checks ``job_problems`` and ``flows.params.static_problems`` share."""
    from tasks.datasets import list_layouts
    from tasks.datasets.registry import is_layout
    from tasks.store.paths import is_valid_name

    problems = []
    if not is_valid_name(dataset):
        problems.append(f"dataset name {dataset!r}: use letters, digits, '.', '_' or '-'")
    if not is_layout(layout):
        near = difflib.get_close_matches(layout, list_layouts(), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        problems.append(f"unknown layout {layout!r}{hint}; known layouts: {', '.join(list_layouts())}")
    return problems


# ------------------------------------------------------------------------------ one job, cheap
def job_problems(params: Any) -> list[str]:
    """Every problem of one :class:`flows.params.EvaluateParams` visible without torch or a model.

    Why apart from ``flows.params.check``: that one starts with the model names, which
    need open_clip and timm (10-15 s of imports on a small machine); these need none, so a
    path typo is reported at once. The messages are the same as ``check``'s, and ``check``
    runs afterwards anyway. The root is checked apart (once for all cells):
    :func:`check_writable_dir`.
    """
    problems = name_problems(params.dataset, params.layout)
    for url, what in ((params.source, "dataset source"), (params.descriptions, "descriptions file")):
        if url:
            try:
                check_exists(url, what)
            except PreflightError as exc:
                problems.append(str(exc))
    for what, p in (("clip_pretrained", params.clip_pretrained), ("dino_pretrained", params.dino_pretrained)):
        if p and is_weights_path(p) and not os.path.exists(p):  # as the loaders open it (no ~ expansion)
            problems.append(f"{what}: checkpoint file not found: {p}")
    return problems


def problems_text(problems: list[str]) -> str:
    """One problem as it is, several as a list (the form ``flows.params`` uses)."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems with the job:\n  - " + "\n  - ".join(problems)


# ------------------------------------------------------------------------------ models (no weights)
def model_problems(clip_model: str, dino_model: str) -> list[str]:
    """Models that load but that ABS cannot use, from their architecture alone (no weights).

    Why: a DINO ViT with another patch grid (``vit_base_patch8_224.dino``: 28 x 28) or a
    CLIP model whose visual tower cannot be split (ResNets) was found only when a worker
    loaded it, after Prefect started and the dataset was sharded. Each model is built on
    the ``meta`` device (a fraction of a second, nothing allocated or downloaded) and
    put through the backbone's own checks; the DINO grid must be ``tasks.defaults.DINO_GRID``,
    the rule ``tasks.run.context.build_context`` enforces at load time. Call after the names
    are known to be valid (``flows.params.static_problems``).
    """
    from abs_model import CLIPBackbone, DINOBackbone
    from tasks.defaults import DINO_GRID

    # ValueError (SplitError is one) is what the backbones' own checks raise; anything else means
    # the model could not be built on the meta device, which says nothing about the model: the
    # real load will tell, so a valid model is never refused here.
    out = []
    try:
        CLIPBackbone.architecture(clip_model)
    except ValueError as exc:  # SplitError: a ResNet or timm tower, attention pooling, a non-square grid
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        out.append(f"CLIP model {msg}" if msg.startswith(clip_model) else f"CLIP model {clip_model}: {msg}")
    except Exception:  # noqa: BLE001 - see above
        pass
    dino = None
    try:
        dino = DINOBackbone.architecture(dino_model)
    except ValueError as exc:  # not a timm ViT with fused qkv, a non-square grid
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        out.append(f"DINO model {msg}" if msg.startswith(dino_model) else f"DINO model {dino_model}: {msg}")
    except Exception:  # noqa: BLE001 - see above
        pass
    if dino is not None:
        if dino.grid != DINO_GRID:
            out.append(
                f"DINO model {dino_model} has a {dino.grid}x{dino.grid} grid; ABS expects "
                f"{DINO_GRID}x{DINO_GRID} (patch 16 at 224 px, e.g. vit_base_patch16_224.dino; "
                "see `abs-eval models`)"
            )
    return out


# ------------------------------------------------------------------------------ weights
class _Source:
    """Where a tag's weights come from: Hugging Face Hub files, or a URL with its cache file."""

    def __init__(self, host: str, cached: str | None, cache_hint: str, download):
        self.host, self.cached, self.cache_hint, self.download = host, cached, cache_hint, download


def _hf_cached(repo_id: str, filenames: Iterable[str], revision: str | None = None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def _hf_host() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _clip_source(model: str, tag: str) -> _Source | None:
    """open_clip's own resolution of a pretrained tag (``open_clip.pretrained.download_pretrained``)."""
    import open_clip
    from open_clip import pretrained as oc_pre

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg or cfg.get("file"):
        return None
    hf = cfg.get("hf_hub", "") if oc_pre.has_hf_hub() else ""
    if hf:
        from huggingface_hub import constants

        repo_id, filename = os.path.split(hf)
        filename = filename or oc_pre.HF_WEIGHTS_NAME
        names = [*oc_pre._get_safe_alternatives(filename), filename]
        return _Source(
            _hf_host(), _hf_cached(repo_id, names), constants.HF_HUB_CACHE, lambda: oc_pre.download_pretrained(cfg)
        )
    url = cfg.get("url", "")
    if not url:
        return None
    target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return _Source(
        url,
        target if os.path.isfile(target) else None,
        os.path.dirname(target),
        lambda: oc_pre.download_pretrained(cfg),
    )


def _dino_source(model: str) -> _Source | None:
    """timm's own resolution of ``pretrained=True`` (``timm.models._builder.load_pretrained``)."""
    import timm
    from timm.models import _builder, _hub

    from abs_model import DINOBackbone, ModelSpec

    timm_name, _ = DINOBackbone.timm_args(ModelSpec(model))
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    load_from, loc = _builder._resolve_pretrained_source(cfg.to_dict())
    if load_from == "hf-hub":
        from huggingface_hub import constants, hf_hub_download

        repo, names = (
            (loc[0], [loc[1]]) if isinstance(loc, (list, tuple)) else (loc, ["model.safetensors", "pytorch_model.bin"])
        )
        repo_id, revision = _hub.hf_split(repo)

        def download() -> str:
            from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

            for name in names[:-1]:
                try:
                    return hf_hub_download(repo_id, name, revision=revision)
                except LocalEntryNotFoundError:
                    raise
                except EntryNotFoundError:  # no such file in the repository: the next one
                    pass
            return hf_hub_download(repo_id, names[-1], revision=revision)

        return _Source(_hf_host(), _hf_cached(repo_id, names, revision), constants.HF_HUB_CACHE, download)
    if load_from == "url":
        import torch.hub

        target = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(loc).path))
        return _Source(
            loc,
            target if os.path.isfile(target) else None,
            os.path.dirname(target),
            lambda: _hub.download_cached_file(loc, check_hash=False, progress=True),
        )
    return None  # a file or state dict in the config: nothing to fetch


def _unreachable(url: str) -> str | None:
    """Why ``url``'s host cannot be reached (one TCP connection, 5 s at most), or None.

    Why a probe: offline, huggingface_hub retries five times with back-off (about 25 s)
    per file before it gives up, and timm and open_clip try two files each. Behind a
    proxy the probe would say nothing true, so it is skipped there.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and urlparse(url).netloc == urlparse(_hf_host()).netloc:
        return "HF_HUB_OFFLINE is set"
    if any(
        os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return None
    parts = urlparse(url)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as exc:
        return str(exc.strerror or exc) or type(exc).__name__
    return None


def fetch_weights(kind: str, model: str, pretrained: str | None) -> str | None:
    """Make sure the weights of a pretrained tag are in the local cache; returns the cached file.

    Why in the CLI process, before Prefect: the run needs the file anyway (the workers
    then find it cached), and a machine that is offline and lacks it fails here, in one
    line and a few seconds, instead of in a worker after Prefect started, with a
    traceback. ``kind``: ``"CLIP"`` (``pretrained`` an open_clip tag) or ``"DINO"``
    (``pretrained`` ``"timm"``). Random weights (None) and local checkpoint paths
    (checked to exist by :func:`job_problems`) need nothing. Call after the names and tags
    were checked (``flows.params.static_problems``).
    """
    if not pretrained or is_weights_path(pretrained):
        return None
    source = _clip_source(model, pretrained) if kind == "CLIP" else _dino_source(model)
    if source is None:
        return None
    if source.cached:
        return source.cached
    why = _unreachable(source.host)
    if why is not None:
        raise PreflightError(
            f"{kind} weights {pretrained!r} for {model} are not in the local cache ({source.cache_hint}) and "
            f"{urlparse(source.host).netloc or source.host} cannot be reached ({why}): download them once on a "
            "machine online (or copy the cache), pass a local checkpoint path instead of the tag, or use "
            "'random' for a smoke test"
        )
    from abs_model import WeightsUnavailableError
    from abs_model.weights import explain_download

    try:
        with explain_download(kind, model, pretrained):
            return source.download()
    except WeightsUnavailableError as exc:
        raise PreflightError(" ".join(str(exc).split())) from None
