"""The inference server: API, batching, bad input that leaves it serving, and its page in real Chromium."""

import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from resnetlab.cli import main
from resnetlab.deploy.serve import Limits, create_app, load_model, uvicorn_options
from tests.browser import free_port, page_after_upload
from tests.conftest import REPO, SHARED_DATA, tiny_overrides, write_class_folders

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    data = write_class_folders(tmp / "data", per_class=16, size=16)
    assert main(["train", *tiny_overrides(data, tmp, "train.epochs=2")]) == 0
    run = tmp / "run"
    model = load_model(run)
    client = TestClient(create_app(model, Limits(max_bytes=200_000, max_images=4, batch_size=8), source=str(run)))
    return run, data, model, client


def _png(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_classes_docs_and_page(served):
    _, _, model, client = served
    assert client.get("/health").json()["classes"] == 3
    assert client.get("/classes").json() == {"classes": ["ant", "bee", "cat"]}
    assert client.get("/docs").status_code == 200 and "/predict" in client.get("/openapi.json").text
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "http" not in page.text.split("<script>")[1]


def test_predict_multipart_and_raw_body(served):
    _, data, model, client = served
    files = sorted((data / "test" / "bee").iterdir())[:3]
    response = client.post("/predict?topk=2", files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files])
    assert response.status_code == 200
    answers = response.json()["predictions"]
    assert [a["filename"] for a in answers] == [f.name for f in files] and len(answers[0]["top"]) == 2
    images, _, _ = model.load_images([str(f) for f in files])
    expected = model.probabilities(images)
    for a, p in zip(answers, expected):
        assert a["top"][0]["class"] == model.classes[int(p.argmax())]
        assert abs(a["top"][0]["probability"] - float(p.max())) < 1e-4
    raw = client.post("/predict", content=files[0].read_bytes(), headers={"content-type": "image/png"})
    alone = raw.json()["predictions"][0]["top"][0]
    # a batch of 1 against a batch of 3: bf16 kernels may round differently, classes may not
    assert alone["class"] == answers[0]["top"][0]["class"]
    assert abs(alone["probability"] - answers[0]["top"][0]["probability"]) < 1e-2


def test_bad_input_gets_4xx_and_the_server_keeps_serving(served, tmp_path):
    _, data, _, client = served
    good = (data / "test" / "ant" / "000.png").read_bytes()
    jpeg = io.BytesIO()
    Image.open(data / "test" / "ant" / "000.png").save(jpeg, format="JPEG")
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")  # 144 Mpx declared, a few kB on the wire
    big = io.BytesIO()
    Image.effect_noise((400, 400), 64).convert("RGB").save(big, format="PNG")  # over the 200 kB limit
    cases = [
        (dict(content=b"", headers={"content-type": "image/png"}), 400, "empty body"),
        (dict(content=b"hello, not an image", headers={"content-type": "image/jpeg"}), 415, "not an image"),
        (dict(content=jpeg.getvalue()[: len(jpeg.getvalue()) // 2], headers={"content-type": "image/jpeg"}), 400,
         "cannot decode"),
        (dict(content=bomb.getvalue(), headers={"content-type": "image/png"}), 400, "larger than 100,000,000 px"),
        (dict(content=big.getvalue(), headers={"content-type": "image/png"}), 413, "over the limit"),
        (dict(content=good, headers={"content-type": "text/plain"}), 415, "content type 'text/plain'"),
        (dict(files=[("files", (f"{i}.png", good, "image/png")) for i in range(5)]), 413, "5 images in one request"),
    ]
    for kwargs, status, words in cases:
        response = client.post("/predict", **kwargs)
        assert response.status_code == status, (words, response.text)
        body = response.json()
        assert list(body) == ["error"] and words in body["error"] and "\n" not in body["error"]
        assert client.post("/predict", content=good, headers={"content-type": "image/png"}).status_code == 200


def test_concurrent_requests_share_batches(served):
    _, data, model, _ = served
    good = (data / "test" / "cat" / "000.png").read_bytes()
    # a first request waits up to 200 ms for company: long enough on a loaded machine
    client = TestClient(create_app(model, Limits(batch_size=8, batch_wait_ms=200), source="batching"))
    batcher = client.app.state.batcher
    results = []
    gate = threading.Barrier(12)

    def call():
        gate.wait(timeout=30)  # all 12 clients send at once
        results.append(client.post("/predict", content=good, headers={"content-type": "image/png"}).status_code)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [200] * 12
    # 12 one-image requests went through fewer than 12 forward passes: some passes served several
    assert sum(batcher.batches) == 12 and max(batcher.batches) > 1, batcher.batches


class _SlowModel:
    """A model whose forward pass waits until released, to fill the request queue."""

    def __init__(self, model):
        self.inner, self.release = model, threading.Event()
        self.classes, self.image_size, self.resize, self.channels = (model.classes, model.image_size, model.resize,
                                                                     model.channels)
        self.calibration = None

    def probabilities(self, images):
        self.release.wait(timeout=30)
        return self.inner.probabilities(images)


def test_a_full_queue_answers_503_and_shutdown_stops_the_model_thread(served):
    _, data, model, _ = served
    slow = _SlowModel(model)
    good = (data / "test" / "cat" / "000.png").read_bytes()
    app = create_app(slow, Limits(batch_size=1, batch_wait_ms=0, max_queue=1), source="slow")
    statuses = []
    with TestClient(app) as client:
        def call():
            statuses.append(client.post("/predict", content=good, headers={"content-type": "image/png"}))

        first = threading.Thread(target=call)  # taken by the model thread, which then waits
        first.start()
        deadline = time.monotonic() + 30
        while app.state.batcher.queue.qsize() or not app.state.batcher.thread.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        second = threading.Thread(target=call)  # waits in the queue (1 place)
        second.start()
        while app.state.batcher.queue.qsize() < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy = client.post("/predict", content=good, headers={"content-type": "image/png"})
        assert busy.status_code == 503 and "busy" in busy.json()["error"] and "\n" not in busy.json()["error"]
        assert client.get("/health").json()["queue"] == 1
        slow.release.set()
        first.join(timeout=30)
        second.join(timeout=30)
        assert [r.status_code for r in statuses] == [200, 200]
        thread = app.state.batcher.thread
    assert not thread.is_alive()  # the lifespan's shutdown stopped it


def test_serve_bad_input_one_line(served, tmp_path, capsys):
    run, _, _, _ = served
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    assert main(["serve", str(text)]) == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (f"resnetlab serve: error: {text} is not a model: "
                      "give a run folder, a .pt checkpoint, or an export with its .json")
    assert err[1].startswith(f"resnetlab serve: error: cannot listen on 127.0.0.1:{port} (Address already in use)")


def test_page_in_headless_chromium(served, tmp_path):
    """Open the page, choose a real image with DevTools' setFileInputFiles, read the verdict off the page."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium)")
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    run, _, model, client = served
    folder = SHARED_DATA / "intel" / "seg_pred" / "seg_pred"
    image = folder / sorted(p.name for p in folder.iterdir())[0]
    page = page_after_upload(browser, create_app(model, source=str(run)), image, tmp_path, read={
        "verdict": "document.getElementById('verdict').textContent",
        "first_bar": "document.querySelector('#bars .name').textContent"})
    assert page["errors"] == []
    expected = client.post("/predict", content=image.read_bytes(), headers={"content-type": "image/jpeg"}).json()
    top = expected["predictions"][0]
    assert page["first_bar"] == top["top"][0]["class"]
    assert page["verdict"] == (top["verdict"] if not top["rejected"] else "unknown (no class is likely enough)")


def test_health_reports_the_thread_the_queue_and_the_weights_checksum(served):
    import hashlib

    run, _, model, client = served
    health = client.get("/health").json()
    weights = model.checkpoint
    assert health["model_thread_alive"] is True and health["queue"] == 0 and health["max_queue"] == 64
    assert health["model_file"] == str(weights)
    assert health["model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def _live(app, **config):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, port


def _hold(port: int, length: int = 1000) -> socket.socket:
    """A connection that sends its headers and then nothing: a slow client."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
              f"Content-Length: {length}\r\n\r\n".encode())
    return s


def test_a_slow_body_times_out_and_connections_are_bounded(served):
    _, data, model, _ = served
    good = (data / "test" / "cat" / "000.png").read_bytes()
    limits = Limits(body_timeout_s=2.0, max_connections=3)
    server, thread, port = _live(create_app(model, limits), **uvicorn_options(limits))
    try:
        slow = _hold(port)
        held = [_hold(port)]
        deadline = time.monotonic() + 1.5
        while len(server.server_state.connections) < 2:  # uvicorn has taken both slow clients in
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=good,
                                      headers={"Content-Type": "image/png"})
        with pytest.raises(urllib.error.HTTPError) as refused:  # this third connection reaches the bound of 3
            urllib.request.urlopen(busy, timeout=30)
        assert refused.value.code == 503
        answer, deadline = b"", time.monotonic() + 20  # within the 2 s body timeout plus scheduling
        while b"}" not in answer and time.monotonic() < deadline:  # headers and JSON body may come apart
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
        answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 2 s" in answer
        for s in [slow, *held]:
            s.close()
        time.sleep(2.5)  # the held connections time out too, freeing their places
        response = urllib.request.urlopen(busy, timeout=30)
        assert response.status == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_short_soak_of_mixed_traffic(served, tmp_path):
    """8 s of benchmarks/serve_soak.py: good, bad, slow, dropped and bursting clients at once."""
    run, _, _, _ = served
    out = tmp_path / "soak.json"
    image = next((run.parent / "data" / "test" / "cat").iterdir())
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_soak.py"), str(run), "--seconds", "8",
                           "--image", str(image), "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    counts = result["counts"]
    assert result["errors"] == [] and counts.get("good 200", 0) > 50 and counts.get("slow 408 Request Timeout", 0) >= 2
    assert counts.get("burst 503", 0) > 0 and counts.get("dropped closed", 0) > 0
    assert result["rss_end_mb"] - result["rss_start_mb"] < 150 and result["health"]["model_thread_alive"]
