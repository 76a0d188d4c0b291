"""t2i: the tiny UNet's own pretraining, without the LLM: the denoising MSE of "a green
square" rendered, under its caption's text states. The loss is a mean over images. Held
out: `t2i_color_accuracy`, the share of sampled images whose dominant colour is the one
named."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from onellm.data import output_scenes as scenes
from onellm.data.sources import Example
from onellm.training.evaluate import held_out
from onellm.training.task import Task, register


def gen_example(source, i: int, *, turns: bool) -> Example:
    """Training scene i of "draw a {colour} {shape}": the caption is the named phrase, what
    the decoders' text encoders read; the target image in [0, 1] (3, S, S)."""
    m = source.model
    sc = scenes.gen_scene(
        i,
        "train",
        source.seed,
        size=m.outputs["gen"].decoder.image_size,
        tokens=m.config.outputs["gen"].tokens,
    )
    image = torch.from_numpy(sc.target).permute(2, 0, 1).float() / 255
    return Example(
        None, sc.phrase, [(sc.prompt, sc.answer)] if turns else [], None, {"image": image}
    )


def colour_score(images: list, colour: str) -> float:
    """1 if the first image's dominant colour is `colour` (no image: wrong)."""
    got = scenes.dominant_colour(np.asarray(images[0])) if images else None
    return float(got == colour)


class TextToImage(Task):
    name = "t2i"
    output = "gen"
    text_only = synthetic_only = True
    metrics = ("t2i_color_accuracy",)

    def example(self, source, i: int) -> Example:
        return gen_example(source, i, turns=False)

    def collate(self, examples, b) -> list[dict[str, Any]]:
        return [
            {
                "image": torch.stack([ex.targets["image"] for ex in examples]),
                "texts": [ex.caption for ex in examples],
            }
        ]

    def items(self, batch: dict[str, Any]) -> int:
        return len(batch["texts"])

    def loss(self, s, batch, items):
        """The denoising MSE of the target image under the caption's text states."""
        decoder = s.model.outputs[self.output].decoder
        loss = decoder.loss(batch["image"], decoder.caption_states(batch["texts"]))
        return loss * self.items(batch) / items, {}

    def evaluate(self, model, *, samples: int, seed: int) -> dict[str, Any]:
        decoder = model.outputs["gen"].decoder

        def score(i: int):
            sc = scenes.gen_scene(
                i, "test", seed, size=decoder.image_size, tokens=model.config.outputs["gen"].tokens
            )
            images = decoder.sample(decoder.caption_states([sc.phrase]))
            return (
                {"t2i_color_accuracy": colour_score(images, sc.attrs["colour"])},
                sc.prompt,
                sc.phrase,
            )

        return held_out(model, self.name, samples, score)


register(TextToImage())
