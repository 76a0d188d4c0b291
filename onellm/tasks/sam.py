"""sam: the tiny SAM's own pretraining, without the LLM. An image of 2-3 shapes; every
shape's mask from a point inside it and (with a text encoder) from the phrase naming it
(LISA's mask loss; one image encoding serves all its prompts). The loss is a mean over
images. Held out: `sam_point_miou` (and `sam_text_miou`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from onellm.data import output_scenes as scenes
from onellm.data.sources import Example
from onellm.experts.output.masks import mask_loss
from onellm.modeling.devices import move
from onellm.modeling.modality import HasPixels
from onellm.training.evaluate import held_out
from onellm.training.task import Task, register


def pixel_modality(model) -> str:
    """The model's first modality whose inputs can carry a mask (it has `pixels`)."""
    return next(k for k, m in model.modalities.items() if isinstance(m, HasPixels))


class Sam(Task):
    name = "sam"
    output = "seg"
    synthetic_only = True
    metrics = ("sam_point_miou", "sam_text_miou")

    def example(self, source, i: int) -> Example:
        mod = source.model.modalities[source.modality]
        sc = scenes.seg_scene(i, "train", source.seed, size=mod.input_shape()[-1])
        points = [
            scenes.point_in(mk, np.random.default_rng([source.seed, i, 11, k]))
            for k, (_, mk) in enumerate(sc.parts)
        ]
        targets = {
            "pixels": mod.pixels(sc.image),  # the pixels as chat reads them
            "masks": torch.from_numpy(np.stack([mk for _, mk in sc.parts])),
            "points": torch.tensor(points),
            "phrases": [p for p, _ in sc.parts],
        }
        return Example(None, sc.phrase, [], sc.image, targets)

    def collate(self, examples, b) -> list[dict[str, Any]]:
        return [
            {
                "pixels": torch.stack([ex.targets["pixels"] for ex in examples]),
                **{k: [ex.targets[k] for ex in examples] for k in ("masks", "points", "phrases")},
            }
        ]

    def items(self, batch: dict[str, Any]) -> int:
        return batch["pixels"].shape[0]

    def loss(self, s, batch, items):
        """Every shape's mask from a point inside it, plus (with a text encoder) from the
        phrase naming it, each LISA's mask loss; one image encoding serves all prompts."""
        expert = s.model.outputs[self.output]
        decoder, pixels, masks = expert.decoder, batch["pixels"], batch["masks"]
        emb, size = decoder.encode(pixels)  # once, for every prompt of every image
        scale = size[0] / pixels.shape[-2]
        prompt_sets = [[decoder.geometric_prompts(p, None, scale) for p in batch["points"]]]
        if decoder.text is not None:
            counts = [len(p) for p in batch["phrases"]]
            texts = decoder.text_prompts([t for p in batch["phrases"] for t in p])
            prompt_sets.append([t[:, None, :] for t in texts.split(counts)])

        def mean_loss(sparse: list[torch.Tensor]) -> torch.Tensor:
            logits = decoder.decode(emb, sparse, size, tuple(pixels.shape[-2:]))
            per = [mask_loss(lg, m, **expert.weights) for lg, m in zip(logits, masks, strict=True)]
            return torch.stack(per).mean()

        loss = sum(mean_loss(sparse) for sparse in prompt_sets)
        return loss * self.items(batch) / items, {}

    def evaluate(self, model, *, samples: int, seed: int) -> dict[str, Any]:
        key = pixel_modality(model)
        size = model.modalities[key].input_shape()[-1]
        decoder = model.outputs["seg"].decoder

        def score(i: int):
            sc = scenes.seg_scene(i, "test", seed, size=size)
            point = scenes.point_in(sc.mask, np.random.default_rng([seed, i, 11]))
            pixels = move(model.modalities[key].pixels(sc.image)[None], model.device, model.dtype)
            got = {"sam_point_miou": decoder.prompted(pixels, points=torch.tensor([point]))}
            if decoder.text is not None:
                got["sam_text_miou"] = decoder.prompted(pixels, texts=[sc.phrase])
            return (
                {k: scenes.iou(v[0].float().cpu().numpy() > 0, sc.mask) for k, v in got.items()},
                sc.prompt,
                f"point {point}",
            )

        return held_out(model, self.name, samples, score)


register(Sam())
