"""Output experts as one module: per task (`outputs.<task>`), its special token's id, its
head (experts/heads.py), its decoder (experts/decoders/) and its loss weights.

Everything here takes tensors, never the model: token ids (B, L), the LLM's last-layer
states and input embeddings at those positions (B, L, D), and the decoder's targets. The
hidden state at each output token (at the token's own position) and that token's input
embedding go through the task's head, routed by the token id, into its decoder. What a
kind of output does lives in its class (`MaskOutput`, `ImageOutput`), found by the head
kind its decoder names: a new kind is a class here, not a branch elsewhere.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from experts.heads import OUTPUT_HEADS, token_states
from onellm.config import OutputConfig, check_kwargs
from onellm.errors import ConfigError


class OutputExpert(nn.Module):
    """One task's output: `head` (LLM states -> decoder conditioning) and `decoder`."""

    field: ClassVar[str]  # the chat reply's list it fills (`masks`, `images`)

    def __init__(self, task: str, head: nn.Module, decoder: nn.Module, token_id: int,
                 cfg: OutputConfig) -> None:  # fmt: skip
        super().__init__()
        self.task, self.head, self.decoder, self.token_id = task, head, decoder, token_id
        self.tokens, self.tune_llm = cfg.tokens, cfg.tune_llm
        self.align = cfg.loss.get("align", 0.0)  # x MSE to the decoder's text encoder's reading
        self.weights = {k: v for k, v in cfg.loss.items() if k != "align"}

    def loss(self, ids, hidden, embeds, targets: dict[str, Any]) -> torch.Tensor:
        """The decoder's loss for a training batch whose answers hold this task's tokens."""
        raise NotImplementedError

    def reply(self, ids, hidden, embeds, pixels: list) -> list[list[Any]]:
        """Per sample, what its output tokens produce (`ids` hold them only where emitted)."""
        raise NotImplementedError


class MaskOutput(OutputExpert):
    """`<seg>` -> one SAM prompt per token -> a mask on the sample's image (LISA)."""

    field = "masks"

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
        MSE from each prompt to the caption encoder's reading of the phrase (detached)."""
        from experts.decoders.sam import mask_loss

        prompts, where = self.prompts(ids, hidden, embeds)
        logits = self.mask_logits(prompts, where, targets["pixels"])
        per = [mask_loss(lg, m[None].expand_as(lg), **self.weights)
               for lg, m in zip(logits, targets["masks"], strict=True) if len(lg)]  # fmt: skip
        if not per:
            return hidden.sum() * 0
        loss = torch.stack(per).mean()
        if self.align and self.decoder.text is not None:
            with torch.no_grad():
                target = self.decoder.text_prompts(targets["phrases"])[where]
            loss = loss + self.align * F.mse_loss(prompts, target)
        return loss

    def reply(self, ids, hidden, embeds, pixels):
        prompts, where = self.prompts(ids, hidden, embeds)
        return [[m > 0 for m in x] for x in self.mask_logits(prompts, where, pixels)]


class ImageOutput(OutputExpert):
    """A run of N `<gen>` -> UNet conditioning -> an image (NExT-GPT)."""

    field = "images"

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
        loss = decoder.loss(targets["images"][where], cond) * self.weights.get("mse", 1.0)
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
        return [[im for im, b in zip(images, where.tolist(), strict=True) if b == i]
                for i in range(ids.shape[0])]  # fmt: skip


OUTPUT_KINDS: dict[str, type[OutputExpert]] = {"seg": MaskOutput, "gen": ImageOutput}


class OutputExperts(nn.ModuleDict):
    """Every task's `OutputExpert`, by task name (`model.outputs["seg"]`)."""

    @property
    def token_ids(self) -> dict[str, int]:
        return {task: out.token_id for task, out in self.items()}

    def emitted(self, ids: torch.Tensor) -> bool:
        """Whether `ids` hold any output token."""
        return bool(len(self)) and bool(
            torch.isin(ids, ids.new_tensor(list(self.token_ids.values()))).any()
        )

    def reply(self, ids, hidden, embeds, pixels: list) -> list[dict[str, list]]:
        """Per sample: {field: values} from every task whose tokens `ids` hold."""
        out: list[dict[str, list]] = [{} for _ in range(ids.shape[0])]
        for expert in self.values():
            if (ids == expert.token_id).any():
                for i, values in enumerate(expert.reply(ids, hidden, embeds, pixels)):
                    out[i][expert.field] = values
        return out


def build_outputs(outputs: dict[str, OutputConfig], *, llm_width: int, vocab_size: int,
                  tokenizer: Any, token_ids: dict[str, int]) -> OutputExperts:  # fmt: skip
    """Each `outputs.<task>`: its decoder, the head that drives it, its token id."""
    from experts.decoders import DECODERS

    experts = OutputExperts()
    for task, out in outputs.items():
        spec = dict(out.decoder)
        kind = spec.pop("type", None)
        if kind is None:
            raise ConfigError(
                f"outputs.{task}.decoder: name its type ({', '.join(DECODERS.names())})"
            )
        if "text" in spec:  # a tiny caption encoder reads the LLM's own vocabulary
            spec["text"] = {"vocab_size": vocab_size, **spec["text"]}
        check_kwargs(DECODERS.get(kind), spec, f"outputs.{task}.decoder")
        decoder = DECODERS.build(kind, tokenizer=tokenizer, **spec)
        head_kwargs = dict(out.head)
        head_kind = head_kwargs.pop("type", decoder.head)
        head_cls = OUTPUT_HEADS.get(head_kind)
        check_kwargs(head_cls, head_kwargs, f"outputs.{task}.head")
        head = head_cls(llm_width=llm_width, out_dim=decoder.condition_dim,
                        num_experts=out.experts, use_embedding=out.use_embedding, **head_kwargs)  # fmt: skip
        experts[task] = OUTPUT_KINDS[decoder.head](task, head, decoder, token_ids[task], out)
    return experts
