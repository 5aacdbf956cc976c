"""`resnetlab serve MODEL [--host 127.0.0.1 --port 8000]`: HTTP inference with a web page at /."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  resnetlab serve runs/<run>                          # then open http://127.0.0.1:8000/
  resnetlab serve runs/<run>/export/model.int8.onnx --port 8080
  resnetlab serve hf-hub:ORG/NAME                     # a model pushed with resnetlab push
  curl -F files=@photo.jpg http://127.0.0.1:8000/predict
  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' 'http://127.0.0.1:8000/predict?topk=3'
  (a multi-label model answers {"labels": [...], "probabilities": {class: p}} an image; no topk)
"""


def add_parser(sub) -> None:
    p = sub.add_parser("serve",
                       help="serve a run or an export over HTTP: /predict, /health, /classes, /docs, and a page",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder, checkpoint, export (.onnx, .torchscript.pt, .safetensors, .xml), "
                                 "a Hugging Face folder or hf-hub:ORG/NAME")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-bytes", type=int, default=10 * 2**20, help="largest image accepted, in bytes")
    p.add_argument("--max-images", type=int, default=32, help="most images in one request")
    p.add_argument("--batch-size", type=int, default=32, help="most images in one forward pass")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for the model at most; more get 503 (busy) at once")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request body may take to arrive (408 after)")
    p.add_argument("--max-connections", type=int, default=128,
                   help="open connections at most, a new one included: the one that reaches it gets 503")
    p.add_argument("--default-thresholds", action="store_true",
                   help="multi-label runs: where thresholds.json is missing or damaged, decide every class at 0.5")
    p.set_defaults(func=run)


def run(args) -> int:
    import socket
    import sys
    from pathlib import Path

    from resnetlab.deploy.serve import Limits, create_app, load_model, model_task, uvicorn_options
    from resnetlab.errors import UserError

    for name in ("max_bytes", "max_images", "batch_size", "max_queue", "max_connections"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    model = load_model(Path(args.model), default_thresholds=args.default_thresholds)
    task = model_task(model)
    if args.default_thresholds and not task.one_class:
        print(model.threshold_source, file=sys.stderr)
    with socket.socket() as probe:  # a clear line now, rather than uvicorn's traceback later
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as e:
            raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror}): is another server using "
                            "it? choose another --port") from None
    import uvicorn

    if args.body_timeout <= 0:
        raise UserError("--body-timeout must be positive (seconds)")
    limits = Limits(args.max_bytes, args.max_images, args.batch_size, args.batch_wait_ms, args.max_queue,
                    args.body_timeout, args.max_connections)
    app = create_app(model, limits, source=str(args.model))
    kind = "" if task.one_class else f"{task.kind}, "
    print(f"serving {args.model} ({kind}{len(model.classes)} classes) at http://{args.host}:{args.port}/  "
          f"(API docs at /docs; Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **uvicorn_options(limits))
    return 0
