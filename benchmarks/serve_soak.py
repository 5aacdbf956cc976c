"""A soak of `resnetlab serve` over loopback: mixed traffic for a long time, memory and latency watched.

    .venv/bin/python benchmarks/serve_soak.py RUN_OR_EXPORT [--seconds 600] [--json out.json]

Starts the server in a subprocess (as a user would) with a small queue and a short body
timeout, then runs, until the time is up:
  good      4 clients posting one real image at a time (must get 200, or 503 when the queue is full)
  bad       1 client cycling through every bad request the tests send (must get its 4xx)
  slow      1 client sending a body a byte every 0.5 s (must get 408 when the body timeout passes)
  dropped   1 client sending half a body, then closing the connection
  burst     every 5 s, 3 x the queue bound of requests at once (some must get 503, none may fail)
It prints (and writes with --json) counts per kind and status, good-request p50/p99 latency,
the server's RSS at the start (after a warm-up) and at the end, and /health at the end.
Any good request that gets something other than 200/503, or a bad one that gets no 4xx, is an error.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from PIL import Image

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "shared/data/gtsrb/GTSRB/Final_Test/Images/00000.ppm"
QUEUE, BODY_TIMEOUT, MAX_BYTES = 8, 2.0, 200_000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(port: int, body: bytes, content_type: str, timeout: float = 60) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/predict", body, {"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def bad_requests(good: bytes) -> list[tuple[str, bytes, str, int]]:
    """(name, body, content type, expected status): the bad kinds the serve tests send."""
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(good)).convert("RGB").save(jpeg, format="JPEG")
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")
    big = io.BytesIO()
    Image.effect_noise((400, 400), 64).convert("RGB").save(big, format="PNG")
    return [("empty", b"", "image/png", 400), ("not an image", b"hello", "image/jpeg", 415),
            ("truncated", jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "image/jpeg", 400),
            ("bomb", bomb.getvalue(), "image/png", 400), ("too big", big.getvalue(), "image/png", 413),
            ("wrong type", good, "text/plain", 415)]


def raw_socket(port: int, length: int, body: bytes, pause: float) -> str:
    """Send headers for ``length`` bytes, then ``body`` with ``pause`` s between bytes, stopping when
    the server answers; returns the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n\r\n"
                  .encode())
        try:
            for i in range(len(body)):
                if select.select([s], [], [], 0)[0]:
                    break  # the server has answered before the body was complete
                s.sendall(body[i:i + 1])
                time.sleep(pause)
            return s.recv(200).decode(errors="replace").split("\r\n")[0]
        except OSError as e:
            return f"closed ({e.__class__.__name__})"


def soak(port: int, server_pid: int, seconds: float, image: bytes) -> dict:
    counts, latencies, errors = Counter(), [], []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def note(kind: str, status, ok: bool, latency: float | None = None) -> None:
        with lock:
            counts[f"{kind} {status}"] += 1
            if latency is not None and status == 200:
                latencies.append(latency)
            if not ok:
                errors.append(f"{kind}: {status}")

    def good() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                status = post(port, image, "application/octet-stream")
            except OSError as e:
                status = type(e).__name__
            note("good", status, status in (200, 503), time.perf_counter() - start)

    def bad() -> None:
        cases = bad_requests(image)
        while time.perf_counter() < stop:
            for name, body, kind, expected in cases:
                status = post(port, body, kind)
                note(f"bad ({name})", status, status == expected)

    def slow() -> None:
        while time.perf_counter() < stop:
            line = raw_socket(port, 1000, b"\x89PNG" + b"\0" * 996, pause=0.5)
            note("slow", line.split(" ", 1)[-1] if line.startswith("HTTP") else line, " 408 " in line)

    def dropped() -> None:
        while time.perf_counter() < stop:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: "
                          f"{len(image)}\r\n\r\n".encode() + image[: len(image) // 2])
            note("dropped", "closed", True)
            time.sleep(0.2)

    def burst() -> None:
        while time.perf_counter() < stop - 1:
            threads = [threading.Thread(target=lambda: note("burst", post(port, image, "image/png"), True))
                       for _ in range(3 * QUEUE)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(5)

    start_rss = rss_mb(server_pid)
    workers = [threading.Thread(target=f) for f in (good, good, good, good, bad, slow, dropped, burst)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read())
    for key in [k for k in counts if k.startswith("burst ")]:
        if key not in ("burst 200", "burst 503"):
            errors.append(f"{key}: {counts[key]}")
    latencies.sort()

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    return {"seconds": seconds, "counts": dict(sorted(counts.items())), "errors": errors, "good_p50_ms": pct(0.5),
            "good_p99_ms": pct(0.99), "rss_start_mb": round(start_rss, 1), "rss_end_mb": round(rss_mb(server_pid), 1),
            "health": health}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    buffer = io.BytesIO()
    Image.open(args.image).convert("RGB").save(buffer, format="PNG")
    image = buffer.getvalue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "resnetlab", "serve", args.model, "--port", str(port),
                               "--max-queue", str(QUEUE), "--body-timeout", str(BODY_TIMEOUT),
                               "--max-bytes", str(MAX_BYTES), "--max-connections", "64"])
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.1)
        for _ in range(20):  # warm-up: allocations settle before the first RSS reading
            post(port, image, "image/png")
        result = soak(port, server.pid, args.seconds, image)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
