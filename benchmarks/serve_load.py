"""Load on `resnetlab serve` over loopback: N concurrent clients for a bounded time.

Starts the server in a subprocess (as a user would), waits for /health, then each
client thread posts one real image at a time for --seconds. Prints requests/s,
p50/p99 latency and the error count (which must be 0).

    .venv/bin/python benchmarks/serve_load.py RUN_OR_EXPORT [--clients 8] [--seconds 20] [--image PATH]
"""

from __future__ import annotations

import argparse
import http.client
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "shared/data/gtsrb/GTSRB/Final_Test/Images/00000.ppm"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "resnetlab", "serve", args.model, "--port", str(port)])
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        body = Path(args.image).read_bytes()
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop = time.perf_counter() + args.seconds

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    conn.request("POST", "/predict?topk=3", body, {"Content-Type": "application/octet-stream"})
                    response = conn.getresponse()
                    response.read()
                    ok = response.status == 200
                except OSError:
                    ok = False
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors[0] += 1

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    print(f"{args.model}: {args.clients} clients for {wall:.1f} s over loopback, image {Path(args.image).name}")
    print(f"requests {len(latencies)}  requests/s {len(latencies) / wall:.1f}  p50 {pct(0.50):.1f} ms  "
          f"p99 {pct(0.99):.1f} ms  errors {errors[0]}")
    return 0 if errors[0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
