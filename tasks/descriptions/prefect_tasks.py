"""Prefect tasks around the plain description functions.

Why thin wrappers: the work lives in plain functions (testable without a Prefect
server); the tasks add retries for storage/network hiccups and return a small
JSON-able manifest (paths, hash, counts), never the sentences themselves, as
every task in this pipeline does. Caching is off: the functions are already
idempotent through the storage root (committed sets and per-class progress), and
their inputs (class lists, storage roots) are not worth hashing twice.
"""

from __future__ import annotations

from typing import Any, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.storage import Storage

from .generate import DEFAULT_QUESTIONS, DEFAULT_SYSTEM_PROMPT, generate_descriptions
from .store import write_descriptions
from .validate import DEFAULT_M, import_descriptions


@task(name="import-descriptions", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def import_descriptions_task(
    path: str,
    classnames: Sequence[str],
    root: str | Storage,
    name: str,
    *,
    format: str = "auto",
    dataset_key: str | None = None,
    m: int = DEFAULT_M,
    attribute_style: str = "natural",
) -> dict[str, Any]:
    """Import a description file, validate it against ``classnames``, store it as ``name``."""
    ds = import_descriptions(
        path, classnames, format=format, dataset_key=dataset_key, m=m, attribute_style=attribute_style
    )
    return write_descriptions(ds, root, name).to_dict()


@task(name="generate-descriptions", retries=2, retry_delay_seconds=60, cache_policy=NO_CACHE)
def generate_descriptions_task(
    classnames: Sequence[str],
    root: str | Storage,
    name: str,
    *,
    base_url: str,
    model: str,
    api_key_env: str | None = "OPENAI_API_KEY",
    m: int = DEFAULT_M,
    temperature: float = 0.99,
    seed: int = 0,
    n: int = 10,
    max_tokens: int = 60,
    questions: Sequence[str] = DEFAULT_QUESTIONS,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_requests_per_class: int = 40,
    workers: int = 1,
) -> dict[str, Any]:
    """Generate descriptions (resuming earlier progress) and return the stored set's manifest.

    A Prefect retry resumes class by class: classes finished before the failure
    are not asked again.
    """
    ds = generate_descriptions(
        classnames,
        root,
        name,
        base_url=base_url,
        model=model,
        api_key_env=api_key_env,
        m=m,
        temperature=temperature,
        seed=seed,
        n=n,
        max_tokens=max_tokens,
        questions=questions,
        system_prompt=system_prompt,
        max_requests_per_class=max_requests_per_class,
        workers=workers,
    )
    # Already committed by generate_descriptions: this only reads the marker back.
    return write_descriptions(ds, root, name).to_dict()
