"""fMRI: one voxel vector per scan, (1, voxels) (OneLLM's NSD loader: 15724 voxels).

Tokens: a Linear to `tokens` x W, read channel-major as OneLLM does (token t takes
channel c from output c * tokens + t), plus a learned positional embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from modalities.image import scene_of
from onellm.data.draw import Scene
from onellm.data.language import COLOURS, PLACES, SHAPES
from onellm.errors import InputError
from onellm.modality import MODALITIES, EncoderInfo, as_float_array, as_path, load_array_file
from onellm.positions import sincos_1d, with_class_slot


class FMRITokenizer(nn.Module):
    """(B, 1, F) or (B, F) -> (B, 1, tokens, W)."""

    def __init__(self, *, width: int, voxels: int, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(voxels, tokens * width)
        self.position_embedding = nn.Parameter(with_class_slot(sincos_1d(tokens, width)))

    def forward(self, x: torch.Tensor, encoder: Any) -> torch.Tensor:
        y = self.proj(x.reshape(x.shape[0], -1))
        return rearrange(y, "b (w t) -> b 1 t w", t=self.tokens)  # channel-major, as OneLLM


class FMRIModality:
    name = "fmri"

    def __init__(self, *, voxels: int = 15724, tokens: int = 8) -> None:
        self.voxels, self.tokens = voxels, tokens

    def input_shape(self) -> tuple[int | None, ...]:
        return (1, self.voxels)

    def preprocess(self, raw: Any) -> torch.Tensor:
        path = as_path(raw)
        if path is not None:
            raw = load_array_file(self.name, path)
        x = as_float_array(self.name, raw, f"a voxel vector ({self.voxels},)").reshape(-1)
        if x.shape[0] != self.voxels:
            raise InputError(f"{self.name}: expected {self.voxels} voxels, got {x.shape[0]}")
        return torch.from_numpy(x).unsqueeze(0)

    def build_tokenizer(self, *, encoder: EncoderInfo) -> nn.Module:
        return FMRITokenizer(width=encoder.width, voxels=self.voxels, tokens=self.tokens)

    def render(self, rng: np.random.Generator) -> Scene:
        """A voxel response to an image scene: a fixed random mixing of the scene's
        attributes (one-hot colour, shape, place) plus noise; captioned as that scene."""
        shape, colour, place = rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(list(PLACES))
        code = np.zeros(len(COLOURS) + len(SHAPES) + len(PLACES), dtype=np.float32)
        code[
            [
                COLOURS.index(colour),
                len(COLOURS) + SHAPES.index(shape),
                len(COLOURS) + len(SHAPES) + list(PLACES).index(place),
            ]
        ] = 1
        mixing = (
            np.random.default_rng(1234).normal(0, 1, (self.voxels, code.size)).astype(np.float32)
        )
        voxels = mixing @ code + rng.normal(0, 0.3, self.voxels).astype(np.float32)
        return scene_of(voxels, shape, colour, place)


MODALITIES.register("fmri", FMRIModality)
