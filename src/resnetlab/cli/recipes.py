"""`resnetlab recipes`: the recipes shipped with the package."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("recipes", help="list the shipped recipes")
    p.add_argument("name", nargs="?", help="print this recipe's YAML")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.config import list_recipes, recipe_path

    if args.name:
        print(recipe_path(args.name).read_text(), end="")
        return 0
    for name in list_recipes():
        first = recipe_path(name).read_text().splitlines()[0].lstrip("# ").strip()
        print(f"{name:<28} {first}")
    return 0
