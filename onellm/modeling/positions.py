"""Sin-cos position tables, used to initialise randomly built position embeddings.

A random CLIP's positional embedding starts at std 0.02 and carries almost no position;
the projection experts attend without positions of their own (OneLLM's design), so where
a thing is must be inside each token. Real checkpoints bring trained tables; a tiny random
model starts from these (MAE-style 2-D sin-cos for grids, 1-D for sequences).
"""

from __future__ import annotations

import torch


def sincos_1d(n: int, width: int) -> torch.Tensor:
    """(n, width): sin on the first half of the channels, cos on the second."""
    half = width // 2
    freq = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1)))
    angle = torch.arange(n, dtype=torch.float64)[:, None] * freq[None]
    out = torch.zeros(n, width, dtype=torch.float64)
    out[:, :half], out[:, half : 2 * half] = angle.sin(), angle.cos()
    return out.float()


def sincos_2d(rows: int, cols: int, width: int) -> torch.Tensor:
    """(rows * cols, width), row-major: half the channels encode the row, half the column."""
    r = sincos_1d(rows, width // 2)[:, None, :].expand(rows, cols, -1)
    c = sincos_1d(cols, width - width // 2)[None, :, :].expand(rows, cols, -1)
    return torch.cat([r, c], dim=-1).reshape(rows * cols, width)


def with_class_slot(table: torch.Tensor) -> torch.Tensor:
    """Prepend a zero row for the class token."""
    return torch.cat([table.new_zeros(1, table.shape[1]), table])
