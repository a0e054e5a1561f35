"""The description generator against a real chat-completions server on 127.0.0.1.

The server is a ``ThreadingHTTPServer`` started per test on port 0. It speaks
the OpenAI chat-completions protocol and plays a script per class: success,
429 (with or without Retry-After), 500, 401, a slow answer (client timeout), a
malformed body, or the same answer again. It counts requests per class, so the
tests can prove that a resumed run does not ask again for finished classes.
No httpx mocks; sleeps between retries are injected so nothing waits.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tasks.descriptions import DescriptionError, GenerationError, generate_descriptions, read_descriptions
from tasks.descriptions.generate import (
    DEFAULT_QUESTIONS,
    GenerationSettings,
    RetryPolicy,
    clean_reply,
    parse_reply,
    progress_dir,
    run_generation,
)
from tasks.store import Storage

KEY_ENV = "ABS_TEST_LLM_KEY"
SECRET = "sk-test-SECRET-0123456789"


class FakeChat:
    """Scripted OpenAI-compatible endpoint. ``script[class]`` lists actions for its next requests."""

    def __init__(self, classnames: list[str]):
        self.classnames = sorted(classnames, key=len, reverse=True)  # longest first: "sea lion" before "lion"
        self.script: dict[str, list[Any]] = defaultdict(list)
        self.default: Any = "ok"
        self.requests: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.produced: Counter[str] = Counter()
        self.lock = threading.Lock()

    def class_of(self, body: dict[str, Any]) -> str:
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][0]
        return next((c for c in self.classnames if c in user), "?")

    def reply(self, cls: str, n: int) -> dict[str, Any]:
        choices = []
        for j in range(n):
            self.produced[cls] += 1
            text = f"  A {cls} seen in photo number {self.produced[cls]}.\n"
            choices.append({"index": j, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
        return {"id": "x", "object": "chat.completion", "model": "fake", "choices": choices}

    def handler(self):
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def send(self, code: int, payload: bytes, headers: dict[str, str] | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    return self.send(404, b'{"error": {"message": "not found"}}')
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                cls = fake.class_of(body)
                with fake.lock:
                    fake.requests[cls] += 1
                    fake.bodies.append(body)
                    fake.auth.append(self.headers.get("Authorization"))
                    action = fake.script[cls].pop(0) if fake.script[cls] else fake.default
                if action == "ok":
                    with fake.lock:
                        payload = json.dumps(fake.reply(cls, body.get("n", 1))).encode()
                    return self.send(200, payload)
                if action == "same":
                    c = {"message": {"role": "assistant", "content": f"The same {cls}."}}
                    return self.send(200, json.dumps({"choices": [c] * body.get("n", 1)}).encode())
                if action == "malformed":
                    return self.send(200, b'{"choices": [{"message": {"content": "half a rep')
                if action == "nochoices":
                    return self.send(200, b'{"object": "chat.completion", "choices": []}')
                if action == "slow":
                    time.sleep(0.6)
                    return self.send(200, json.dumps(fake.reply(cls, 1)).encode())
                if isinstance(action, tuple):  # (code, headers)
                    code, headers = action
                    return self.send(code, json.dumps({"error": {"message": f"error {code}"}}).encode(), headers)
                return self.send(int(action), json.dumps({"error": {"message": f"error {action}"}}).encode())

        return H


@pytest.fixture
def server():
    """Start a fresh fake endpoint; yields (FakeChat factory, base_url)."""
    started: list[ThreadingHTTPServer] = []

    def start(classnames: list[str]) -> tuple[FakeChat, str]:
        fake = FakeChat(classnames)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        started.append(httpd)
        return fake, f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


class Sleeps(list):
    def __call__(self, s: float) -> None:
        self.append(s)


CLASSES = ["tench", "goldfish", "great white shark"]


def gen(root, base_url, classnames=CLASSES, name="gen", **kw):
    opts = dict(model="fake-llm", api_key_env=KEY_ENV, m=5, n=2, seed=7, max_retries=3, timeout_s=5.0)
    opts.update(kw)
    return generate_descriptions(classnames, root, name, base_url=base_url, **opts)


def all_stored_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------ success
def test_success_stores_descriptions_and_settings(server, key, tmp_path, caplog):
    caplog.set_level("DEBUG")
    fake, url = server(CLASSES)
    sleeps = Sleeps()
    ds = gen(str(tmp_path), url, sleep=sleeps)
    assert ds.classnames == tuple(CLASSES) and ds.counts == (5, 5, 5)
    assert ds.texts[0][0] == "A tench seen in photo number 1."  # whitespace cleaned
    assert len(set(ds.texts[2])) == 5
    assert ds.source == "generated:fake-llm"
    # n=2 per request, 5 wanted: 3 requests per class, nothing retried.
    assert fake.requests == Counter({c: 3 for c in CLASSES}) and sleeps == []
    # The protocol: model, messages, temperature, max_tokens, n, seed = seed + k, CuPL questions in turn.
    tench = [b for b in fake.bodies if "tench" in b["messages"][-1]["content"]]
    assert [b["seed"] for b in tench] == [7, 8, 9]
    assert [b["messages"][-1]["content"] for b in tench] == [q.replace("{}", "tench") for q in DEFAULT_QUESTIONS[:3]]
    assert tench[0]["model"] == "fake-llm" and tench[0]["n"] == 2 and tench[0]["temperature"] == 0.99
    assert tench[0]["messages"][0]["role"] == "system"
    assert set(fake.auth) == {f"Bearer {SECRET}"}
    # Stored where the layout says, readable, with the deterministic settings recorded and no key.
    back = read_descriptions(str(tmp_path), "gen")
    assert back == ds
    s = ds.provenance["settings"]
    assert s["base_url"] == url and s["model"] == "fake-llm" and s["seed"] == 7 and s["temperature"] == 0.99
    assert s["questions"] == list(DEFAULT_QUESTIONS)
    assert list((tmp_path / "descriptions" / "name=gen").glob("descriptions=*.parquet"))
    pdir = tmp_path / progress_dir("gen", GenerationSettings(base_url=url, model="fake-llm", seed=7, n=2, m=5))
    assert (pdir / "settings.json").exists() and len(list(pdir.glob("class=*.json"))) == 3
    assert SECRET not in all_stored_text(tmp_path)
    assert SECRET not in caplog.text and KEY_ENV not in json.dumps(ds.provenance)


def test_no_auth_endpoint_and_missing_key(server, tmp_path, monkeypatch):
    fake, url = server(["tench"])
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(GenerationError, match=f"{KEY_ENV} is not set"):
        gen(str(tmp_path), url, classnames=["tench"])
    assert fake.requests == Counter()
    ds = gen(str(tmp_path), url, classnames=["tench"], api_key_env=None)
    assert ds.counts == (5,) and fake.auth == [None, None, None]


# ------------------------------------------------------------------ transient failures
def test_429_then_success_backs_off_exponentially(server, key, tmp_path):
    fake, url = server(CLASSES)
    fake.script["goldfish"] = [429, 429]
    fake.script["tench"] = [(429, {"Retry-After": "7"})]
    sleeps = Sleeps()
    ds = gen(str(tmp_path), url, sleep=sleeps, backoff_s=0.5)
    assert ds.counts == (5, 5, 5)
    assert sleeps == [7.0, 0.5, 1.0]  # Retry-After honoured, then 0.5 * 2**attempt
    assert fake.requests["goldfish"] == 5 and fake.requests["tench"] == 4


def test_500_retried_then_gives_up_with_a_clear_error(server, key, tmp_path):
    fake, url = server(["tench", "goldfish"])
    fake.script["tench"] = [500, 503, "ok"]
    sleeps = Sleeps()
    assert gen(str(tmp_path), url, classnames=["tench"], sleep=sleeps).counts == (5,)
    assert len(sleeps) == 2
    fake.default = 500
    with pytest.raises(GenerationError, match=r"gave up after 4 tries; last failure: HTTP 500"):
        gen(str(tmp_path), url, classnames=["goldfish", "tench"], name="other", sleep=Sleeps())


def test_timeout_and_connection_errors_are_retried(server, key, tmp_path):
    fake, url = server(["tench"])
    fake.script["tench"] = ["slow"]
    sleeps = Sleeps()
    ds = gen(str(tmp_path), url, classnames=["tench"], timeout_s=0.2, sleep=sleeps)
    assert ds.counts == (5,) and len(sleeps) == 1
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    sleeps = Sleeps()
    with pytest.raises(GenerationError, match="ConnectError"):
        gen(str(tmp_path), dead, classnames=["tench"], name="dead", sleep=sleeps, max_retries=2)
    assert sleeps == [1.0, 2.0]


def test_client_errors_fail_at_once_without_leaking_the_key(server, key, tmp_path):
    fake, url = server(["tench"])
    fake.default = 401
    sleeps = Sleeps()
    with pytest.raises(GenerationError) as ei:
        gen(str(tmp_path), url, classnames=["tench"], sleep=sleeps)
    assert "HTTP 401" in str(ei.value) and "API key" in str(ei.value) and SECRET not in str(ei.value)
    assert sleeps == [] and fake.requests["tench"] == 1
    with pytest.raises(GenerationError, match="HTTP 404.*OpenAI-compatible"):
        gen(str(tmp_path), url.replace("/v1", "/v2"), classnames=["tench"], name="x")


# ------------------------------------------------------------------ malformed replies
def test_malformed_reply_is_recorded_and_retried(server, key, tmp_path):
    fake, url = server(CLASSES)
    fake.script["goldfish"] = ["malformed", "nochoices"]
    sleeps = Sleeps()
    res = run_generation(
        CLASSES,
        str(tmp_path),
        "gen",
        GenerationSettings(base_url=url, model="fake-llm", m=5, n=2),
        api_key_env=KEY_ENV,
        retry=RetryPolicy(sleep=sleeps, max_malformed=3),
    )
    assert res.descriptions.counts == (5, 5, 5)
    assert res.stats.malformed == 2 and len(sleeps) == 2
    st = Storage(str(tmp_path))
    files = [st.read_json(p.split(str(tmp_path) + "/")[1]) for p in st.glob(res.progress_dir + "/class=*.json")]
    gold = next(f for f in files if f["class_name"] == "goldfish")
    assert gold["malformed"] == 2 and "no 'choices' list" in gold["last_malformed"]
    assert gold["status"] == "complete" and len(gold["texts"]) == 6  # 3 requests x n=2, all kept


def test_malformed_replies_become_a_clear_error(server, key, tmp_path):
    fake, url = server(CLASSES)
    fake.script["goldfish"] = ["malformed"] * 5
    with pytest.raises(GenerationError) as ei:
        gen(str(tmp_path), url, sleep=Sleeps(), max_malformed=3)
    msg = str(ei.value)
    assert "'goldfish'" in msg and "3 malformed chat-completions replies" in msg and "half a rep" in msg
    assert fake.requests["great white shark"] == 0  # stopped at the broken class


# ------------------------------------------------------------------ resume
def test_resumed_run_does_not_reask_completed_classes(server, key, tmp_path):
    fake, url = server(CLASSES)
    # tench completes; goldfish gets one answer then the endpoint breaks; the shark is never reached.
    fake.script["goldfish"] = ["ok", 500, 500]
    with pytest.raises(GenerationError, match="'goldfish'.*HTTP 500"):
        gen(str(tmp_path), url, sleep=Sleeps(), max_retries=1)
    assert fake.requests == Counter({"tench": 3, "goldfish": 3})
    first_tench = [b for b in fake.bodies if "tench" in b["messages"][-1]["content"]]

    fake.requests.clear()
    fake.bodies.clear()
    res = run_generation(
        CLASSES,
        str(tmp_path),
        "gen",
        GenerationSettings(base_url=url, model="fake-llm", m=5, n=2, seed=7),
        api_key_env=KEY_ENV,
        retry=RetryPolicy(sleep=Sleeps()),
    )
    ds = res.descriptions
    assert ds.counts == (5, 5, 5)
    assert fake.requests["tench"] == 0  # complete: not asked again
    assert fake.requests == Counter({"goldfish": 2, "great white shark": 3})  # goldfish continues from request 1
    assert [b["seed"] for b in fake.bodies if "goldfish" in b["messages"][-1]["content"]] == [8, 9]
    assert res.stats.classes_resumed_done == 1 and res.stats.classes_asked == 2
    assert ds.texts[0] == tuple(f"A tench seen in photo number {i}." for i in range(1, 6))
    assert len(first_tench) == 3

    # A third run asks nothing at all and returns the same set.
    fake.requests.clear()
    again = gen(str(tmp_path), url, sleep=Sleeps())
    assert fake.requests == Counter() and again == ds
    # Other settings never reuse this progress.
    fake.requests.clear()
    gen(str(tmp_path), url, sleep=Sleeps(), temperature=0.5)
    assert fake.requests == Counter({c: 3 for c in CLASSES})


def test_raising_m_continues_the_same_sequence(server, key, tmp_path):
    fake, url = server(["tench"])
    a = gen(str(tmp_path), url, classnames=["tench"], m=3)
    fake.requests.clear()
    b = gen(str(tmp_path), url, classnames=["tench"], m=5)
    assert b.texts[0][:3] == a.texts[0] and b.counts == (5,)
    assert fake.requests["tench"] == 1  # requests 0-1 gave 4 texts (all kept in the progress); one more
    # The same as asking for 5 from the start (the server numbers its answers the same way).
    fresh_fake, fresh_url = server(["tench"])
    fresh = gen(str(tmp_path / "fresh"), fresh_url, classnames=["tench"], m=5)
    assert fresh.texts == b.texts and fresh_fake.requests["tench"] == 3


def test_exhausted_class_is_short_and_not_reasked(server, key, tmp_path):
    fake, url = server(CLASSES)
    fake.script["goldfish"] = ["same"] * 10
    ds = gen(str(tmp_path), url, sleep=Sleeps(), max_requests_per_class=4)
    assert ds.counts == (5, 1, 5) and ds.short == {1: 1}
    assert fake.requests["goldfish"] == 4
    assert any("bound of 4 requests" in n for n in ds.notes)
    fake.requests.clear()
    gen(str(tmp_path), url, sleep=Sleeps(), max_requests_per_class=4)
    assert fake.requests == Counter()


def test_duplicate_class_names_are_asked_once_and_reported(server, key, tmp_path):
    names = ["crane", "tench", "crane"]
    fake, url = server(names)
    ds = gen(str(tmp_path), url, classnames=names, sleep=Sleeps())
    assert fake.requests == Counter({"crane": 3, "tench": 3})
    assert ds.texts[0] == ds.texts[2] and ds.duplicates == {"crane": (0, 2)}


def test_parallel_workers(server, key, tmp_path):
    names = [f"class{i:02d}" for i in range(8)]
    fake, url = server(names)
    fake.script["class03"] = [429]
    ds = gen(str(tmp_path), url, classnames=names, sleep=Sleeps(), workers=4)
    assert ds.counts == (5,) * 8 and sum(fake.requests.values()) == 25


# ------------------------------------------------------------------ parsing helpers
def test_parse_and_clean_replies():
    ok = json.dumps({"choices": [{"message": {"content": "A."}}, {"message": {"content": None}}]}).encode()
    assert parse_reply(ok) == ["A."]
    for bad, why in [
        (b"<html>", "not JSON"),
        (b"[]", "choices"),
        (b'{"choices": [{"text": "legacy"}]}', "no choice"),
        (b'{"choices": [{"message": {"content": 3}}]}', "not a string"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_reply(bad)
    assert clean_reply('  "A tench\n is green."  ') == "A tench is green."
    assert clean_reply("1. A fish.") == "A fish." and clean_reply("- A fish.") == "A fish."
    with pytest.raises(DescriptionError, match="placeholder"):
        GenerationSettings(base_url="x", model="y", questions=("no placeholder",))
