"""What a person sees in the Prefect UI after ``abs-eval demo``: a real server, real runs, headless Chromium.

Starts ``prefect server start`` on a free port (its own temporary ``PREFECT_HOME``, no telemetry), runs
against it (``PREFECT_API_URL``):

1. ``abs-eval demo`` (N = 20 crops);
2. the demo's evaluation again with other method parameters (N = 8) and ``keep_features``: its report
   compares with run 1 and must say the settings differ;
3. ``abs-eval analyze`` on run 2 (N', M', tau, one crop branch, plain averaging): it rewrites run 2's report
   with the sensitivity section and publishes it as the newest version of run 2's report artifact.

Then opens, in headless Chromium at 1,400 px wide, for both UIs (the default one and ``/v2``): each run's
flow-run page on its Artifacts tab, and the artifact pages of the report, the accuracy table and the progress
of run 2 (its report the version ``analyze`` published). In every page (through the DevTools protocol: a websocket client, no browser driver) it
checks that every image loaded (``complete`` and a natural width) and that no table is wider than the box it
sits in, saves a screenshot per page and ``summary.json`` under ``--out``, and exits 1 when a check fails.

    .venv/bin/python scripts/ui_screenshots.py --out /tmp/abs-ui        # ~3-5 minutes on 2 cores

Needs Chromium (``apt-get install -y chromium``; ``--chromium PATH`` for another binary). The screenshots stay
out of the repository: ``--out`` defaults to a temporary folder.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WIDTH = 1400
#: The in-page check: images that did not load, tables wider than the box they sit in, headers cut.
PAGE_CHECK = """(() => {
  const imgs = [...document.querySelectorAll('img')];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.currentSrc || i.src).slice(0, 60));
  const overflowing = [];
  for (const t of document.querySelectorAll('table')) {
    const w = t.getBoundingClientRect().width;
    for (let a = t.parentElement; a && a !== document.body; a = a.parentElement) {
      if (a.clientWidth > 0 && w > a.clientWidth + 1) {
        overflowing.push({table: t.innerText.slice(0, 50).replace(/\\s+/g, ' '), width: Math.round(w), box: a.clientWidth});
        break;
      }
    }
  }
  const cut = [...document.querySelectorAll('th')].filter(h => h.scrollWidth > h.clientWidth + 1).map(h => h.innerText);
  const text = document.body.innerText;
  return {images: imgs.length, loaded: imgs.length - broken.length, broken, tables: document.querySelectorAll('table').length,
          overflowing, cut_headers: cut, page_width: document.documentElement.scrollWidth, text_length: text.length,
          title: document.title};
})()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium(given: str | None) -> str:
    for name in [given] if given else ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        path = shutil.which(name) if name else None
        if path:
            return path
    raise SystemExit("error: Chromium not found (apt-get install -y chromium, or --chromium PATH)")


def wait_for(what: str, check, timeout: float, interval: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")


class Server:
    """``prefect server start`` on a free port, in its own temporary PREFECT_HOME; stopped on exit."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(work / "prefect-home"),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": f"{self.url}/api",
            "PREFECT_UI_API_URL": f"{self.url}/api",
            "ABS_EVAL_NO_GUARDIAN": "1",
        }
        self.env.pop("PREFECT_PROFILE", None)
        self.log = open(work / "prefect-server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout: float = 90.0) -> None:
        import httpx

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                return httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("prefect server", healthy, timeout)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        r = httpx.request(method, f"{self.url}/api{path}", json=body, timeout=30)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(20)
        self.log.close()


SECOND_RUN = """
import json, sys
from flows.evaluate import evaluate
from tasks import defaults
root, n_crops, keep = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
out = evaluate(dict(dataset="demo", layout="folder", root=root, source=f"{root}/demo-source",
                    descriptions=f"{root}/demo-descriptions.json", clip_model=defaults.TINY_CLIP_MODEL,
                    clip_pretrained=None, dino_model=defaults.TINY_DINO_MODEL, dino_pretrained=None,
                    abs_config={"n_crops": n_crops, "n_descriptions": 8}, images_per_shard=16, deployment="demo",
                    keep_features=keep))
print("RESULT " + json.dumps({"run_id": out["run_id"], "flow_run_id": out["flow_run_id"]}))
"""


def run_step(name: str, cmd: list[str], env: dict[str, str], log: Path, timeout: float = 900) -> str:
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n===== {name}: {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=f, text=True, timeout=timeout)
        f.write(p.stdout)
    if p.returncode:
        raise RuntimeError(f"{name} failed ({p.returncode}); see {log}")
    print(f"  {name}: {time.monotonic() - t0:.0f} s", flush=True)
    return p.stdout


def result_of(stdout: str) -> dict[str, Any]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def make_runs(server: Server, root: Path, log: Path) -> dict[str, dict[str, Any]]:
    """The three steps of the module docstring; returns ``{"demo" | "other": {run_id, flow_run_id}}``."""
    env = server.env
    run_step("abs-eval demo", [str(BIN / "abs-eval"), "demo", "--root", str(root), "--per-class", "2"], env, log)
    records = sorted((json.loads(p.read_text()) for p in root.glob("runs/run=*/run.json")), key=lambda r: r["run_id"])
    runs = {"demo": {"run_id": records[-1]["run_id"], "flow_run_id": records[-1]["flow_run_id"]}}
    runs["other"] = result_of(
        run_step("run with N=8, features kept", [sys.executable, "-c", SECOND_RUN, str(root), "8", "1"], env, log)
    )
    run_step(
        "abs-eval analyze",
        [
            str(BIN / "abs-eval"),
            "analyze",
            "--root",
            str(root),
            "--run",
            runs["other"]["run_id"],
            "--n-crops",
            "2,4",
            "--m",
            "4",
            "--tau",
            "0.01,0.1",
            "--kinds",
            "raw,feature",
            "--plain-averaging",
        ],
        env,
        log,
    )
    return runs


class Browser:
    """Headless Chromium driven through the DevTools protocol (one page, one websocket)."""

    def __init__(self, binary: str, work: Path, height: int) -> None:
        profile = work / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={WIDTH},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        port = wait_for("chromium", lambda: port_file.exists() and port_file.read_text().split("\n")[0], 60)
        import httpx
        from websockets.sync.client import connect

        pages = wait_for(
            "chromium page",
            lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"],
            30,
        )
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=2**28, open_timeout=30)
        self.ids = itertools.count(1)
        self.height = height
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")

    def open(
        self, url: str, wait_text: str, timeout: float = 60.0, tab: str | None = None, tab_text: str | None = None
    ) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride", width=WIDTH, height=self.height, deviceScaleFactor=1, mobile=False
        )
        self.call("Page.navigate", url=url)
        probe = f"document.body && document.body.innerText.includes({json.dumps(wait_text)})"
        try:
            wait_for(f"{url} showing {wait_text!r}", lambda: self.evaluate(probe), timeout)
        finally:
            time.sleep(2.0)  # images decode, charts settle
        if tab:  # the default UI opens a flow run on its Logs tab whatever ?tab= says: click the tab
            click = (
                "(() => { const leaves = [...document.querySelectorAll('*')].filter(e => e.children.length === 0"
                f" && e.textContent.trim() === {json.dumps(tab)}); if (!leaves.length) return false;"
                " const t = leaves[0].closest('button, a, [role=tab], li') || leaves[0];"
                " for (const type of ['pointerdown', 'mousedown', 'pointerup', 'mouseup', 'click'])"
                " t.dispatchEvent(new MouseEvent(type, {bubbles: true, cancelable: true, view: window}));"
                " return true; })()"
            )
            self.evaluate(click)
            if tab_text:
                probe = f"document.body.innerText.includes({json.dumps(tab_text)})"
                wait_for(f"{url} tab {tab} showing {tab_text!r}", lambda: self.evaluate(probe), timeout)
            time.sleep(1.0)
        # images: every one done loading (or failed) before the check
        wait_for("images", lambda: self.evaluate("[...document.images].every(i => i.complete)"), 20)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)


def artifacts_of(server: Server, flow_run_id: str) -> dict[str, dict[str, Any]]:
    """The newest artifact of each type of a flow run (``abs-eval analyze`` adds a version of the report)."""
    rows = server.api("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    return {a["type"]: a for a in sorted(rows, key=lambda a: a["created"])}


def pages(server: Server, runs: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str | None]]:
    """(name, url, text that shows the page has rendered, tab to click) for both UIs."""
    out: list[tuple[str, str, str, str | None]] = []
    for ui, prefix in (("v1", ""), ("v2", "/v2")):
        for name, run in runs.items():
            out.append(
                (
                    f"{ui}-{name}-flow-run-artifacts",
                    f"{server.url}{prefix}/runs/flow-run/{run['flow_run_id']}?tab=Artifacts",
                    "Artifacts",
                    "Artifacts",
                )
            )
        for name in ("other",):
            arts = artifacts_of(server, runs[name]["flow_run_id"])
            for kind, text in (
                ("markdown", "Sensitivity and ablations"),
                ("table", "vs previous run"),
                ("progress", "shards"),
            ):
                if kind in arts:
                    out.append(
                        (
                            f"{ui}-{name}-{kind}",
                            f"{server.url}{prefix}/artifacts/artifact/{arts[kind]['id']}",
                            text,
                            None,
                        )
                    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="Screenshots and summary.json (default: a temp folder).")
    ap.add_argument("--chromium", default=None, help="The Chromium binary (default: chromium on PATH).")
    ap.add_argument("--height", type=int, default=2400, help="Window height in px (the width is 1,400).")
    ap.add_argument(
        "--server-timeout",
        type=float,
        default=90.0,
        help="Seconds to wait for the Prefect server "
        "(its first start creates the database: on a busy 2-core machine this can take longer).",
    )
    args = ap.parse_args(argv)
    binary = find_chromium(args.chromium)
    out = args.out or Path(tempfile.mkdtemp(prefix="abs-ui-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="abs-ui-work-"))
    log = out / "steps.log"
    print(f"working in {work}; screenshots to {out}", flush=True)
    server = Server(work)
    browser = None
    summary: dict[str, Any] = {"pages": {}, "failures": []}
    try:
        server.wait(args.server_timeout)
        print(f"  prefect server up at {server.url}", flush=True)
        runs = make_runs(server, work / "root", log)
        summary["runs"] = runs
        browser = Browser(binary, work, args.height)
        for name, url, text, tab in pages(server, runs):
            try:
                browser.open(url, text, tab=tab, tab_text="progress-" if tab else None)
            except RuntimeError as exc:
                summary["failures"].append(f"{name}: {exc}")
                browser.screenshot(out / f"{name}.png")
                continue
            check = browser.evaluate(PAGE_CHECK)
            browser.screenshot(out / f"{name}.png")
            summary["pages"][name] = {"url": url, **check}
            if check["broken"]:
                summary["failures"].append(f"{name}: {len(check['broken'])} images did not load")
            if check["overflowing"]:
                summary["failures"].append(f"{name}: tables wider than their box: {check['overflowing']}")
            if check["cut_headers"]:
                summary["failures"].append(f"{name}: headers cut: {check['cut_headers']}")
            print(
                f"  {name}: {check['loaded']}/{check['images']} images loaded, {check['tables']} tables, "
                f"{len(check['overflowing'])} overflowing, {len(check['cut_headers'])} headers cut",
                flush=True,
            )
    finally:
        if browser is not None:
            browser.close()
        server.stop()
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        shutil.rmtree(work, ignore_errors=True)
    for f in summary["failures"]:
        print(f"FAIL {f}")
    print(f"{len(summary['pages'])} pages checked, {len(summary['failures'])} failures; see {out}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
