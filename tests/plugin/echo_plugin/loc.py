"""The `loc` output kind: each `<loc>` token's state -> a point (x, y) in the unit square,
the reply's `locations`. Its decoder, `coords`, squashes the head's two numbers."""

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from onellm.modeling.outputs import OutputExpert
from onellm.registry import DECODERS, OUTPUT_KINDS


class LocHead(nn.Module):
    def __init__(self, *, llm_width, out_dim, num_experts=1, use_embedding=True):
        super().__init__()
        self.use_embedding = use_embedding
        self.proj = nn.Linear(llm_width * (2 if use_embedding else 1), out_dim)

    def forward(self, states, embeddings=None):
        x = torch.cat([states, embeddings], -1) if self.use_embedding else states
        return self.proj(x), None


class Coords(nn.Module):
    condition_dim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sigmoid()


def coords_decoder(*, tokenizer=None) -> Coords:
    return Coords()


class LocOutput(OutputExpert):
    field, item, head_class, decoder_type = "locations", "location", LocHead, "coords"

    def points(self, ids, hidden, embeds):
        where = ids == self.token_id
        return self.decoder(self.head(hidden[where], embeds[where])[0]), where.nonzero()[:, 0]

    def loss(self, ids, hidden, embeds, targets):
        points, _ = self.points(ids, hidden, embeds)
        return F.mse_loss(points, targets["locations"].to(points))

    def reply(self, ids, hidden, embeds, pixels):
        points, rows = self.points(ids, hidden, embeds)
        rows = rows.tolist()
        return [[p for p, r in zip(points, rows, strict=True) if r == i] for i in range(len(ids))]

    @staticmethod
    def as_png(item):
        image = Image.new("L", (32, 32))
        x, y = (float(v) * 31 for v in item)
        ImageDraw.Draw(image).ellipse((x - 2, y - 2, x + 2, y + 2), fill=255)
        return image


DECODERS.register("coords", coords_decoder)
OUTPUT_KINDS.register("loc", LocOutput)
