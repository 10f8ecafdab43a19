"""Debian's firefox-esr driven over WebDriver BiDi, the remote protocol built into Firefox: no
driver binary, nothing downloaded (Playwright drives only its own patched Firefox builds)."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.support.daemon import free_port

READY = "WebDriver BiDi listening on "
TIMEOUT_S = 30.0

# Resolves once `predicate` (a JavaScript expression) is true, re-checked on every DOM change:
# waiting on the page's own events, not on a clock.
WAIT_FOR = """(predicate) => new Promise((resolve) => {
  const holds = () => { try { return Boolean(eval(predicate)); } catch (e) { return false; } };
  if (holds()) { resolve(true); return; }
  const observer = new MutationObserver(() => {
    if (holds()) { observer.disconnect(); resolve(true); }
  });
  observer.observe(document, {subtree: true, childList: true, attributes: true,
                              characterData: true});
})"""


@contextmanager
def launch(executable: str, profile: Path, width: int, height: int) -> Iterator[Firefox]:
    """A headless Firefox with one browsing context of `width` x `height`, closed on exit."""
    port = free_port()
    profile.mkdir(parents=True, exist_ok=True)
    args = ["--headless", "--no-remote", "--profile", str(profile)]
    proc = subprocess.Popen(
        [executable, *args, "--remote-debugging-port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # also keeps the pipe from filling up
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if line.startswith(READY):
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(TIMEOUT_S):
            raise RuntimeError("firefox did not start WebDriver BiDi:\n" + "".join(log))
        url = f"ws://127.0.0.1:{port}/session"
        with connect(url, max_size=None, open_timeout=TIMEOUT_S) as ws:
            yield Firefox(ws, width, height)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Firefox:
    """One WebDriver BiDi session with one browsing context."""

    def __init__(self, ws: ClientConnection, width: int, height: int) -> None:
        self.ws = ws
        self._id = 0
        self.command("session.new", {"capabilities": {}})
        self.context = self.command("browsingContext.getTree", {})["contexts"][0]["context"]
        viewport = {"width": width, "height": height}
        self.command("browsingContext.setViewport", {"context": self.context, "viewport": viewport})

    def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=TIMEOUT_S))
            if message.get("id") != self._id:
                continue  # an event we did not subscribe to, or a late answer
            if message.get("type") == "error":
                raise RuntimeError(f"{method}: {message.get('error')}: {message.get('message')}")
            result: dict[str, Any] = message["result"]
            return result

    def navigate(self, url: str) -> None:
        params = {"context": self.context, "url": url, "wait": "complete"}
        self.command("browsingContext.navigate", params)

    def evaluate(self, expression: str) -> Any:
        target = {"context": self.context}
        params = {"expression": expression, "target": target, "awaitPromise": True}
        result = self.command("script.evaluate", params)
        if result.get("type") == "exception":
            raise AssertionError(f"{expression}: {result['exceptionDetails']['text']}")
        return result["result"].get("value")

    def wait_for(self, predicate: str) -> None:
        """Until the JavaScript expression `predicate` holds on the page."""
        params = {
            "functionDeclaration": WAIT_FOR,
            "arguments": [{"type": "string", "value": predicate}],
            "target": {"context": self.context},
            "awaitPromise": True,
        }
        result = self.command("script.callFunction", params)
        assert result.get("type") == "success", result

    def screenshot(self, path: Path) -> None:
        data = self.command("browsingContext.captureScreenshot", {"context": self.context})
        path.write_bytes(base64.b64decode(data["data"]))
