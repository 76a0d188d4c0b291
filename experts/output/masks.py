"""The `seg` output kind: `<seg>` -> one SAM prompt per token -> a mask on the sample's
image (LISA). Its reply field is `masks`, drawn over the input it was asked about."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onellm.experts.output.heads import SegHead, token_states
from onellm.modeling.outputs import OutputExpert
from onellm.registry import OUTPUT_KINDS


def mask_loss(
    logits: torch.Tensor, target: torch.Tensor, bce: float = 2.0, dice: float = 0.5
) -> torch.Tensor:
    """LISA's mask loss: `bce` x per-pixel BCE + `dice` x Dice, over (N, H, W) masks."""
    target = target.to(logits.dtype)
    b = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    d = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce * b + dice * d.mean()


class MaskOutput(OutputExpert):
    """`<seg>` -> one SAM prompt per token -> a mask on the sample's image (LISA)."""

    field = "masks"
    item = "mask"
    head_class = SegHead
    decoder_type = "sam"
    on_input = True

    def prompts(self, ids, hidden, embeds) -> tuple[torch.Tensor, torch.Tensor]:
        """Every `<seg>` in reading order -> SAM prompts (N, C) and their sample index (N,)."""
        states, emb, batch_index = token_states(ids, hidden, embeds, self.token_id)
        return self.head(states, emb)[0], batch_index

    def mask_logits(self, prompts, batch_index, images: list) -> list[torch.Tensor]:
        """Per sample, mask logits (N_i, H, W) at its image's size for its `<seg>` prompts."""
        decoder = self.decoder
        # one encoder call per image size (a training batch: one call for all its images)
        sizes = {tuple(im.shape) for im in images if im is not None}
        embedded = {}
        for shape in sizes:
            which = [
                i for i, im in enumerate(images) if im is not None and tuple(im.shape) == shape
            ]
            stack = torch.stack([images[i] for i in which]).to(prompts.device)
            emb, size = decoder.embed_images(stack)
            embedded.update({i: (emb[k : k + 1], size) for k, i in enumerate(which)})
        out = []
        for i, image in enumerate(images):
            if image is None:  # a <seg> with nothing to draw on (e.g. about audio): no mask
                out.append(prompts.new_zeros(0, 0, 0))
                continue
            emb, size = embedded[i]
            out += decoder(emb, [prompts[batch_index == i]], size, tuple(image.shape[-2:]))
        return out

    def loss(self, ids, hidden, embeds, targets):
        """LISA's 2.0 x BCE + 0.5 x Dice per mask (`outputs.seg.loss`), plus `align` x the
        MSE from each prompt to the caption encoder's reading of the phrase (detached). With
        bce and dice 0 SAM does not run: the head learns from the alignment alone."""
        prompts, where = self.prompts(ids, hidden, embeds)
        if not len(prompts):
            return hidden.sum() * 0
        loss = hidden.new_zeros(())
        if any(self.weights.values()):
            logits = self.mask_logits(prompts, where, targets["pixels"])
            per = [
                mask_loss(lg, m[None].expand_as(lg), **self.weights)
                for lg, m in zip(logits, targets["masks"], strict=True)
                if len(lg)
            ]
            loss = torch.stack(per).mean() if per else loss
        if self.align and self.decoder.text is not None:
            with torch.no_grad():
                target = self.decoder.text_prompts(targets["phrases"])[where]
            loss = loss + self.align * F.mse_loss(prompts, target)
        return loss

    def reply(self, ids, hidden, embeds, pixels):
        prompts, where = self.prompts(ids, hidden, embeds)
        return [[m > 0 for m in x] for x in self.mask_logits(prompts, where, pixels)]


OUTPUT_KINDS.register("seg", MaskOutput)
