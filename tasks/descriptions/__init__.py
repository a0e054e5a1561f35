"""Class descriptions for ABS: import published files, validate, generate, store.

- ``formats``: importers by format name (``cupl``, ``nested``, ``attributes``,
  ``templates``, ``auto``) -> ``RawDescriptions``.
- ``validate``: match against a class list -> ``DescriptionSet`` (label order,
  at most M per class, a report of what was dropped, short or shared).
- ``generate``: ask an OpenAI-compatible chat endpoint, resumable per class.
- ``store``: Parquet under ``<root>/descriptions/name=<name>/`` with a content hash.
The evaluation's descriptions step (and its Prefect task) is ``tasks/steps/describe.py``,
so these plain functions do not pull Prefect in.
"""

from .formats import (
    FORMATS,
    DescriptionError,
    RawDescriptions,
    attribute_sentence,
    detect_format,
    load_description_file,
    parse_descriptions,
    register_format,
)
from .generate import (
    GenerationError,
    GenerationSettings,
    RetryPolicy,
    generate_descriptions,
    run_generation,
)
from .store import (
    DescriptionManifest,
    content_hash,
    read_descriptions,
    write_descriptions,
)
from .validate import (
    DEFAULT_M,
    DescriptionSet,
    MissingClassesError,
    import_descriptions,
    validate_descriptions,
)

__all__ = [
    "DEFAULT_M",
    "FORMATS",
    "DescriptionError",
    "DescriptionManifest",
    "DescriptionSet",
    "GenerationError",
    "GenerationSettings",
    "MissingClassesError",
    "RawDescriptions",
    "RetryPolicy",
    "attribute_sentence",
    "content_hash",
    "detect_format",
    "generate_descriptions",
    "import_descriptions",
    "load_description_file",
    "parse_descriptions",
    "read_descriptions",
    "register_format",
    "run_generation",
    "validate_descriptions",
    "write_descriptions",
]
