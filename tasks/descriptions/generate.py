"""Generate CuPL-style class descriptions from an OpenAI-compatible chat endpoint.

Why this shape:

- **Any OpenAI-compatible server** (OpenAI, vLLM, llama.cpp, Ollama, ...): one
  ``POST {base_url}/chat/completions`` with ``model``, ``messages``,
  ``temperature``, ``max_tokens``, ``n`` and ``seed``, read with httpx. The API
  key comes from an environment variable whose *name* is a parameter; the key
  itself is never printed, logged, stored or put in an error message.
- **Deterministic request sequence.** For a class, request ``k`` (0, 1, 2, ...)
  asks question ``questions[k % len(questions)]`` with ``seed + k``. So what is
  asked depends only on the recorded settings, and a resumed run continues the
  same sequence. (Whether the server honours ``seed`` is up to the server; the
  settings are recorded either way.)
- **Resumable class by class.** After every answered request the class's
  progress (texts so far, next request number, status) is written atomically to
  ``descriptions/name=<name>/_generation/settings=<fp>/class=<id>.json``. A class
  whose status is ``complete`` (M distinct texts) or ``exhausted`` (the request
  bound was reached) is not asked again; a ``partial`` one continues where it
  stopped. ``<fp>`` fingerprints everything that changes the answers (endpoint,
  model, temperature, seed, n, max_tokens, questions, system prompt), so progress
  made with other settings is never mixed in. ``m`` and the request bound are not
  in it: they only decide where the same sequence stops, so raising ``m`` later
  continues the existing progress.
- **Failures.** 429, 5xx, timeouts and connection errors are retried with
  exponential backoff (``Retry-After`` honoured, capped); ``sleep`` is injectable
  so tests do not wait. A reply that is not the chat-completions JSON is recorded
  in the progress file and retried; after ``max_malformed`` of them for one class
  it becomes a ``GenerationError`` that quotes the reply. Other 4xx fail at once.

Texts: each choice's message content is one description, whitespace collapsed,
surrounding quotes and list markers removed. Distinct means different after
casefolding, collapsing whitespace and dropping a final period.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from tasks import defaults
from tasks.store import Storage, as_storage
from tasks.store.paths import generation_dir

from .formats import DescriptionError, RawDescriptions, readable
from .store import check_name, write_descriptions
from .validate import DEFAULT_M, DescriptionSet, validate_descriptions

log = logging.getLogger(__name__)

# CuPL's ImageNet questions (Pratt et al. 2023), phrased for a chat model.
DEFAULT_QUESTIONS: tuple[str, ...] = (
    "Describe what a {} looks like.",
    "How can you identify a {}?",
    "What does a {} look like?",
    "Describe an image from the internet of a {}.",
    "A caption of an image of a {}:",
)
DEFAULT_SYSTEM_PROMPT = (
    "You write short visual descriptions used to recognise things in photos. "
    "Answer with one or two plain sentences, no lists, no preamble."
)


class GenerationError(DescriptionError):
    """Generation cannot go on (endpoint refuses, keeps failing, or answers garbage)."""


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides what the endpoint is asked; recorded with the output.

    The API key is deliberately not a field: only the *name* of its environment
    variable is kept by the caller, and it is not recorded either (it does not
    change the answers).
    """

    base_url: str
    model: str
    temperature: float = defaults.LLM_TEMPERATURE
    seed: int = 0
    n: int = 10
    max_tokens: int = 60
    questions: tuple[str, ...] = DEFAULT_QUESTIONS
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    m: int = DEFAULT_M
    max_requests_per_class: int = 40

    def __post_init__(self) -> None:
        if not self.questions or any("{}" not in q for q in self.questions):
            raise DescriptionError("every question needs a '{}' placeholder for the class name")
        if self.m < 1 or self.n < 1 or self.max_requests_per_class < 1:
            raise DescriptionError("m, n and max_requests_per_class must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["questions"] = list(self.questions)
        d["base_url"] = self.base_url.rstrip("/")
        return d

    def fingerprint(self) -> str:
        """Hash of the settings that change the answers (not ``m`` nor the request bound)."""
        d = self.to_dict()
        d.pop("m")
        d.pop("max_requests_per_class")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def request(self, classname: str, k: int) -> dict[str, Any]:
        """Body of request ``k`` for ``classname`` (question ``k mod Q``, seed ``seed + k``)."""
        q = self.questions[k % len(self.questions)].replace("{}", readable(classname))
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": q}
        ]
        return {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "n": self.n,
            "seed": self.seed + k,
        }


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried. ``sleep`` is injectable so tests run fast."""

    max_retries: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 60.0
    max_malformed: int = 3
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        d = self.backoff_s * (2**attempt)
        if retry_after is not None:
            d = max(d, retry_after)
        return min(d, self.max_backoff_s)


@dataclass
class ClassProgress:
    """Per-class state, stored as JSON after every answered request."""

    class_name: str
    texts: list[str] = field(default_factory=list)
    origins: list[list[int]] = field(default_factory=list)  # [request k, choice index] per text
    requests: int = 0  # next request number k
    malformed: int = 0
    last_malformed: str = ""
    status: str = "partial"  # partial | complete | exhausted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassProgress:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class GenerationStats:
    """What one run did (for logs and tests; not part of the stored content)."""

    requests: int = 0
    retries: int = 0
    malformed: int = 0
    classes_resumed_done: int = 0
    classes_asked: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Thread-safe increments (classes may run on several workers)."""
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)


@dataclass(frozen=True)
class GenerationResult:
    descriptions: DescriptionSet
    stats: GenerationStats
    settings: GenerationSettings
    progress_dir: str


# ------------------------------------------------------------------ text handling
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")


def clean_reply(text: str) -> str:
    """One description from one choice: whitespace collapsed, quotes and list markers off."""
    t = " ".join(text.split())
    t = _LIST_MARKER.sub("", t)
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'\u201c\u201d":
        t = t[1:-1].strip()
    if len(t) >= 2 and t[0] in '\u201c"' and t[-1] in '\u201d"':
        t = t[1:-1].strip()
    return t


def dedupe_key(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".")


def parse_reply(body: bytes) -> list[str]:
    """Message contents of a chat-completions reply; ``ValueError`` if it is not one."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON ({e.msg if hasattr(e, 'msg') else e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list) or not doc["choices"]:
        raise ValueError("no 'choices' list")
    out: list[str] = []
    for ch in doc["choices"]:
        msg = ch.get("message") if isinstance(ch, dict) else None
        content = msg.get("content") if isinstance(msg, dict) else None
        if content is None:
            continue  # e.g. a refusal or a tool call: nothing to use, not broken
        if not isinstance(content, str):
            raise ValueError("a choice's message.content is not a string")
        out.append(content)
    if not out:
        raise ValueError("no choice has message.content")
    return out


# ------------------------------------------------------------------ the client
class ChatClient:
    """Minimal chat-completions client: one POST, retried on transient failures."""

    def __init__(self, base_url: str, api_key: str | None, retry: RetryPolicy, client: httpx.Client | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._key = api_key
        self.retry = retry
        self._own = client is None
        self.http = client or httpx.Client(timeout=retry.timeout_s)

    def close(self) -> None:
        if self._own:
            self.http.close()

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def post(self, body: dict[str, Any], what: str, stats: GenerationStats) -> httpx.Response:
        """POST ``body``; returns the 200 response or raises ``GenerationError``."""
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(self.retry.max_retries + 1):
            retry_after: float | None = None
            try:
                r = self.http.post(self.url, json=body, headers=headers, timeout=self.retry.timeout_s)
            except httpx.TransportError as e:  # timeouts, refused/reset connections, protocol errors
                last = f"{type(e).__name__}: {self.redact(str(e))}"
            else:
                if r.status_code == 200:
                    return r
                snippet = self.redact(r.text[:300])
                if r.status_code == 429 or 500 <= r.status_code < 600:
                    last = f"HTTP {r.status_code}: {snippet}"
                    try:
                        retry_after = float(r.headers.get("retry-after", ""))
                    except ValueError:
                        retry_after = None
                else:
                    hint = ""
                    if r.status_code in (401, 403):
                        hint = " (check the API key in the environment variable you named)"
                    elif r.status_code == 404:
                        hint = f" (is {self.url} an OpenAI-compatible endpoint, and the model name right?)"
                    raise GenerationError(f"{what}: endpoint answered HTTP {r.status_code}{hint}: {snippet}")
            if attempt == self.retry.max_retries:
                break
            stats.add(retries=1)
            delay = self.retry.delay(attempt, retry_after)
            log.warning("%s: %s; retry %d/%d in %.1fs", what, last, attempt + 1, self.retry.max_retries, delay)
            self.retry.sleep(delay)
        raise GenerationError(f"{what}: gave up after {self.retry.max_retries + 1} tries; last failure: {last}")


# ------------------------------------------------------------------ progress files
def progress_dir(name: str, settings: GenerationSettings) -> str:
    return generation_dir(check_name(name), settings.fingerprint())


def _class_file(pdir: str, classname: str) -> str:
    cid = hashlib.sha256(classname.encode("utf-8")).hexdigest()[:16]
    return posixpath.join(pdir, f"class={cid}.json")


def _load_progress(storage: Storage, path: str, classname: str) -> ClassProgress:
    if not storage.exists(path):
        return ClassProgress(classname)
    p = ClassProgress.from_dict(storage.read_json(path))
    if p.class_name != classname:  # a hash collision would be astonishing, but never mix classes
        raise GenerationError(f"progress file {path} belongs to {p.class_name!r}, not {classname!r}")
    return p


def _update_status(p: ClassProgress, s: GenerationSettings) -> None:
    if len(p.texts) >= s.m:
        p.status = "complete"
    elif p.requests >= s.max_requests_per_class:
        p.status = "exhausted"
    else:
        p.status = "partial"


def _generate_class(
    classname: str,
    storage: Storage,
    pdir: str,
    s: GenerationSettings,
    chat: ChatClient,
    stats: GenerationStats,
) -> ClassProgress:
    path = _class_file(pdir, classname)
    p = _load_progress(storage, path, classname)
    _update_status(p, s)  # m or the bound may differ from the run that wrote it
    if p.status != "partial":
        stats.add(classes_resumed_done=1)
        return p
    stats.add(classes_asked=1)
    seen = {dedupe_key(t) for t in p.texts}
    what = f"class {classname!r}"
    bad = 0  # malformed replies in a row, this run
    while p.status == "partial":
        body = s.request(classname, p.requests)
        r = chat.post(body, what, stats)
        stats.add(requests=1)
        try:
            contents = parse_reply(r.content)
        except ValueError as e:
            stats.add(malformed=1)
            bad += 1
            p.malformed += 1
            p.last_malformed = f"{e}; reply began: {chat.redact(r.text[:200])!r}"
            storage.write_json(path, p.to_dict())
            if bad >= chat.retry.max_malformed:
                raise GenerationError(
                    f"{what}: the endpoint sent {bad} malformed chat-completions replies in a row "
                    f"(last: {p.last_malformed}); is {chat.url} OpenAI-compatible?"
                ) from e
            log.warning("%s: malformed reply (%s); asking again", what, e)
            chat.retry.sleep(chat.retry.delay(bad - 1))
            continue  # same request number: the sequence stays deterministic
        bad = 0
        for j, c in enumerate(contents):
            t = clean_reply(c)
            key = dedupe_key(t)
            # Every distinct text is kept, even beyond m: the stored progress is
            # then the same whatever m was, and the set takes the first m.
            if t and key not in seen:
                seen.add(key)
                p.texts.append(t)
                p.origins.append([p.requests, j])
        p.requests += 1
        _update_status(p, s)
        storage.write_json(path, p.to_dict())
    if p.status == "exhausted":
        log.warning("%s: only %d distinct descriptions after %d requests", what, len(p.texts), p.requests)
    else:
        log.info("%s: %d descriptions in %d requests", what, len(p.texts), p.requests)
    return p


def _api_key(api_key_env: str | None) -> str | None:
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise GenerationError(
            f"environment variable {api_key_env} is not set; export the API key there, "
            "or pass api_key_env=None for an endpoint without authentication"
        )
    return key


def run_generation(
    classnames: Sequence[str],
    root: str | Storage,
    name: str,
    settings: GenerationSettings,
    *,
    api_key_env: str | None = "OPENAI_API_KEY",
    retry: RetryPolicy | None = None,
    workers: int = 1,
    http_client: httpx.Client | None = None,
) -> GenerationResult:
    """Generate (or resume) descriptions for ``classnames`` and write the set as ``name``.

    Classes are asked once per distinct name (a class list that repeats a name
    asks for it once; validation then reports the shared labels). Returns the
    validated ``DescriptionSet`` together with the run's stats.
    """
    storage = as_storage(root)
    retry = retry or RetryPolicy()
    key = _api_key(api_key_env)
    pdir = progress_dir(name, settings)
    storage.write_json(
        posixpath.join(pdir, "settings.json"), {**settings.to_dict(), "fingerprint": settings.fingerprint()}
    )
    unique = list(dict.fromkeys(classnames))
    stats = GenerationStats()
    chat = ChatClient(settings.base_url, key, retry, http_client)
    results: dict[str, ClassProgress] = {}
    try:
        if workers <= 1:
            for c in unique:
                results[c] = _generate_class(c, storage, pdir, settings, chat, stats)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futs = {pool.submit(_generate_class, c, storage, pdir, settings, chat, stats): c for c in unique}
                done, pending = wait(futs, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                for f in done:
                    results[futs[f]] = f.result()  # re-raises the first failure
                for f in pending:
                    if not f.cancelled():
                        results[futs[f]] = f.result()
    finally:
        chat.close()
    entries = {c: results[c].texts[: settings.m] for c in unique}
    exhausted = [c for c in unique if results[c].status == "exhausted"]
    notes = [
        f"generated by {settings.model} at {settings.base_url.rstrip('/')} (settings {settings.fingerprint()[:16]})"
    ]
    if exhausted:
        notes.append(
            f"{len(exhausted)} class(es) stopped at the bound of {settings.max_requests_per_class} requests "
            f"before {settings.m} distinct descriptions: {exhausted[:10]}"
        )
    raw = RawDescriptions(entries, "generated", f"generated:{settings.model}", notes=tuple(notes))
    prov = {"kind": "generate", "settings": settings.to_dict(), "fingerprint": settings.fingerprint()}
    ds = validate_descriptions(raw, list(classnames), m=settings.m, provenance=prov)
    write_descriptions(ds, storage, name)
    log.info(
        "descriptions %r: %d requests (%d retries, %d malformed), %d classes asked, %d already done",
        name,
        stats.requests,
        stats.retries,
        stats.malformed,
        stats.classes_asked,
        stats.classes_resumed_done,
    )
    return GenerationResult(ds, stats, settings, pdir)


def generate_descriptions(
    classnames: Sequence[str],
    root: str | Storage,
    name: str,
    *,
    base_url: str,
    model: str,
    api_key_env: str | None = "OPENAI_API_KEY",
    m: int = DEFAULT_M,
    temperature: float = defaults.LLM_TEMPERATURE,
    seed: int = 0,
    n: int = 10,
    max_tokens: int = 60,
    questions: Sequence[str] = DEFAULT_QUESTIONS,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_requests_per_class: int = 40,
    max_retries: int = 6,
    backoff_s: float = 1.0,
    max_backoff_s: float = 60.0,
    timeout_s: float = 60.0,
    max_malformed: int = 3,
    workers: int = 1,
    sleep: Callable[[float], None] = time.sleep,
) -> DescriptionSet:
    """Ask ``model`` at ``base_url`` for up to ``m`` distinct descriptions per class; store and return them.

    The set is written as ``descriptions/name=<name>/descriptions=<hash16>.parquet``
    (see ``store``); progress is kept per class so an interrupted run resumes.
    """
    settings = GenerationSettings(
        base_url=base_url,
        model=model,
        temperature=temperature,
        seed=seed,
        n=n,
        max_tokens=max_tokens,
        questions=tuple(questions),
        system_prompt=system_prompt,
        m=m,
        max_requests_per_class=max_requests_per_class,
    )
    retry = RetryPolicy(
        max_retries=max_retries,
        backoff_s=backoff_s,
        max_backoff_s=max_backoff_s,
        timeout_s=timeout_s,
        max_malformed=max_malformed,
        sleep=sleep,
    )
    return run_generation(
        classnames, root, name, settings, api_key_env=api_key_env, retry=retry, workers=workers
    ).descriptions


__all__ = [
    "DEFAULT_QUESTIONS",
    "DEFAULT_SYSTEM_PROMPT",
    "ChatClient",
    "ClassProgress",
    "GenerationError",
    "GenerationResult",
    "GenerationSettings",
    "GenerationStats",
    "RetryPolicy",
    "clean_reply",
    "generate_descriptions",
    "parse_reply",
    "progress_dir",
    "run_generation",
]
