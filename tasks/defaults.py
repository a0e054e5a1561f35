"""Every default of the pipeline, named once.

Why one module: a default written in the CLI, the flow, the deployments and a
task drifts the day one of them changes. The method's own numbers (alpha, beta,
K, N, M, temperatures, the prompt, the method list) are the paper's and live
with the method in ``abs_model``; they are re-exported here so the pipeline reads
every default from this one place.
"""

from __future__ import annotations

import os

from abs_model import DEFAULT_PROMPT, METHODS, ABSConfig

#: Storage root when none is given (env ``ABS_EVAL_ROOT``).
ROOT = os.environ.get("ABS_EVAL_ROOT", "abs-output")
#: Where ``abs-eval demo`` writes.
DEMO_ROOT = "abs-output/demo"
#: Images per Parquet shard: the unit of resume and of distribution.
IMAGES_PER_SHARD = 1000
#: Files larger than this are not stored (an error row says so); raise it for huge TIFFs.
MAX_FILE_BYTES = 128 * 2**20
#: Images per model batch when not given: CPU, CUDA.
IMAGES_PER_BATCH_CPU = 4
IMAGES_PER_BATCH_CUDA = 64
#: Images per DINO batch in the attention cache.
DINO_BATCH = 32
#: Dataset layout of a source when none is given (a folder per class).
LAYOUT = "folder"
#: Description file format when none is given (detected from the file).
DESCRIPTIONS_FORMAT = "auto"
#: Device and precision when none is given: a GPU when there is one; bf16 on CUDA, fp32 on a CPU.
DEVICE, PRECISION = "auto", "auto"
#: Where shard tasks run, and how many at once (``flows.runners.RUNNERS``).
RUNNER, WORKERS = "threads", 1
#: What runs are compared by when no Prefect deployment started them.
DEPLOYMENT = "manual"
#: Gallery images per kind in a run's report.
GALLERY_SIZE = 4
#: Sampling temperature of the LLM writing descriptions (CuPL's setting).
LLM_TEMPERATURE = 0.99

#: The method's defaults (ABS paper, ICML 2025).
ABS = ABSConfig()
#: M: descriptions per class.
N_DESCRIPTIONS = ABS.n_descriptions
#: The plain CLIP baseline's prompt.
PROMPT = DEFAULT_PROMPT
#: The CLIP-E baseline's templates: ``auto`` is the dataset's own (a WebDataset's
#: zeroshot_classification_templates.txt), else the CLIP paper's set its layout declares, else the
#: 80 OpenAI ImageNet ones; also a set's name or a template file (tasks.datasets.template_sets).
TEMPLATES = "auto"
#: Methods in the order tables and plots show them.
METHOD_ORDER = METHODS
#: ABS expects DINO's 14 x 14 patch grid (ViT-*/16 at 224 px).
DINO_GRID = 14

#: Models of a real run when none are given.
CLIP_MODEL, CLIP_PRETRAINED = "ViT-B-16", "openai"
DINO_MODEL, DINO_PRETRAINED = "vit_base_patch16_224.dino", "timm"
#: The shipped tiny random-weight models (demo, tests).
TINY_CLIP_MODEL, TINY_DINO_MODEL = "abs-tiny-vit-b16", "abs-tiny-dino-vit-b16"
#: The shipped micro random-weight models (rehearsals of whole-dataset runs on a CPU).
MICRO_CLIP_MODEL, MICRO_DINO_MODEL = "abs-micro-vit", "abs-micro-dino"
