"""Image files read with PIL, safely and small (image, video frames, depth and normal maps).

- Only the formats onellm reads are identified (`IMAGE_FORMATS`): PIL left alone would
  also identify EPS and hand it to Ghostscript, another program, on a host that has it.
- The size is checked from the header before decoding (`ONELLM_MAX_PIXELS`), and so is
  the memory the decoded image would take (`ONELLM_MAX_DECODE_MB`, onellm/modeling/
  media_limits.py): PIL decodes a PNG, GIF, WebP, BMP or TIFF at its full size, at 1 to 4
  bytes a pixel, so a small file of many flat pixels could fill memory.
- A JPEG is decoded at 1/2, 1/4 or 1/8 of its size by libjpeg (`draft`) when the
  modality needs less, so a 40 MP photo costs what a few MP do.
- A large image is reduced in PIL, in 8-bit, before it becomes float (`shrink`): an
  integer box reduction (`Image.reduce`) that keeps the short side at least twice what
  the modality takes. Images under 4 x the model's size on the short side are untouched,
  so their numbers are exactly those of OneLLM's transform.
- Animated GIF / WebP: only the first frame is decoded here (video.py reads frames).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFile, UnidentifiedImageError

from onellm.errors import ConfigError, InputError
from onellm.modeling.media_limits import IMAGE_FORMATS, check_decode, check_pixels
from onellm.modeling.modality import as_path, check_readable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HIGH_BIT = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}
ASPECT = 4  # a longer side beyond 4 short sides is cropped: the centre crop takes the middle
STRIP_BYTES = 1 << 20  # modes Image.reduce cannot average are converted this much at a time
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """A cut file is an error, whatever the process set: lmms-eval sets PIL's global
    LOAD_TRUNCATED_IMAGES when it is imported, and PIL then fills a cut image with grey."""
    before, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def open_image(
    name: str, path: Any, fit: int | None = None, max_side: int | None = None
) -> Image.Image:
    """An image file, decoded and upright (EXIF orientation applied), in its own mode;
    `InputError` for a missing, corrupt, oversized or other-format file. `fit`: the
    short side the caller resizes to (large images are reduced towards twice it);
    `max_side`: reduce until the long side is at most this (see `shrink`)."""
    p = check_readable(name, as_path(path))
    label = repr(str(p))
    try:
        with warnings.catch_warnings(), strict_decoding():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ours is below
            im = Image.open(p, formats=IMAGE_FORMATS)
        with im, strict_decoding():
            check_pixels(name, *im.size, label)
            if im.format in ("JPEG", "MPO") and (fit or max_side):
                im.draft(im.mode, draft_size(im.size, fit, max_side))
            check_decode(name, im.size, im.mode, label)
            turn = UPRIGHT.get(im.getexif().get(0x0112))
            im.load()  # the first frame only, for an animated file
            small = shrink(im, fit, max_side)
            small = small.transpose(turn) if turn is not None else small
            return small  # closing `im` closes its file; its pixels stay
    except (InputError, ConfigError):  # a bad limit setting, too
        raise
    except UnidentifiedImageError as e:
        raise InputError(
            f"{name}: expected an image file in one of the formats onellm reads "
            f"({', '.join(IMAGE_FORMATS)}), got unreadable {label}: none of them, or damaged"
        ) from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{name}: expected an image file, got unreadable {label}: {e}") from e


def reduce_factor(size: tuple[int, int], fit: int | None, max_side: int | None) -> int:
    """The integer factor `shrink` divides a `size` image by (1: untouched)."""
    short, long = min(size), max(size)
    k = 1
    if fit:
        k = max(k, short // (2 * fit))
    if max_side:
        k = max(k, -(-long // max_side))
    return k


def draft_size(size: tuple[int, int], fit: int | None, max_side: int | None) -> tuple[int, int]:
    """The size asked of libjpeg's scaled decoding: it picks the smallest scale (1/8 ..
    1) whose image is at least this, so no JPEG is decoded smaller than `shrink` makes it."""
    k = reduce_factor(size, fit, max_side)
    return (size[0] // k, size[1] // k)


def shrink(im: Image.Image, fit: int | None, max_side: int | None = None) -> Image.Image:
    """A loaded image made small in 8 bits: a long side beyond `ASPECT` short sides is
    cropped to its middle (only with `fit`), then an integer box reduction (see
    `reduce_factor`). Returns `im` itself when nothing changes."""
    w, h = im.size
    if fit and max(w, h) > ASPECT * min(w, h):
        keep = ASPECT * min(w, h)
        left, top = (w - keep) // 2 if w > h else 0, (h - keep) // 2 if h > w else 0
        im = im.crop((left, top, left + min(w, keep), top + min(h, keep)))
    k = reduce_factor(im.size, fit, max_side)
    return reduce_by(im, k) if k > 1 else im


def fit_array(x: np.ndarray, fit: int | None) -> np.ndarray:
    """A float map (H, W[, C]) made small as `shrink` makes an image: a long side over
    `ASPECT` short sides cropped to its middle, then every k-th pixel kept (a view: a
    depth or normal map is not averaged across an object's edge)."""
    if not fit or x.ndim < 2:
        return x
    h, w = x.shape[:2]
    if max(h, w) > ASPECT * min(h, w):
        keep = ASPECT * min(h, w)
        x = x[(h - keep) // 2 :][:keep] if h > w else x[:, (w - keep) // 2 :][:, :keep]
    k = reduce_factor((x.shape[1], x.shape[0]), fit, None)
    return x[::k, ::k] if k > 1 else x


def reduce_by(im: Image.Image, k: int) -> Image.Image:
    """`Image.reduce(k)`; a mode it cannot average (palette, one-bit, 16-bit) is first
    converted, strip by strip, so no full-size converted copy is made."""
    mode = {"1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}.get(im.mode)
    if im.mode in ("P", "PA"):
        mode = "RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB"
    if mode is None:
        return im.reduce(k)
    w, h = im.size
    rows = max(1, STRIP_BYTES // (4 * w * k)) * k
    out = Image.new(mode, (-(-w // k), -(-h // k)))
    for top in range(0, h, rows):
        strip = im.crop((0, top, w, min(h, top + rows))).convert(mode)
        out.paste(strip.reduce(k), (0, top // k))
    return out


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """A PIL image in any mode -> float (3, H, W) in [0, 1]."""
    if im.mode in HIGH_BIT or im.mode in ("I", "F"):
        x = np.asarray(im, dtype=np.float32)
        top = HIGH_BIT.get(im.mode) or (65535.0 if im.mode == "I" and x.max() <= 65535 else None)
        x = x / top if top else x  # "F" (float) is taken as given, "I" beyond 16 bits as is
        x = np.clip(x, 0.0, 1.0) if top else x
        return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(0).expand(3, -1, -1).float()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        page = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(page, im.convert("RGBA"))
    return TF.to_dtype(TF.to_image(im.convert("RGB")), torch.float32, scale=True)


def image_files(name: str, folder: Path) -> list[Path]:
    """A folder's image files (frames), sorted by name."""
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            f"{name}: expected a folder of frame images, got {str(folder)!r} with none"
        )
    return files
