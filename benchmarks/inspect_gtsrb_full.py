"""How long `resnetlab data inspect` takes on a full-size GTSRB training set (39,209 images).

The real subset in ../shared/data has 90 images a class; this script grows it to
the official size (the real per-class counts, 210 to 2,250, in tracks of 30) in
the official INI layout, by copying the real photos with one pixel changed per
copy (so they are not exact duplicates of each other), then times the command.

    .venv/bin/python benchmarks/inspect_gtsrb_full.py [--root /tmp/gtsrb-full]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "gtsrb" / "GTSRB" / "Final_Training" / "Images"
# images per class in the official training set (sum 39,209)
COUNTS = [210, 2220, 2250, 1410, 1980, 1860, 420, 1440, 1410, 1470, 2010, 1320, 2100, 2160, 780, 630, 420, 1110,
          1200, 210, 360, 330, 390, 510, 270, 1500, 600, 240, 540, 270, 450, 780, 240, 689, 420, 1200, 390, 210,
          2070, 300, 360, 240, 240]


def generate(root: Path) -> None:
    images = root / "GTSRB" / "Final_Training" / "Images"
    for cls, count in enumerate(COUNTS):
        src = SHARED / f"{cls:05d}"
        rows = [line.split(";") for line in (src / f"GT-{cls:05d}.csv").read_text().splitlines()[1:]]
        dst = images / f"{cls:05d}"
        dst.mkdir(parents=True, exist_ok=True)
        out = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for n in range(count):
            track, image = divmod(n, 30)
            name, *rest = rows[(track % 3) * 30 + image]
            pixels = np.array(Image.open(src / name))
            pixels[0, 0, 0] = (int(pixels[0, 0, 0]) + 1 + track) % 256  # a distinct copy, not a duplicate
            filename = f"{track:05d}_{image:05d}.ppm"
            Image.fromarray(pixels).save(dst / filename)
            out.append(";".join([filename, *rest]))
        (dst / f"GT-{cls:05d}.csv").write_text("\r\n".join(out) + "\r\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/gtsrb-full")
    args = parser.parse_args()
    root = Path(args.root)
    if not (root / "GTSRB" / "Final_Training" / "Images" / "00042").is_dir():
        start = time.perf_counter()
        generate(root)
        print(f"generated {sum(COUNTS):,} images in {root} ({time.perf_counter() - start:.0f} s)")
    out = root.parent / (root.name + "-inspect")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "resnetlab", "data", "inspect", str(root), "--out", str(out)], check=True)
    wall = time.perf_counter() - start
    s = json.loads((out / "summary.json").read_text())
    print(f"images {s['images']:,}; catalog {s['seconds']['catalog']} s, index (open, decode, hash every image) "
          f"{s['seconds']['index']} s, inspect total {s['seconds']['total']} s, command wall {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
