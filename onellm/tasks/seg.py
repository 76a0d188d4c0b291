"""seg: "segment the blue triangle" -> the model answers `<seg>`, whose state drives SAM
(experts/output/decoders/sam.py) through the seg output head. The loss: the answer's tokens plus
SAM's mask loss on the named shape (`outputs.seg.loss`). Held out: `seg_miou` through
`model.chat` (a reply without `<seg>` scores 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import binary_erosion

from onellm.data import output_scenes as scenes
from onellm.data.packing import unpack
from onellm.data.sources import Example
from onellm.modeling.modality import HasPixels
from onellm.tasks.sam import pixel_modality
from onellm.training.evaluate import held_out
from onellm.training.task import register
from onellm.training.text_tasks import TextTask


def overlay(image: np.ndarray, mask: np.ndarray, colour=(255, 0, 255)) -> np.ndarray:
    """The (H, W, 3) uint8 image with the (H, W) mask blended over it at half strength in
    `colour` (magenta: no shape of the shapes world has it) and its edge drawn solid."""
    out = image.astype(np.float32)
    m = mask.astype(bool)
    out[m] = 0.5 * out[m] + 0.5 * np.asarray(colour, np.float32)
    out[m & ~binary_erosion(m)] = colour
    return out.astype(np.uint8)


class DecoderTask(TextTask):
    """An answer that holds output tokens, and the decoder's loss on what they drive."""

    def use_turns(self, example, rng, b) -> bool:
        return True

    def loss(self, s, batch, items):
        out = self.forward(s, batch, items, output_hidden_states=True)
        expert = s.model.outputs[self.output]
        ids, hidden, embeds = batch["input_ids"], out.hidden_states[-1], out.hidden_states[0]
        if "unpack" in batch:  # packed rows: the expert reads each sample's own row
            index = batch["unpack"]
            ids, hidden, embeds = (unpack(x, index) for x in (ids, hidden, embeds))
        if not expert.tune_llm:  # the decoder loss trains the head only
            hidden, embeds = hidden.detach(), embeds.detach()
        extra = expert.loss(ids, hidden, embeds, batch["targets"])
        # the decoder loss is a mean per micro-batch
        return out.loss + extra / s.grad_accum, {"decoder_loss": float(extra.detach())}


class Segment(DecoderTask):
    name = "seg"
    output = "seg"
    synthetic_only = True
    metrics = ("seg_miou",)

    def example(self, source, i: int) -> Example:
        mod = source.model.modalities[source.modality]
        sc = scenes.seg_scene(i, "train", source.seed, size=mod.input_shape()[-1])
        targets = {"mask": torch.from_numpy(sc.mask), "pixels": mod.pixels(sc.image)}
        return Example(
            mod.preprocess(sc.image).unsqueeze(0),
            sc.phrase,
            [(sc.prompt, sc.answer)],
            sc.image,
            targets,
        )

    def extra(self, batch: dict[str, Any], examples, b) -> dict[str, Any]:
        batch["targets"] = {
            "phrases": [ex.caption for ex in examples],  # the head's L2 target
            "masks": [ex.targets["mask"] for ex in examples],
            "pixels": [ex.targets["pixels"] for ex in examples],
        }
        return batch

    def evaluate(self, model, *, samples: int, seed: int) -> dict[str, Any]:
        key = pixel_modality(model)
        size = model.modalities[key].input_shape()[-1]

        def score(i: int):
            sc = scenes.seg_scene(i, "test", seed, size=size)
            reply = model.chat(sc.image, modality=key, prompt=sc.prompt, max_new_tokens=4)
            iou = scenes.iou(reply.masks[0].cpu().numpy(), sc.mask) if reply.masks else 0.0
            return {"seg_miou": iou}, sc.prompt, reply.text

        return held_out(model, self.name, samples, score)

    def demo_chat(self, model, directory: Path) -> tuple[dict[str, str], str] | None:
        """The demo's held-out "segment the ..." chat; the input and its mask side by side
        as directory/seg_chat.png."""
        if not any(isinstance(m, HasPixels) for m in model.modalities.values()):
            return None  # no input a mask can be drawn on
        key = pixel_modality(model)
        sc = scenes.seg_scene(7, "test", size=model.modalities[key].input_shape()[-1])
        reply = model.chat(sc.image, modality=key, prompt=sc.prompt, max_new_tokens=4)
        iou = scenes.iou(reply.masks[0].cpu().numpy(), sc.mask) if reply.masks else 0.0
        path = directory / "seg_chat.png"
        if reply.masks:  # the input, and beside it the mask drawn over it
            over = overlay(sc.image, reply.masks[0].cpu().numpy())
            side = np.concatenate([sc.image, over], 1)
            Image.fromarray(side).resize((512, 256), Image.NEAREST).save(path)
        record = {
            "modality": key,
            "prompt": sc.prompt,
            "reply": reply.text,
            "truth": f"a mask, IoU {iou:.2f}",
            "file": str(path) * bool(reply.masks),
        }
        return (
            record,
            f"[{key}] {sc.prompt} -> {len(reply.masks)} mask(s), IoU {iou:.2f}   ({path})",
        )


register(Segment())
