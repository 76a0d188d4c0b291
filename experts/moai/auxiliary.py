"""Auxiliary sources: MoAI's external computer-vision experts, an image in, words out.

MoAI runs panoptic segmentation, open-world detection, scene-graph generation and OCR on
the image and verbalises what each finds ("a cat at [0.12, 0.40, ...]") into auxiliary
text, which its compressor and mixer read (experts/moai/mixer.py). Here a source is anything
called as `source(pixels, model) -> str`, `pixels` the image (3, H, W) in [0, 1]:

| type         | what it runs                                                      |
| ------------ | ----------------------------------------------------------------- |
| `sam`        | the model's own SAM (the output expert with a SAM decoder, `outputs.seg`), prompted with a grid of points, its masks deduplicated |
| `components` | a colour-region detector: connected components of saturated pixels (scipy.ndimage) |
| a function   | `AUXILIARY.register("mine", fn)`, or `pkg.module:fn` in the YAML  |

Both shipped sources verbalise each region the same way (`describe`): "red ellipse, bottom
left (25, 70), area 6": the mean colour's nearest name, a shape word from how much of its
bounding box the region fills, its centre in words (thirds of the image) and as percent of
the width and height, its area as percent of the image. Regions are listed top to bottom,
then left to right. `coordinates: false` (either source) leaves out the percent and the
area ("red ellipse, bottom left"): the study's tiny LLM reads 2-4 regions in ~10 tokens each
rather than ~20, most of them digits no question asks about; `shapes: [square, circle,
triangle]` names the three fills with the shapes world's words, as a detector's classes
are its world's (MoAI's detectors say "person", "cup": COCO's names, the questions' too).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from onellm.errors import ConfigError, InputError
from onellm.experts.output.decoders.sam import SamMaskDecoder
from onellm.registry import AUXILIARY

COLOUR_NAMES = {  # a basic palette; each region takes the nearest (RGB, 0-255)
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "orange": (240, 140, 30),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
}


SHAPE_NAMES = ("rectangle", "ellipse", "triangle")  # a box, a round thing, a three-cornered one


def shape_word(mask: np.ndarray, names: tuple[str, ...] = SHAPE_NAMES) -> str:
    """How much of its bounding box a region fills: a box ~1, an ellipse ~pi/4, a triangle
    ~1/2; `names`: the words for those three (a detector's class names)."""
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return names[0] if fill >= 0.88 else names[1] if fill >= 0.66 else names[2]


def colour_word(rgb: np.ndarray) -> str:
    names = list(COLOUR_NAMES)
    table = np.array([COLOUR_NAMES[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((table - rgb) ** 2).sum(1)))]


def place_word(percent: int, words: tuple[str, str, str]) -> str:
    """Which third of the image a coordinate (percent) falls in."""
    return words[0] if percent < 100 / 3 else words[2] if percent > 200 / 3 else words[1]


def describe(
    pixels: torch.Tensor,
    masks: list[np.ndarray],
    coordinates: bool = True,
    shapes: tuple[str, ...] = SHAPE_NAMES,
) -> str:
    """Regions (boolean (H, W) masks) of an image (3, H, W) in [0, 1] -> one line of words
    (`coordinates`: the centre in percent and the area too; `shapes`: `shape_word`'s names)."""
    img = pixels.float().permute(1, 2, 0).cpu().numpy() * 255
    h, w = img.shape[:2]
    found = []
    for m in masks:
        ys, xs = np.nonzero(m)
        x, y = round(100 * (xs.mean() + 0.5) / w), round(100 * (ys.mean() + 0.5) / h)
        area = round(100 * m.sum() / (h * w))
        where = f"{place_word(y, ('top', 'middle', 'bottom'))} {place_word(x, ('left', 'centre', 'right'))}"
        words = f"{colour_word(img[m].mean(0))} {shape_word(m, shapes)}, {where}"
        words += f" ({x}, {y}), area {area}" if coordinates else ""
        found.append((y, x, words))
    return "; ".join(words for _, _, words in sorted(found))


def deduplicate(masks: list[np.ndarray], overlap: float = 0.5) -> list[np.ndarray]:
    """Largest first, each mask kept unless more than `overlap` of it lies in a kept one
    (a part of a shape found from a point near its edge is the same shape)."""
    kept: list[np.ndarray] = []
    for m in sorted(masks, key=lambda m: -int(m.sum())):
        if all((m & k).sum() / m.sum() <= overlap for k in kept):
            kept.append(m)
    return kept


def in_range(masks: list[np.ndarray], lo: float, hi: float) -> list[np.ndarray]:
    """Masks covering between `lo` and `hi` of the image (tiny specks and the background out)."""
    return [m for m in masks if lo <= m.mean() <= hi]


def models_sam(model: Any) -> Any:
    """The model's SAM mask decoder: that of its output expert with one (`outputs.seg`'s)."""
    for expert in getattr(model, "outputs", {}).values():
        if isinstance(expert.decoder, SamMaskDecoder):
            return expert.decoder
    raise ConfigError("moai source sam: the model has no output with a SAM decoder (outputs.seg)")


class SamRegions:
    """The model's SAM (`models_sam`) prompted at a `grid` x `grid` of points, as SAM's
    automatic mask generator does: masks kept if stable (the mask at logit > 1 is at least
    `stability` IoU of the one at logit > -1, SAM's stability score) and between `min_area`
    and `max_area` of the image, deduplicated, each verbalised."""

    def __init__(
        self,
        *,
        grid: int = 6,
        min_area: float = 0.004,
        max_area: float = 0.4,
        stability: float = 0.85,
        coordinates: bool = True,
        shapes: tuple[str, ...] = SHAPE_NAMES,
    ) -> None:
        self.grid, self.min_area, self.max_area = grid, min_area, max_area
        self.stability, self.coordinates, self.shapes = stability, coordinates, tuple(shapes)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, model: Any) -> str:
        decoder = models_sam(model)
        h, w = pixels.shape[-2:]
        centres = (torch.arange(self.grid) + 0.5) / self.grid
        points = torch.cartesian_prod(centres * w, centres * h).to(pixels.device)  # (N, 2) x, y
        emb, size = decoder.encode(pixels[None].to(decoder.dtype))
        prompts = decoder.geometric_prompts(points, None, size[0] / h)  # (N, T, C)
        logits = decoder.decode(emb, [prompts], size, (h, w))[0]
        inner, outer = (logits > 1).sum((1, 2)), (logits > -1).sum((1, 2))
        stable = (inner >= self.stability * outer.clamp_min(1)).cpu().numpy()
        masks = [
            m for m, ok in zip((logits > 0).cpu().numpy(), stable, strict=True) if ok and m.any()
        ]
        kept = deduplicate(in_range(masks, self.min_area, self.max_area))
        return describe(pixels, kept, self.coordinates, self.shapes)


class ColourRegions:
    """A detector without learning: pixels whose channels differ by more than `saturation`
    (coloured things on a grey ground), grouped into connected components."""

    def __init__(
        self,
        *,
        saturation: float = 0.25,
        min_area: float = 0.004,
        coordinates: bool = True,
        shapes: tuple[str, ...] = SHAPE_NAMES,
    ) -> None:
        self.saturation, self.min_area = saturation, min_area
        self.coordinates, self.shapes = coordinates, tuple(shapes)

    def __call__(self, pixels: torch.Tensor, model: Any = None) -> str:
        x = pixels.float().cpu()
        coloured = ((x.amax(0) - x.amin(0)) > self.saturation).numpy()
        labels, n = ndimage.label(coloured)
        masks = [labels == i for i in range(1, n + 1)]
        found = [m for m in masks if m.mean() >= self.min_area]
        return describe(pixels, found, self.coordinates, self.shapes)


AUXILIARY.register("sam", SamRegions)
AUXILIARY.register("components", ColourRegions)


def build_source(spec: str | dict[str, Any]) -> Any:
    """`name` or `{type: name, **kwargs}`: a registered source (a class is built with the
    kwargs, a function taken as it is) or an import path `pkg.module:attr`."""
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    kind = spec.pop("type", None)
    if not isinstance(kind, str):
        raise ConfigError(f"moai.sources: expected a name or {{type: name}}, got {kind!r}")
    if ":" in kind:
        module, _, attr = kind.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"moai source {kind!r}: cannot import it: {e}") from e
    else:
        obj = AUXILIARY.get(kind)  # RegistryError listing the sources
    if isinstance(obj, type):
        return obj(**spec)
    if spec:
        raise ConfigError(f"moai source {kind!r}: a function takes no options, got {sorted(spec)}")
    return obj


def run_sources(sources: list[Any], pixels: torch.Tensor | None, model: Any) -> str:
    """Every source's words about one image (None: an input with no pixels says nothing)."""
    if pixels is None:
        return ""
    if pixels.dim() != 3 or pixels.shape[0] != 3:
        raise InputError(
            f"moai: expected an image (3, H, W) for the sources, got {tuple(pixels.shape)}"
        )
    return " | ".join(filter(None, (str(s(pixels, model)) for s in sources)))
