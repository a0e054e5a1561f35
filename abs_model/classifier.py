"""ABS zero-shot classification, batched across images and crops.

One ``predict`` call runs, for a batch of images:
  1. DINO on the whole images (unless the caller brings cached top-K attention);
  2. per image, its own seeded draws of crop centres and sizes (``sampling``);
  3. the CLIP trunk on [global views + raw crops] of all images in large batches,
     then the last block + head on every row;
  4. the feature-space crops: windows of each image's global token grid resized
     back to the full grid (two batched matmuls per image), original CLS in front,
     then the last block + head, again in large batches;
  5. soft matching for ``abs`` and the cheap baselines from the same features:
     ``clip`` (one prompt), ``clip-e`` (80-template ensemble), ``cupl`` (mean of the
     description features).
It returns the logits of every method and the crop geometry it used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from .backbones import CLIPBackbone, DINOBackbone
from .config import ABSConfig, ModelSpec
from .device import autocast_context, resolve_device, resolve_precision
from .matching import cosine_logits, soft_match
from .preprocess import clip_views, dino_view, full_box, limit_size, to_tensor_image
from .resample import apply_separable, bicubic_matrix
from .sampling import draw_crops, feature_windows, image_generator, raw_boxes
from .text import TextBank

METHODS = ("abs", "clip", "clip-e", "cupl")


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
    ) -> "ABSClassifier":
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
        originals = [to_tensor_image(im) for im in images]
        work = [limit_size(x.to(self.device), cfg.max_image_side) for x in originals]
        if dino_topk is None:
            dino_topk = self.dino_topk(work)
        top_idx, top_val = dino_topk
        if top_idx.shape[1] < cfg.top_k:
            raise ValueError(f"cached DINO top-K holds {top_idx.shape[1]} cells, config needs K={cfg.top_k}")
        top_idx, top_val = top_idx[:, : cfg.top_k].cpu(), top_val[:, : cfg.top_k].cpu()

        D, G = self.dino.grid, self.clip.grid
        geoms: list[CropGeometry] = []
        for b, x in enumerate(originals):
            h, w = int(x.shape[1]), int(x.shape[2])
            g = image_generator(cfg.seed, image_ids[b])
            dr = draw_crops(top_idx[b], top_val[b], w, h, G, cfg, g)
            geoms.append(
                CropGeometry(
                    image_id=image_ids[b], width=w, height=h, dino_grid=D, clip_grid=G,
                    dino_topk_indices=top_idx[b], dino_topk_values=top_val[b],
                    raw_cells=dr.raw_cells, raw_boxes=raw_boxes(dr.raw_cells, dr.raw_widths, dr.raw_heights, w, h, D),
                    feature_cells=dr.feature_cells, feature_windows=feature_windows(dr.feature_cells, dr.feature_sides, G, D),
                )
            )

        # 3. global views first, then every raw crop of every image: one big batch.
        cn = self.clip.norm
        n_raw = cfg.n_crops if cfg.raw_crops else 0
        views = [clip_views(x, full_box(x), cn.size, cn.mean, cn.std) for x in work]
        if n_raw:
            for x, geo in zip(work, geoms):
                views.append(clip_views(x, _to_working(geo.raw_boxes, geo, x), cn.size, cn.mean, cn.std))
        fdt = self.clip.feature_dtype
        wdtype = next(self.clip.parameters()).dtype
        views_t = torch.cat(views).to(wdtype)
        B = len(work)
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

        # 4. feature-space crops from each image's global token grid.
        if cfg.feature_crops:
            toks = torch.cat(global_tokens)
            crop_tokens = []
            for b, geo in enumerate(geoms):
                win = geo.feature_windows.to(self.device)
                grid = toks[b, 1:].T.reshape(-1, G, G)  # [width, G, G]
                ry = bicubic_matrix(win[:, 0], win[:, 1] - win[:, 0], G, G)
                rx = bicubic_matrix(win[:, 2], win[:, 3] - win[:, 2], G, G)
                res = apply_separable(grid, ry, rx).flatten(2).transpose(1, 2)  # [N, G*G, width]
                cls_tok = toks[b, :1].unsqueeze(0).expand(res.shape[0], -1, -1)
                crop_tokens.append(torch.cat([cls_tok, res], dim=1))
            ct = torch.cat(crop_tokens)
            with self._autocast():
                femb = self._rows(lambda t: self._head(t.to(wdtype)).to(fdt), ct)
            parts.append(torch.nn.functional.normalize(femb, dim=-1).view(B, cfg.n_crops, -1))
        crops = torch.cat(parts, dim=1)

        # 5. matching and baselines.
        logits = {"abs": soft_match(crops, self._text_dev["desc"], self._text_dev["mask"], cfg.tau)}
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
    attention are identical.
    """
    device = torch.device(device)
    xs = [limit_size(to_tensor_image(im).to(device), max_image_side) for im in images]
    n = dino.norm
    views = torch.stack([dino_view(x, n.size, n.mean, n.std) for x in xs]).to(next(dino.parameters()).dtype)
    out = []
    with autocast_context(device, autocast_dtype):
        for s in range(0, views.shape[0], batch_size):
            out.append(dino.cls_attention(views[s : s + batch_size]).float())
    return torch.cat(out).cpu()


def _to_working(boxes: Tensor, geo: CropGeometry, x: Tensor) -> Tensor:
    """Map original-pixel boxes onto the (possibly downscaled) working image."""
    h, w = int(x.shape[1]), int(x.shape[2])
    if (h, w) == (geo.height, geo.width):
        return boxes
    sx, sy = w / geo.width, h / geo.height
    b = boxes.double()
    x0 = torch.clamp(torch.round(b[:, 0] * sx), max=w - 1)
    y0 = torch.clamp(torch.round(b[:, 1] * sy), max=h - 1)
    x1 = torch.maximum(torch.round(b[:, 2] * sx), x0 + 1)
    y1 = torch.maximum(torch.round(b[:, 3] * sy), y0 + 1)
    return torch.stack([x0, y0, x1, y1], 1).long()
