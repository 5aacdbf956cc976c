"""The serve page in headless Chromium, driven over DevTools: serve an app, open its page, choose an
image in its file input, wait for the answer, and read values off the page (the single- and the
multi-label page tests share it)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _devtools_port(profile: Path) -> int | None:
    """Chromium's DevTools port, once DevToolsActivePort holds it: the file can exist before its text
    is written (a CI run read it empty)."""
    words = (profile / "DevToolsActivePort").read_text().split() if (profile / "DevToolsActivePort").is_file() else []
    return int(words[0]) if words and words[0].isdigit() else None


def page_after_upload(browser: str, app, image: Path, tmp_path: Path, read: dict[str, str]) -> dict:
    """{name: the value of each JavaScript expression in ``read`` once the page has answered for
    ``image``}, plus "errors": the page's console errors and uncaught exceptions (none expected)."""
    import uvicorn
    from websockets.sync.client import connect

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    profile = tmp_path / "profile"
    chrome = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                               f"--user-data-dir={profile}", "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        devtools = None
        for _ in range(600):  # up to 30 s for a cold Chromium on a slow machine
            devtools = devtools or _devtools_port(profile)
            if devtools and server.started:
                break
            time.sleep(0.05)
        assert devtools and server.started, "Chromium or the server did not start in 30 s"
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{devtools}/json/list").read())
        target = next(t for t in targets if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            ids, errors = iter(range(1, 10**6)), []

            def call(method, **params):
                n = next(ids)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    message = json.loads(ws.recv(timeout=30))
                    if message.get("method") == "Runtime.exceptionThrown" or (
                            message.get("method") == "Runtime.consoleAPICalled"
                            and message["params"]["type"] == "error"):
                        errors.append(message)
                    if message.get("id") == n:
                        return message.get("result", {})

            def evaluate(expression):
                return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

            def wait_for(expression):
                for _ in range(600):
                    if evaluate(expression):
                        return
                    time.sleep(0.05)

            call("Runtime.enable")
            call("Page.enable")
            call("Page.navigate", url=f"http://127.0.0.1:{port}/")
            wait_for("document.readyState === 'complete' && !!document.getElementById('file')")
            root = call("DOM.getDocument")["root"]["nodeId"]
            node = call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
            call("DOM.setFileInputFiles", files=[str(image)], nodeId=node)
            wait_for("document.body.dataset.done === 'yes'")
            return {**{name: evaluate(expression) for name, expression in read.items()}, "errors": errors}
    finally:
        chrome.terminate()
        chrome.wait(timeout=10)
        server.should_exit = True
        thread.join(timeout=10)
