"""The `gen` output kind: a run of N `<gen>` -> UNet conditioning -> an image (NExT-GPT).
Its reply field is `images`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onellm.errors import ConfigError
from onellm.experts.output.heads import GenHead, token_states
from onellm.modeling.outputs import OutputExpert
from onellm.registry import OUTPUT_KINDS


class ImageOutput(OutputExpert):
    """A run of N `<gen>` -> UNet conditioning -> an image (NExT-GPT)."""

    field = "images"
    item = "image"
    head_class = GenHead
    decoder_type = "diffusion"

    def conditions(self, ids, hidden, embeds) -> tuple[torch.Tensor, torch.Tensor]:
        """Every run of N `<gen>` -> conditioning (G, L, C) and its sample index (G,)."""
        n = self.tokens
        states, emb, batch_index = token_states(ids, hidden, embeds, self.token_id)
        g = states.shape[0] // n
        if g == 0:
            return states.new_zeros(0, 0, self.decoder.condition_dim), batch_index[:0]
        states, emb = states[: g * n].reshape(g, n, -1), emb[: g * n].reshape(g, n, -1)
        return self.head(states, emb)[0], batch_index[: g * n : n]

    def loss(self, ids, hidden, embeds, targets):
        """The denoising MSE (x `outputs.gen.loss.mse`), plus `align` x the MSE to the text
        encoder's caption states (NExT-GPT's L2; detached)."""
        cond, where = self.conditions(ids, hidden, embeds)
        if not len(cond):
            return hidden.sum() * 0
        decoder = self.decoder
        mse = self.weights.get("mse", 1.0)  # 0: the UNet does not run, the L2 alone trains
        loss = decoder.loss(targets["images"][where], cond) * mse if mse else cond.new_zeros(())
        if self.align and decoder.has_text:
            with torch.no_grad():
                target = decoder.caption_states(targets["phrases"])[where]
            if target.shape != cond.shape:
                raise ConfigError(
                    f"{self.task}: the head gives conditioning {tuple(cond.shape[1:])} but the "
                    f"text encoder {tuple(target.shape[1:])}; set outputs.{self.task}.head."
                    f"num_queries to {target.shape[1]}"
                )
            loss = loss + self.align * F.mse_loss(cond, target)
        return loss

    def reply(self, ids, hidden, embeds, pixels):
        cond, where = self.conditions(ids, hidden, embeds)
        images = self.decoder.sample(cond) if len(cond) else []
        return [
            [im for im, b in zip(images, where.tolist(), strict=True) if b == i]
            for i in range(ids.shape[0])
        ]


OUTPUT_KINDS.register("gen", ImageOutput)
