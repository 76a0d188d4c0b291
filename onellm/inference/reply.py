"""A chat reply: its text, its token ids, and what the output experts made, by kind."""

from __future__ import annotations

from pathlib import Path

import torch

from onellm.modeling.outputs import OutputExpert
from onellm.registry import OUTPUT_KINDS


def reply_fields() -> dict[str, type[OutputExpert]]:
    """Each output kind's reply field (`masks`, `images`, ...) -> the kind's class."""
    return {cls.field: cls for _, cls in OUTPUT_KINDS.items()}


def _same(a: dict[str, list], b: dict[str, list]) -> bool:
    """Outputs equal item by item (tensors by value, pictures by their pixels)."""
    a, b = ({k: v for k, v in d.items() if v} for d in (a, b))
    if a.keys() != b.keys() or any(len(a[k]) != len(b[k]) for k in a):
        return False
    pairs = [(x, y) for k in a for x, y in zip(a[k], b[k], strict=True)]
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y
        for x, y in pairs
    )


class ChatResponse:
    """One reply: `.text`, `.token_ids`, and `.outputs`, what the output experts produced
    by reply field (each output kind names its own: `masks`, `images`, ...), also read as
    attributes (`reply.masks`; empty where the reply holds none)."""

    def __init__(self, text: str, token_ids: list[int] | None = None, **outputs: list) -> None:
        self.text = text
        self.token_ids = list(token_ids or [])
        self.outputs: dict[str, list] = dict(outputs)

    def __getattr__(self, name: str) -> list:
        if not name.startswith("_") and name in reply_fields():
            return self.outputs.get(name, [])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChatResponse):
            return NotImplemented
        return (self.text, self.token_ids) == (other.text, other.token_ids) and _same(
            self.outputs, other.outputs
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        held = ", ".join(f"{k}={len(v)}" for k, v in self.outputs.items() if v)
        return f"ChatResponse(text={self.text!r}{', ' + held if held else ''})"

    def save(self, directory: str | Path, stem: str = "reply") -> list[Path]:
        """Write each output item as `directory/{stem}-{item}-{i}.png` (a mask black and
        white at the input's resolution, an image as it is); -> the paths written."""
        out, kinds, paths = Path(directory), reply_fields(), []
        for field, items in self.outputs.items():
            kind = kinds.get(field, OutputExpert)  # draws its items; names their files
            item_name = kind.item if field in kinds else field
            for i, item in enumerate(items):
                out.mkdir(parents=True, exist_ok=True)
                paths.append(out / f"{stem}-{item_name}-{i}.png")
                kind.as_png(item).save(paths[-1])
        return paths
