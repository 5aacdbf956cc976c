"""Decoding one image file into a uint8 array the model can take, whatever its mode.

Pillow opens it; every mode (1, L, P, RGBA, LA, CMYK, I;16, I, F, YCbCr...) is
brought to RGB or L here, so nothing downstream sees an odd mode. A file that
cannot be decoded raises BadImage with the reason, for on_bad_image=skip|fail.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnetlab.data.archive import member_bytes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}

# A 10,000 x 10,000 image is 100 Mpx; Pillow warns at 89 Mpx and errors at twice that.
# Classifier inputs are tiny, so anything past this is a decompression bomb, not a photo.
MAX_PIXELS = 100_000_000


class BadImage(Exception):
    """The file is not a decodable image; str(e) says why."""


class NotAnImage(BadImage):
    """Pillow recognises no image format at all (a text file, random bytes), as opposed to a damaged image."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def open_image(source: str | Path | bytes) -> Image.Image:
    """Open and fully decode a file (or bytes, e.g. an HTTP body); raise BadImage on empty,
    truncated, bomb or non-image input."""
    try:
        if not isinstance(source, bytes) and (inside := member_bytes(source)) is not None:
            source = inside  # a member of a tar shard (data/archive.py)
        if (len(source) if isinstance(source, bytes) else Path(source).stat().st_size) == 0:
            raise BadImage("empty file (0 bytes)")
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise BadImage(f"{img.width}x{img.height} px is larger than {MAX_PIXELS:,} px")
            img.load()  # decode now: truncation shows here, not later in a worker
            # loaded: the pixels outlive the file closing at the end of this block, no copy needed
            return img if img.mode != "P" else img.convert("RGBA" if "transparency" in img.info else "RGB")
    except BadImage:
        raise
    except FileNotFoundError:  # listed with the data set, gone (or renamed) before it was decoded
        raise BadImage("the file no longer exists (deleted or moved after the data set was listed)") from None
    except UnidentifiedImageError:
        raise NotAnImage("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"cannot decode: {e}") from None


def to_array(img: Image.Image) -> tuple[np.ndarray, bool]:
    """(H, W, 3) uint8 RGB, and whether the source was grey (so all-grey data can keep 1 channel)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and 32-bit grey: scale the real range to 0-255 instead of clipping at 255
        a = np.asarray(img, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        if mode == "F" and a.max() <= 1.0:
            top = 1.0
        grey = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2), True
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # transparent pixels carry arbitrary colour; composite on white as a viewer shows them
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB")), mode in ("LA",)
    return np.array(img.convert("RGB")), mode in GREY_MODES


def fit_size(img: Image.Image, size: int, resize: str) -> Image.Image:
    """Square ``size`` px: squash the whole image, or resize the short side and centre-crop."""
    if size <= 0 or img.size == (size, size):
        return img
    if resize == "squash":
        return img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def crop_box(img: Image.Image, box, margin: float) -> Image.Image:
    """Crop to an annotated region (x1, y1, x2, y2, inclusive px), widened by ``margin`` of its size
    on each side and kept inside the image: a sign cropped flush loses the border that tells
    its shape apart."""
    x1, y1, x2, y2 = (int(v) for v in box)
    dx, dy = margin * (x2 - x1 + 1), margin * (y2 - y1 + 1)
    left, top = max(0, round(x1 - dx)), max(0, round(y1 - dy))
    right, bottom = min(img.width, round(x2 + 1 + dx)), min(img.height, round(y2 + 1 + dy))
    if right - left < 1 or bottom - top < 1:
        return img  # a box outside the image: keep the whole photo rather than nothing
    return img.crop((left, top, right, bottom))


def load_array(source: str | Path | bytes, size: int, resize: str, box=None,
               margin: float = 0.1) -> tuple[np.ndarray, bool]:
    """Decode, convert, crop to ``box`` if given, and resize one file (or bytes): ((size, size, 3) uint8, was_grey)."""
    img = open_image(source)
    if box is not None:
        img = crop_box(img, box, margin)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F") and size > 0:
        arr, grey = to_array(img)  # resize after scaling to 8 bit: Pillow resizes few 16-bit modes
        return np.array(fit_size(Image.fromarray(arr), size, resize)), grey
    arr, grey = to_array(fit_size(img, size, resize))
    return arr, grey
