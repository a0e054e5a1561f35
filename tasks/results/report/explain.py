"""What decided ABS's prediction for a gallery image: the crops and descriptions that add most to
its logit of the predicted class.

Why rescored: per-crop matching scores are not stored, so the gallery's few images (only these)
are scored again with the run's own models, text bank and stored DINO top-K, and checked against
the stored crops and prediction. The run's models load only here, and only when the report is
asked to explain (the default); when they cannot be loaded the report says why in one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tasks.store import Storage

from .reads import _run_record

#: Crops named, and drawn bold and numbered, per gallery image when the run's models load: those adding
#: most to ABS's logit of its predicted class (see explain_gallery).
DECIDING_CROPS = 3
#: Descriptions of the predicted class named per gallery image (the ones adding most to that logit).
DECIDING_DESCRIPTIONS = 3


def soft_match_terms(crop_features, text_features, text_mask, tau: float):
    """``[n, C, M]`` float64: the terms of ABS's soft matching of one image's ``n`` crops.

    Term (n, c, m) = P[n, c, m] * s[n, c, m], with s = v_n . t_cm / tau and P[n] the softmax
    of s[n] over every (class, description) pair together (``abs_model.matching.soft_match``;
    masked pairs are out of the softmax and zero here). Summed over crops and descriptions it
    is class c's ABS logit, so summed over descriptions it is what each crop adds to a class's
    logit, and summed over crops what each description adds.
    """
    import torch

    v = crop_features.detach().to("cpu", torch.float64)
    t = text_features.detach().to("cpu", torch.float64)
    n, d = v.shape
    c, m, _ = t.shape
    s = (v @ t.reshape(c * m, d).T) / tau  # [n, C*M]
    valid = None if text_mask is None else text_mask.detach().to("cpu", torch.bool).reshape(1, c * m)
    w = torch.softmax(s if valid is None else s.masked_fill(~valid, float("-inf")), dim=1).mul_(s)  # P * s
    if valid is not None:
        w.masked_fill_(~valid, 0.0)
    return w.view(n, c, m)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text if len(text) <= limit else text[: limit - 1] + '…'}"


def load_run_context(st: Storage, run: Mapping[str, Any]) -> tuple[Any | None, str | None]:
    """The run's evaluation context (its models, text bank and descriptions, as
    :func:`tasks.run.context.resolve` builds them for the flow, and reuses in the flow's process),
    or ``(None, why not)``: no evaluation spec in the run record, models that cannot be loaded
    (no weights here, no such device), or inputs that changed since the run (another config hash)."""
    rec = _run_record(st, run["run_id"])
    cfg = rec.get("config_json") or run.get("config_json") or {}
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            cfg = {}
    spec = cfg.get("spec") if isinstance(cfg, Mapping) else None
    variant = cfg.get("variant") if isinstance(cfg, Mapping) else None
    if isinstance(variant, Mapping) and not variant.get("equals_fresh_run", True):
        return None, _variant_note(variant, _mapping(cfg.get("numbers")))
    if not spec:
        return None, "the run record holds no evaluation spec (`config_json.spec`), so the run's models are unknown"
    try:
        from tasks.run.context import resolve

        ctx = resolve(st.root, spec)
    except Exception as exc:  # noqa: BLE001 - whatever stops the models loading, the report goes on without them
        return None, f"the run's models could not be loaded ({_one_line(exc)})"
    if run.get("config") and ctx.config_hash != run["config"]:
        return None, (
            f"the run's inputs changed since it ran (config {ctx.config_hash} now, {run['config']} in the "
            "run: weights, descriptions or dataset differ), so its crops cannot be rescored faithfully"
        )
    return ctx, None


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (record fields written by older versions may be absent)."""
    return value if isinstance(value, Mapping) else {}


def _variant_note(variant: Mapping[str, Any], numbers: Mapping[str, Any]) -> str:
    """Why a variant that no fresh run equals (``abs-eval analyze``: an N' prefix, plain averaging) shows no
    deciding crops. Not "the inputs changed": the run's models are there, but rescoring with them scores what a
    fresh run with this setting would, which is not what this variant's rows hold."""
    of_run, name = variant.get("of_run", "?"), variant.get("name", "?")
    setting, marks = _mapping(variant.get("setting")), _mapping(numbers.get("variant"))
    why = []
    prefix_of = marks.get("crops_prefix_of")
    if prefix_of:
        n = setting.get("n_crops", "N'")
        why.append(
            f"it keeps the first {n} of the {prefix_of} crops of each branch, and rescoring with the models "
            f"would draw a fresh {n}-crop run's crops instead"
        )
    if (setting.get("matching") or marks.get("matching")) == "average":
        why.append(
            "it averages the descriptions plainly (no soft matching), and the deciding crops are computed for "
            "soft matching only"
        )
    return (
        f"this run is the variant `{name}` of run `{of_run}`, scored from that run's stored crop features; "
        + "; ".join(why or ["no fresh run scores it this way"])
    )


def _crop_text(kind: str, box: Sequence[int]) -> str:
    if kind == "raw":
        x0, y0, x1, y1 = (int(v) for v in box)
        return f"raw crop box x {x0}-{x1}, y {y0}-{y1} px"
    r0, r1, c0, c1 = (int(v) for v in box)
    return f"feature window rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1} of CLIP's token grid"


def explain_image(
    ctx,
    row: Mapping[str, Any],
    data: bytes,
    *,
    n_crops: int = DECIDING_CROPS,
    n_descriptions: int = DECIDING_DESCRIPTIONS,
) -> tuple[dict[str, Any] | None, str | None]:
    """Which crops and descriptions decided ABS's prediction for one gallery row: ``(explanation, None)``,
    or ``(None, why not)``.

    Recomputes the image's crop features with the run's classifier from the stored DINO top-K
    (the crops are drawn from a generator seeded by the image id, so they are the stored ones;
    checked, as is the predicted class), then splits ABS's logit of the predicted class into
    :func:`soft_match_terms`. The explanation: ``pred``/``class_name`` (the predicted class),
    ``logit`` (its ABS logit), ``runner_up``/``runner_up_logit`` (the best other class),
    ``score_true`` (the true class's logit, as recomputed), ``crops`` (the ``n_crops`` crops
    adding most to ``logit``, in rank order: ``kind`` 'raw' or 'feature', ``index`` among the
    stored boxes or windows, ``box``, ``score`` = what the crop adds), ``descriptions``
    (the ``n_descriptions`` descriptions of the predicted class adding most to ``logit``,
    summed over all crops: ``text``, ``index``, ``score``) and ``crop_scores`` (what every
    crop adds, raw crops first, then feature windows; they sum to ``logit``).
    """
    import torch

    from tasks.store.images import decode

    clf = ctx.classifier
    cfg = clf.config
    idx = torch.tensor([list(row.get("dino_topk_indices") or [])], dtype=torch.long)
    vals = torch.tensor([list(row.get("dino_topk_values") or [])], dtype=torch.float32)
    if idx.shape[1] < cfg.top_k:
        return None, f"the row stores {idx.shape[1]} DINO top-K cells, the run's config needs {cfg.top_k}"
    try:
        img = clf.prepare_image(decode(data))
        res = clf.predict([img], [row["image_id"]], dino_topk=(idx, vals), return_features=True)
    except Exception as exc:  # noqa: BLE001 - one image that cannot be rescored does not stop the report
        return None, f"rescoring failed ({_one_line(exc)})"
    geo = res.geometry[0]
    raw, wins = geo.raw_boxes.tolist(), geo.feature_windows.tolist()
    if (row.get("raw_boxes") is not None and [list(b) for b in row["raw_boxes"]] != raw) or (
        row.get("feature_windows") is not None and [list(w) for w in row["feature_windows"]] != wins
    ):
        return None, "the recomputed crops differ from the stored ones (not the run's models or config?)"
    n_raw = cfg.n_crops if cfg.raw_crops else 0
    m = cfg.n_descriptions
    bank = ctx.text
    terms = soft_match_terms(res.extras["crop_features"][0], bank.descriptions[:, :m], bank.mask[:, :m], cfg.tau)
    subset = list(bank.subset) if bank.subset is not None else None
    cols = res.logits["abs"][0].double()  # the classifier's own logits, in the dataset's label space
    pred = int(cols.argmax())
    if row.get("pred_a") is not None and pred != int(row["pred_a"]):
        return (
            None,
            f"rescoring predicts label {pred}, the stored row {row['pred_a']} (not the run's models or config?)",
        )
    names = list(ctx.info.classnames)
    other = cols.clone()
    other[pred] = float("-inf")
    runner = int(other.argmax()) if len(cols) > 1 else None
    tc = subset[pred] if subset is not None else pred  # the predicted class's row of the text bank
    per_crop = terms[:, tc, :].sum(dim=1)
    per_desc = terms[:, tc, :].sum(dim=0)
    crops: list[dict[str, Any]] = []
    for i in sorted(range(len(per_crop)), key=lambda j: (-float(per_crop[j]), j))[:n_crops]:
        kind, k = ("raw", i) if i < n_raw else ("feature", i - n_raw)
        box = (raw if kind == "raw" else wins)[k]
        crops.append(
            {
                "rank": len(crops) + 1,
                "kind": kind,
                "index": k,
                "box": [int(v) for v in box],
                "score": float(per_crop[i]),
            }
        )
    texts = [d for d in ctx.descriptions.texts[tc] if d and d.strip()][:m]  # the bank's rows (TextBank.build)
    valid = bank.mask[tc, :m].tolist()
    order = sorted(
        (j for j in range(len(per_desc)) if valid[j] and j < len(texts)), key=lambda j: (-float(per_desc[j]), j)
    )
    descriptions = [{"index": j, "text": texts[j], "score": float(per_desc[j])} for j in order[:n_descriptions]]
    label = row.get("label")
    true_score = float(cols[int(label)]) if label is not None and 0 <= int(label) < len(cols) else None
    return {
        "pred": pred,
        "class_name": names[pred] if pred < len(names) else str(pred),
        "logit": float(cols[pred]),
        "runner_up": None if runner is None else (names[runner] if runner < len(names) else str(runner)),
        "runner_up_logit": None if runner is None else float(cols[runner]),
        "score_true": true_score,
        "n_crops": int(terms.shape[0]),
        "crops": crops,
        "descriptions": descriptions,
        "crop_scores": [float(x) for x in per_crop],  # every crop's, raw crops first (they sum to ``logit``)
    }, None


def explain_gallery(
    st: Storage, run: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], images: Mapping[str, bytes]
) -> tuple[dict[str, dict[str, Any]], dict[str, str], str | None]:
    """:func:`explain_image` for every gallery row whose ``method_a`` is ``abs`` and whose image bytes
    were found: ``(explanations by image id, why not by image id, why none at all or None)``.
    Loads the run's models once (:func:`load_run_context`); only these few images are rescored."""
    todo = [r for r in rows if r.get("method_a") == "abs" and r["image_id"] in images]
    if not todo:
        return {}, {}, None
    ctx, why = load_run_context(st, run)
    if ctx is None:
        return {}, {}, why
    done: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    for r in todo:
        e, note = explain_image(ctx, r, images[r["image_id"]])
        if e is not None:
            done[r["image_id"]] = e
        else:
            notes[r["image_id"]] = note or "not rescored"
    return done, notes, None
