"""ABS zero-shot classification, batched across images and crops.

One ``predict`` call runs, for a batch of images:
  1. DINO on the whole images (unless the caller brings cached top-K attention);
  2. per image, its own seeded draws of crop centres and sizes (``sampling``), the
     box and window geometry then computed for the whole batch at once;
  3. the CLIP trunk on [global views + raw crops] of all images in large batches,
     then the last block + head on every row; the views' resampling weights are
     built for the whole batch (``preprocess.clip_views_batch``), one pair of
     matrix products per image;
  4. the feature-space crops: windows of each image's global token grid resized
     back to the full grid (two batched matmuls for all images), original CLS in
     front, then the last block + head, again in large batches;
  5. soft matching for ``abs`` and the cheap baselines from the same features:
     ``clip`` (one prompt), ``clip-e`` (80-template ensemble), ``cupl`` (mean of the
     description features).
No Python loop runs per crop, and nothing waits on the device before the logits
are read back at the end (the tap counts and box geometry are computed on the CPU).
It returns the logits of every method and the crop geometry it used.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .backbones import CLIPBackbone, DINOBackbone
from .config import METHODS, ABSConfig, ModelSpec
from .device import autocast_context, resolve_device, resolve_precision
from .matching import cosine_logits, soft_match
from .preprocess import (
    clip_views_batch,
    dino_views,
    image_tensor,
    limit_size,
    model_image,
    to_float_image,
)
from .resample import apply_separable_batch, bicubic_matrix, to_device
from .sampling import draw_crops_batch, feature_windows, raw_boxes
from .text import TextBank


@dataclass
class CropGeometry:
    """Which regions decided one image's ABS prediction.

    ``raw_boxes``: ``[N, 4]`` (x0, y0, x1, y1) in original pixel coordinates.
    ``feature_windows``: ``[N, 4]`` (r0, r1, c0, c1), half-open, in CLIP grid cells.
    ``dino_topk_indices`` / ``dino_topk_values``: the K DINO cells crops were drawn
    from (row-major on the DINO grid) and their attention.
    """

    image_id: str | int
    width: int
    height: int
    dino_grid: int
    clip_grid: int
    dino_topk_indices: Tensor
    dino_topk_values: Tensor
    raw_cells: Tensor
    raw_boxes: Tensor
    feature_cells: Tensor
    feature_windows: Tensor

    def to_dict(self) -> dict[str, Any]:
        """Plain Python lists (for Parquet rows and JSON)."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = v.tolist() if isinstance(v, Tensor) else v
        return out


@dataclass
class Prediction:
    """Logits of every method for a batch, and the geometry behind them."""

    image_ids: list
    logits: dict[str, Tensor]
    geometry: list[CropGeometry]
    class_indices: list[int] | None = None
    """Column j of every logits matrix is class ``class_indices[j]`` of the text
    bank (``None``: column j is class j)."""
    extras: dict[str, Tensor] = field(default_factory=dict)

    def pred(self, method: str = "abs") -> Tensor:
        """Predicted column per image (an index into the dataset's label space)."""
        return self.logits[method].argmax(dim=1)


class ABSClassifier:
    """ABS + baselines on one CLIP model, one DINO model and one class list."""

    def __init__(
        self,
        clip: CLIPBackbone,
        dino: DINOBackbone,
        text: TextBank,
        config: ABSConfig | None = None,
        device: str | torch.device | None = None,
        precision: str | None = None,
        batch_size: int | None = None,
        compile: bool = False,
    ):
        self.config = config or ABSConfig()
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_precision(self.device, precision)
        self.clip = clip.to(self.device).eval()
        self.dino = dino.to(self.device).eval()
        self.text = text
        # Rows per forward: small on CPUs (activations stay in cache), large on GPUs.
        self.batch_size = int(batch_size or (512 if self.device.type == "cuda" else 16))
        # torch.compile fuses the elementwise work around the GEMMs (~8% on a CPU,
        # more on GPUs) for a one-off compile of ~30 s: worth it for long runs only.
        self._trunk, self._head = self.clip.trunk, self.clip.head
        if compile:
            self._trunk = torch.compile(self.clip.trunk)
            self._head = torch.compile(self.clip.head)
        if text.descriptions.shape[-1] != clip.embed_dim:
            raise ValueError(
                f"text features have dimension {text.descriptions.shape[-1]}, "
                f"CLIP model {clip.spec.name} embeds to {clip.embed_dim}"
            )
        # Class-side tensors on the device once, not on every predict call.
        fdt = clip.feature_dtype
        self._text_dev = {
            "desc": text.descriptions[:, : self.config.n_descriptions].to(self.device, fdt),
            "mask": text.mask[:, : self.config.n_descriptions].to(self.device),
        }
        head = text.mask[:, : self.config.n_descriptions]
        if not bool(head.any()):
            raise ValueError("the text bank's mask has no description among the first M")
        self._mask_all = bool(head.all())
        self._baselines = {"cupl": text.cupl.to(self.device, fdt)}
        if text.prompt is not None:
            self._baselines["clip"] = text.prompt.to(self.device, fdt)
        if text.ensemble is not None:
            self._baselines["clip-e"] = text.ensemble.to(self.device, fdt)
        self._subset = torch.tensor(text.subset, device=self.device) if text.subset is not None else None

    @classmethod
    def from_specs(
        cls,
        clip: ModelSpec | str,
        dino: ModelSpec | str,
        classnames: Sequence[str],
        descriptions: Sequence[Sequence[str]],
        config: ABSConfig | None = None,
        device: str | torch.device | None = None,
        **text_kwargs: Any,
    ) -> ABSClassifier:
        """Load both backbones and encode the class text in one call."""
        config = config or ABSConfig()
        dev = resolve_device(device)
        clip_b = CLIPBackbone.load(clip, dev)
        dino_b = DINOBackbone.load(dino, dev)
        text = TextBank.build(clip_b, classnames, descriptions, m=config.n_descriptions, **text_kwargs)
        return cls(clip_b, dino_b, text, config, dev)

    @property
    def methods(self) -> list[str]:
        """The methods ``predict`` scores, in ``METHODS`` order (``clip`` / ``clip-e``
        only when the text bank has their prompts)."""
        return [m for m in METHODS if m == "abs" or m in self._baselines]

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        return autocast_context(self.device, self.autocast_dtype)

    def _rows(self, fn, x: Tensor) -> Tensor:
        """Apply ``fn`` over the first axis of ``x`` in batches of ``batch_size``."""
        outs = [fn(x[s : s + self.batch_size]) for s in range(0, x.shape[0], self.batch_size)]
        return torch.cat(outs) if outs else x.new_zeros(0)

    def dino_attention(self, images: Sequence[Any]) -> Tensor:
        """CLS-to-patch attention of the last DINO block, ``[B, D*D]`` float32."""
        return dino_attention(
            self.dino, images, self.config.max_image_side, self.device, self.autocast_dtype, self.batch_size
        )

    def dino_topk(self, images: Sequence[Any], k: int | None = None) -> tuple[Tensor, Tensor]:
        """Top-``k`` DINO cells per image: ``(indices [B, k], values [B, k])``, descending."""
        att = self.dino_attention(images)
        vals, idx = torch.topk(att, k or self.config.top_k, dim=1)
        return idx.cpu(), vals.cpu()

    def _cpu_buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor | None:
        """A reusable buffer of ``shape`` on a CPU device (one per thread), else ``None``.

        Why: the model inputs of a batch are large (B x 61 x 3 x 224 x 224 floats);
        on a CPU, allocating and freeing them every call costs page faults and an
        unmap per batch. On CUDA the caching allocator already reuses the memory.
        """
        if self.device.type != "cpu":
            return None
        tls = self.__dict__.get("_tls")
        if tls is None:
            tls = self.__dict__.setdefault("_tls", threading.local())
        n = math.prod(shape)
        buf = getattr(tls, name, None)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = torch.empty(n, dtype=dtype)
            setattr(tls, name, buf)
        return buf[:n].view(shape)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_tls", None)  # per-thread scratch buffers are not part of the classifier
        return state

    def prepare_image(self, image: Any) -> Tensor:
        """A decoded image as ``predict`` takes it fastest (thread-safe; for decode threads).

        An 8-bit image becomes its uint8 ``[3, H, W]`` tensor, contiguous (36 MB for a
        4000x3000 photo, where float32 would hold 144 MB; the views are resampled from the
        8-bit levels, the same numbers bit for bit) and, on CUDA, in pinned memory, so the
        copy to the device is small and asynchronous. Other images: on a CPU device the
        float32 tensor ``predict`` would build itself; elsewhere the tensor as stored
        (converted on the device). ``predict`` gives the same results for the prepared
        tensor as for the image itself.
        """
        x = (model_image(image) if self.device.type == "cpu" else image_tensor(image)).contiguous()
        if self.device.type == "cuda" and x.dtype == torch.uint8:
            try:
                x = x.pin_memory()
            except RuntimeError:
                pass
        return x

    def _geometry(
        self, image_ids: Sequence[str | int], widths: list[int], heights: list[int], top_idx: Tensor, top_val: Tensor
    ) -> tuple[list[CropGeometry], dict[str, Tensor]]:
        """Every image's crops, drawn with its own generator, geometry computed for the batch.

        Returns the per-image ``CropGeometry`` (views into the batch tensors) and the
        batch tensors themselves (``raw_boxes`` / ``feature_windows``: ``[B, N, 4]``).
        """
        cfg = self.config
        D, G = self.dino.grid, self.clip.grid
        dr = draw_crops_batch(top_idx, top_val, widths, heights, G, cfg, image_ids)
        w_t = torch.tensor(widths, dtype=torch.float64).view(-1, 1)
        h_t = torch.tensor(heights, dtype=torch.float64).view(-1, 1)
        boxes = raw_boxes(dr.raw_cells, dr.raw_widths, dr.raw_heights, w_t, h_t, D)
        wins = feature_windows(dr.feature_cells, dr.feature_sides, G, D)
        geoms = [
            CropGeometry(
                image_id=image_ids[b],
                width=widths[b],
                height=heights[b],
                dino_grid=D,
                clip_grid=G,
                dino_topk_indices=top_idx[b],
                dino_topk_values=top_val[b],
                raw_cells=dr.raw_cells[b],
                raw_boxes=boxes[b],
                feature_cells=dr.feature_cells[b],
                feature_windows=wins[b],
            )
            for b in range(len(widths))
        ]
        return geoms, {"raw_boxes": boxes, "feature_windows": wins}

    # ------------------------------------------------------------------ predict
    @torch.inference_mode()
    def predict(
        self,
        images: Sequence[Any],
        image_ids: Sequence[str | int],
        dino_topk: tuple[Tensor, Tensor] | None = None,
        return_features: bool = False,
    ) -> Prediction:
        """Logits of every method for ``images`` (PIL images, uint8 arrays or tensors).

        ``image_ids`` seed each image's crops, so results do not depend on batch
        composition or order. ``dino_topk`` (indices, values), each ``[B, K']`` with
        ``K' >= top_k`` and sorted descending, skips the DINO pass (cached attention).
        ``return_features`` adds the crop and global features to ``extras``.
        """
        cfg = self.config
        if len(images) != len(image_ids):
            raise ValueError(f"{len(images)} images but {len(image_ids)} ids")
        if not images:
            raise ValueError("predict() needs at least one image")
        # 8-bit images travel to the device as uint8 and stay 8-bit levels there: the views are
        # resampled from the levels (the same numbers as from the float image, a quarter of the
        # memory); other dtypes become float32 on the device. No downscale unless
        # ``max_image_side`` asks for one: every view is resized once from the original.
        originals = [_levels_or_float(image_tensor(im).to(self.device, non_blocking=True)) for im in images]
        work = [limit_size(x, cfg.max_image_side) for x in originals]
        if dino_topk is None:
            dino_topk = self.dino_topk(work)
        top_idx, top_val = dino_topk
        if top_idx.shape[1] < cfg.top_k:
            raise ValueError(f"cached DINO top-K holds {top_idx.shape[1]} cells, config needs K={cfg.top_k}")
        top_idx, top_val = top_idx[:, : cfg.top_k].cpu(), top_val[:, : cfg.top_k].cpu()

        G = self.clip.grid
        B = len(originals)
        heights = [int(x.shape[1]) for x in originals]
        widths = [int(x.shape[2]) for x in originals]
        geoms, batch_geo = self._geometry(image_ids, widths, heights, top_idx, top_val)
        # the windows go to the device now, before the trunk is queued (a copy later would
        # make the host wait for it)
        win = to_device(batch_geo["feature_windows"].reshape(-1, 4), self.device) if cfg.feature_crops else None

        # 3. global views first, then every raw crop of every image: one big batch.
        cn = self.clip.norm
        n_raw = cfg.n_crops if cfg.raw_crops else 0
        full = torch.tensor([[0, 0, int(x.shape[2]), int(x.shape[1])] for x in work], dtype=torch.long)
        groups = [(b, full[b : b + 1], b) for b in range(B)]  # the whole image (``full_box``), on the CPU
        if n_raw:
            boxes = _to_working_batch(batch_geo["raw_boxes"], widths, heights, work)
            groups += [(b, boxes[b], B + b * n_raw) for b in range(B)]
        fdt = self.clip.feature_dtype
        wdtype = next(self.clip.parameters()).dtype
        n_views = B * (1 + n_raw)
        vdtype = torch.float32 if work[0].dtype == torch.uint8 else work[0].dtype  # the views' (``clip_views_batch``)
        buf = self._cpu_buffer("views", (n_views, 3, cn.size, cn.size), vdtype)
        views_t = clip_views_batch(work, groups, cn.size, cn.mean, cn.std, n_views, out=buf).to(wdtype)
        global_tokens: list[Tensor] = []  # the first B rows' trunk tokens, kept for step 4

        def trunk_head(v: Tensor) -> Tensor:
            tok = self._trunk(v)
            need = B - sum(t.shape[0] for t in global_tokens)
            if need > 0:
                global_tokens.append(tok[:need].to(fdt))
            return self._head(tok).to(fdt)

        with self._autocast():
            emb = self._rows(trunk_head, views_t)
        emb = torch.nn.functional.normalize(emb, dim=-1)
        g_feat = emb[:B]
        parts = []
        if n_raw:
            parts.append(emb[B:].view(B, n_raw, -1))

        # 4. feature-space crops from each image's global token grid, all images at once:
        # windows resized back to G x G by two batched matmuls, original CLS in front.
        if cfg.feature_crops:
            assert win is not None  # set above whenever feature crops are on
            toks = torch.cat(global_tokens)  # [B, 1 + G*G, width]
            n = cfg.n_crops
            ry = bicubic_matrix(win[:, 0], win[:, 1] - win[:, 0], G, G).view(B, n, G, G)
            rx = bicubic_matrix(win[:, 2], win[:, 3] - win[:, 2], G, G).view(B, n, G, G)
            grid = toks[:, 1:].transpose(1, 2).reshape(B, -1, G, G)  # [B, width, G, G]
            res = apply_separable_batch(grid, ry, rx)  # [B, N, width, G, G]
            # [B*N, 1 + G*G, width]: the image's CLS token, then the resized window's tokens
            ct = toks.new_empty(B, n, 1 + G * G, toks.shape[-1])
            ct[:, :, 0] = toks[:, None, 0]
            ct[:, :, 1:] = res.flatten(3).transpose(2, 3)
            ct = ct.view(B * n, 1 + G * G, -1)
            with self._autocast():
                femb = self._rows(lambda t: self._head(t.to(wdtype)).to(fdt), ct)
            parts.append(torch.nn.functional.normalize(femb, dim=-1).view(B, cfg.n_crops, -1))
        crops = torch.cat(parts, dim=1)

        # 5. matching and baselines.
        mask = None if self._mask_all else self._text_dev["mask"]  # all valid: no masking work, no device sync
        logits = {"abs": soft_match(crops, self._text_dev["desc"], mask, cfg.tau, check_mask=False)}
        for name, class_features in self._baselines.items():
            logits[name] = cosine_logits(g_feat, class_features)
        if self._subset is not None:
            logits = {k: v.index_select(1, self._subset) for k, v in logits.items()}
        logits = {k: v.cpu() for k, v in logits.items()}
        extras = {"crop_features": crops.cpu(), "global_features": g_feat.cpu()} if return_features else {}
        return Prediction(list(image_ids), logits, geoms, self.text.subset, extras)


@torch.inference_mode()
def dino_attention(
    dino: DINOBackbone,
    images: Sequence[Any],
    max_image_side: int = ABSConfig.max_image_side,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 64,
) -> Tensor:
    """CLS-to-patch attention ``[B, D*D]`` (float32, CPU) of decoded images.

    The DINO cache task calls this directly; ``ABSClassifier.predict`` calls it when
    no cached attention is given. Same preprocessing in both, so cached and fresh
    attention are identical. ``max_image_side`` 0 (the default): the DINO view is the
    original resized once; otherwise resized from the ``limit_size`` copy. 8-bit images
    are held as uint8 levels (a DINO batch of 32 4000x3000 photos: 1.2 GB, not 4.6 GB).
    """
    device = torch.device(device)
    xs = [limit_size(_levels_or_float(image_tensor(im).to(device)), max_image_side) for im in images]
    n = dino.norm
    # one banded resampling call for all images (``preprocess.resize_whole_batch``)
    views = dino_views(xs, n.size, n.mean, n.std).to(next(dino.parameters()).dtype)
    out = []
    with autocast_context(device, autocast_dtype):
        for s in range(0, views.shape[0], batch_size):
            out.append(dino.cls_attention(views[s : s + batch_size]).float())
    return torch.cat(out).cpu()


def _levels_or_float(x: Tensor) -> Tensor:
    """``preprocess.model_image`` of an ``image_tensor`` output already on its device."""
    return x if x.dtype == torch.uint8 else to_float_image(x)


def _to_working_batch(boxes: Tensor, widths: list[int], heights: list[int], work: Sequence[Tensor]) -> Tensor:
    """Boxes ``[B, N, 4]`` in original pixels -> pixels of the working images ``work``.

    Only images that ``limit_size`` downscaled change: each coordinate is scaled by
    (working / original) size in float64, rounded, and the box kept at least one
    pixel wide inside the working image.
    """
    changed = [b for b, x in enumerate(work) if (int(x.shape[1]), int(x.shape[2])) != (heights[b], widths[b])]
    if not changed:
        return boxes
    out = boxes.clone()
    idx = torch.tensor(changed)
    wh = torch.tensor([[int(work[b].shape[2]), int(work[b].shape[1])] for b in changed], dtype=torch.float64)
    sx = torch.tensor([int(work[b].shape[2]) / widths[b] for b in changed], dtype=torch.float64).view(-1, 1)
    sy = torch.tensor([int(work[b].shape[1]) / heights[b] for b in changed], dtype=torch.float64).view(-1, 1)
    w, h = wh[:, :1], wh[:, 1:]
    bb = boxes[idx].double()
    x0 = torch.minimum(torch.round(bb[..., 0] * sx), w - 1)
    y0 = torch.minimum(torch.round(bb[..., 1] * sy), h - 1)
    x1 = torch.maximum(torch.round(bb[..., 2] * sx), x0 + 1)
    y1 = torch.maximum(torch.round(bb[..., 3] * sy), y0 + 1)
    out[idx] = torch.stack([x0, y0, x1, y1], -1).long()
    return out
