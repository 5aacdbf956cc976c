"""`resnetlab models`: the registered model names."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model names")
    p.add_argument("--params", action="store_true", help="also build each model and count its parameters")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.models import get_model, list_models, model_entry

    for name in list_models():
        e = model_entry(name)
        extra = ""
        if args.params:
            n = sum(p.numel() for p in get_model(name, num_classes=1000).parameters())
            extra = f"  {n / 1e6:6.1f} M params (1000 classes)"
        pre = "pretrained" if e.pretrained else "          "
        print(f"{name:<20} {e.default_size:>4} px  {pre}  {e.description}{extra}")
    return 0
