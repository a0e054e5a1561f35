"""What one evaluation is: dataset x models x method config x descriptions.

Why a dataclass with a hash: the hash names the prediction partition
(``config=<hash>``) and decides what a rerun may reuse. It covers everything that
changes a number -- method parameters, model names and weight digests, DINO
preprocessing, the description content, the prompt, the ``clip-e`` template set (its
name, the sha256 of its templates and their count), the class list,
the dataset's shard fingerprint, and ``ALGORITHM_VERSION`` -- and nothing that
does not change the method (device, batch sizes, worker counts), so a resumed run
on another machine reuses what was committed. (Batch sizes and devices can move
model outputs in the last float bits; the crops and the method do not change.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from abs_model import ABSConfig, ModelSpec
from tasks import defaults
from tasks.defaults import PROMPT as DEFAULT_PROMPT
from tasks.defaults import TEMPLATES

if TYPE_CHECKING:
    from tasks.datasets.template_sets import TemplateSet

#: Bump when the computation changes in a way the other fields do not capture.
ALGORITHM_VERSION = 1


class EvaluationError(RuntimeError):
    """A problem with the job itself (not one image): fail fast with what to do."""


def short_hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class EvalSpec:
    """One (dataset, CLIP model, config) evaluation, as the flows pass it around."""

    dataset: str
    clip: ModelSpec
    dino: ModelSpec
    descriptions: str  # name of a stored description set (tasks.descriptions.store)
    abs: ABSConfig = field(default_factory=ABSConfig)
    prompt: str = DEFAULT_PROMPT
    templates: str = TEMPLATES  # auto, a set's name or a template file (tasks.datasets.template_sets)
    # execution settings: never part of the hash
    device: str = defaults.DEVICE
    precision: str = defaults.PRECISION
    images_per_batch: int | None = None
    keep_features: bool = False
    compile: bool = False  # torch.compile the CLIP trunk/head (long runs)

    @property
    def model_name(self) -> str:
        """The CLIP model as it appears in partitions and reports (``ViT-B-16/openai``)."""
        return self.clip.name if self.clip.is_random else f"{self.clip.name}/{_tag(self.clip.pretrained)}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSpec:
        d = dict(d)
        d["clip"] = ModelSpec(**d["clip"])
        d["dino"] = ModelSpec(**d["dino"])
        d["abs"] = ABSConfig.from_dict(d["abs"])
        return cls(**d)

    def template_set(self, dataset: Mapping[str, Any] | None = None) -> TemplateSet:
        """The ``clip-e`` template set ``templates`` means for a dataset (``dataset.json``, i.e.
        ``DatasetInfo.raw``, or ``DatasetSource.describe()``): for ``auto`` its own templates, else its
        layout's set, else ``imagenet1k``. Raises ``TemplateError`` (a ``ValueError``) saying what to fix."""
        from tasks.datasets.template_sets import resolve_template_set  # lazily: loads the layouts

        return resolve_template_set(self.templates, dataset)

    def prediction_settings_key(
        self,
        *,
        clip_digest: str,
        dino_digest: str,
        descriptions_hash: str,
        dataset_fingerprint: str,
        text_classnames: list[str],
        subset: list[int] | None,
        templates: TemplateSet,
    ) -> dict[str, Any]:
        """Every setting that decides the predictions (what ``config_hash`` hashes).

        ``templates``: the resolved ``clip-e`` set (:meth:`template_set`); its record (name, sha256,
        count) is what is kept, so a run says which templates it used and another set is another config.

        Run records store it as ``config_json["numbers"]``: that on-disk key keeps its old name, so
        roots written before the rename still compare (``tasks.results.runs.setting_differences``,
        the ``regressions`` view's ``settings_differ``)."""
        return {
            "algorithm_version": ALGORITHM_VERSION,
            "abs": self.abs.to_dict(),
            "clip": {"name": self.clip.name, "pretrained": _tag(self.clip.pretrained), "digest": clip_digest},
            "dino": {"name": self.dino.name, "pretrained": _tag(self.dino.pretrained), "digest": dino_digest},
            "descriptions_hash": descriptions_hash,
            "prompt": self.prompt,
            "templates": templates.record(),
            "dataset_fingerprint": dataset_fingerprint,
            "classes": short_hash(text_classnames),
            "subset": subset,
        }


def _tag(pretrained: str | None) -> str:
    """Weights tag for names and hashes: the pretrained tag, a checkpoint's file name, or 'random'."""
    if pretrained in (None, "", "random"):
        return "random"
    return pretrained.rsplit("/", 1)[-1]
