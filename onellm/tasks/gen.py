"""gen: "draw a green square" -> the model answers N `<gen>` tokens, whose states
condition the UNet (experts/output/decoders/diffusion.py) through the gen output head. The loss:
the answer's tokens plus the denoising MSE (`outputs.gen.loss`). Held out:
`gen_color_accuracy` through `model.chat` (no image: wrong)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from onellm.data import output_scenes as scenes
from onellm.data.sources import Example
from onellm.tasks.seg import DecoderTask
from onellm.tasks.t2i import colour_score, gen_example
from onellm.training.evaluate import held_out
from onellm.training.task import register


class Generate(DecoderTask):
    name = "gen"
    output = "gen"
    text_only = synthetic_only = True
    metrics = ("gen_color_accuracy",)

    def example(self, source, i: int) -> Example:
        return gen_example(source, i, turns=True)

    def extra(self, batch: dict[str, Any], examples, b) -> dict[str, Any]:
        batch["targets"] = {
            "phrases": [ex.caption for ex in examples],  # the head's L2 target
            "images": torch.stack([ex.targets["image"] for ex in examples]),
        }
        return batch

    def evaluate(self, model, *, samples: int, seed: int) -> dict[str, Any]:
        n = model.config.outputs["gen"].tokens

        def score(i: int):
            sc = scenes.gen_scene(
                i, "test", seed, size=model.outputs["gen"].decoder.image_size, tokens=n
            )
            reply = model.chat(None, prompt=sc.prompt, max_new_tokens=n + 2)
            return (
                {"gen_color_accuracy": colour_score(reply.images, sc.attrs["colour"])},
                sc.prompt,
                reply.text,
            )

        return held_out(model, self.name, samples, score)

    def demo_chat(self, model, directory: Path) -> tuple[dict[str, str], str] | None:
        """The demo's held-out "draw a ..." chat; its image (4x, nearest) as
        directory/gen_chat.png."""
        n = model.config.outputs["gen"].tokens
        sc = scenes.gen_scene(3, "test", tokens=n)
        reply = model.chat(None, prompt=sc.prompt, max_new_tokens=n + 2)
        path = directory / "gen_chat.png"
        got = None
        if reply.images:
            got = scenes.dominant_colour(np.asarray(reply.images[0]))
            reply.images[0].resize((128, 128), Image.NEAREST).save(path)
        record = {
            "modality": "text",
            "prompt": sc.prompt,
            "reply": reply.text,
            "truth": f"an image, dominant colour {got}",
            "file": str(path) * bool(reply.images),
        }
        line = (
            f"[text] {sc.prompt} -> {len(reply.images)} image(s), dominant colour {got}   ({path})"
        )
        return record, line


register(Generate())
