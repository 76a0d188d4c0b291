"""From the LLM's special tokens to decoder outputs: `<seg>` -> masks, `<gen>` groups -> images.

The hidden state at each output token (last layer, at the token's own position) and that
token's input embedding go through the task's output head (experts/output.py), routed by
the token id, into its decoder (experts/decoders/). Used by `chat` after generation, and
by training for the decoder losses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from experts.output import token_states
from onellm.errors import ConfigError

if TYPE_CHECKING:
    from onellm.model import OneLLM


def last_hidden(
    model: OneLLM, ids: torch.Tensor, attention_mask: torch.Tensor | None, blocks: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids with placeholder runs -> last-layer hidden states and input embeddings."""
    embeds = model.embed(ids, blocks)
    out = model.llm(inputs_embeds=embeds, attention_mask=attention_mask,
                    output_hidden_states=True, use_cache=False)  # fmt: skip
    return out.hidden_states[-1], embeds


def seg_prompts(model: OneLLM, ids, hidden, embeds) -> tuple[torch.Tensor, torch.Tensor]:
    """Every `<seg>` in reading order -> SAM prompts (N, C) and their sample index (N,)."""
    states, emb, batch_index = token_states(ids, hidden, embeds, model.output_token_ids["seg"])
    prompts, _ = model.heads["seg"](states, emb)
    return prompts, batch_index


def seg_mask_logits(
    model: OneLLM,
    prompts: torch.Tensor,
    batch_index: torch.Tensor,
    images: list[torch.Tensor | None],
) -> list[torch.Tensor]:
    """Per sample, mask logits (N_i, H, W) at its image's size for its `<seg>` prompts."""
    decoder = model.decoders["seg"]
    # one encoder call per image size (a training batch: one call for all its images)
    sizes = {tuple(im.shape) for im in images if im is not None}
    embedded = {}
    for shape in sizes:
        which = [i for i, im in enumerate(images) if im is not None and tuple(im.shape) == shape]
        emb, size = decoder.embed_images(torch.stack([images[i] for i in which]).to(prompts.device))
        embedded.update({i: (emb[k : k + 1], size) for k, i in enumerate(which)})
    out = []
    for i, image in enumerate(images):
        if image is None:  # a <seg> with nothing to draw on (e.g. about audio): no mask
            out.append(prompts.new_zeros(0, 0, 0))
            continue
        emb, size = embedded[i]
        out += decoder(emb, [prompts[batch_index == i]], size, tuple(image.shape[-2:]))
    return out


def gen_conditions(model: OneLLM, ids, hidden, embeds) -> tuple[torch.Tensor, torch.Tensor]:
    """Every run of N `<gen>` tokens -> UNet conditioning (G, L, C) and sample index (G,)."""
    n = model.config.outputs["gen"].tokens
    states, emb, batch_index = token_states(ids, hidden, embeds, model.output_token_ids["gen"])
    g = states.shape[0] // n
    if g == 0:
        return states.new_zeros(0, 0, model.decoders["gen"].condition_dim), batch_index[:0]
    states, emb = states[: g * n].reshape(g, n, -1), emb[: g * n].reshape(g, n, -1)
    cond, _ = model.heads["gen"](states, emb)
    return cond, batch_index[: g * n : n]


def pretrain_loss(model: OneLLM, task: str, batch: dict) -> torch.Tensor:
    """A tiny decoder's own pretraining, without the LLM. sam: every shape's mask from a
    point inside it, plus (with a text encoder) from the phrase naming it, each LISA's mask
    loss (one image encoding serves all the prompts of an image);
    t2i: the denoising MSE of the target image under the caption's text states."""
    from experts.decoders.sam import mask_loss

    if task == "t2i":
        decoder = model.decoders["gen"]
        return decoder.loss(batch["image"], decoder.caption_states(batch["texts"]))
    decoder, weights = model.decoders["seg"], _weights(model, "seg")
    pixels, masks = batch["pixels"], batch["masks"]
    emb, size = decoder.encode(pixels)  # once, for every prompt of every image
    scale = size[0] / pixels.shape[-2]
    prompt_sets = [[decoder.geometric_prompts(p, None, scale) for p in batch["points"]]]
    if decoder.text is not None:
        counts = [len(p) for p in batch["phrases"]]
        texts = decoder.text_prompts([t for p in batch["phrases"] for t in p])
        prompt_sets.append([t[:, None, :] for t in texts.split(counts)])

    def mean_loss(sparse: list[torch.Tensor]) -> torch.Tensor:
        logits = decoder.decode(emb, sparse, size, tuple(pixels.shape[-2:]))
        per = [mask_loss(lg, m, **weights) for lg, m in zip(logits, masks, strict=True)]
        return torch.stack(per).mean()

    return sum(mean_loss(sparse) for sparse in prompt_sets)


def _weights(model: OneLLM, task: str) -> dict[str, float]:
    """The decoder loss's own weights (`outputs.<task>.loss`, without `align`)."""
    return {k: v for k, v in model.config.outputs[task].loss.items() if k != "align"}


def decoder_loss(
    model: OneLLM, task: str, batch: dict, out: Any, modality: str | None
) -> torch.Tensor:
    """The decoder's loss for a training batch whose answers hold the task's tokens:
    seg: LISA's 2.0 x BCE + 0.5 x Dice per mask (`outputs.seg.loss`); gen: the denoising
    MSE (x `outputs.gen.loss.mse`). With a text encoder in the decoder, plus `align` x the
    MSE from each head output to the text encoder's reading of the named phrase (NExT-GPT's
    L2; the target is detached: the text encoder is what the head learns to imitate).
    `out`: the model's forward with hidden states."""
    from experts.decoders.sam import mask_loss

    ids = batch["input_ids"]
    if modality is not None:  # the forward widened the sequence with the modality block
        ids = model.insert_placeholders(ids, modality)[0]
    hidden, embeds = out.hidden_states[-1], out.hidden_states[0]
    if not model.config.outputs[task].tune_llm:  # the decoder loss trains the head only
        hidden, embeds = hidden.detach(), embeds.detach()
    weights, align = _weights(model, task), model.config.outputs[task].loss.get("align", 0.0)
    decoder = model.decoders[task]
    if task == "seg":
        prompts, where = seg_prompts(model, ids, hidden, embeds)
        logits = seg_mask_logits(model, prompts, where, batch["seg_pixels"])
        per = [mask_loss(lg, m[None].expand_as(lg), **weights)
               for lg, m in zip(logits, batch["seg_masks"], strict=True) if len(lg)]  # fmt: skip
        if not per:
            return hidden.sum() * 0
        loss = torch.stack(per).mean()
        if align and decoder.text is not None:
            with torch.no_grad():
                target = decoder.text_prompts(batch["phrases"])[where]
            loss = loss + align * F.mse_loss(prompts, target)
        return loss
    cond, where = gen_conditions(model, ids, hidden, embeds)
    if not len(cond):
        return hidden.sum() * 0
    loss = decoder.loss(batch["gen_images"][where], cond) * weights.get("mse", 1.0)
    if align and decoder.has_text:
        with torch.no_grad():
            target = decoder.caption_states(batch["phrases"])[where]
        if target.shape != cond.shape:
            raise ConfigError(
                f"gen: the head gives conditioning {tuple(cond.shape[1:])} but the text encoder "
                f"{tuple(target.shape[1:])}; set outputs.gen.head.num_queries to {target.shape[1]}"
            )
        loss = loss + align * F.mse_loss(cond, target)
    return loss


@torch.no_grad()
def attach_outputs(
    model: OneLLM, replies, prompt_ids, attention_mask, blocks, generated, samples
) -> None:
    """Fill `.masks` / `.images` of each reply whose generated text holds output tokens."""
    out_ids = set(model.output_token_ids.values())
    if not out_ids or not any(i in out_ids for row in generated.tolist() for i in row):
        return
    ids = torch.cat([prompt_ids, generated], dim=1)
    mask = torch.cat([attention_mask, torch.ones_like(generated)], dim=1)
    hidden, embeds = last_hidden(model, ids, mask, blocks)
    only_new = torch.zeros_like(ids, dtype=torch.bool)
    only_new[:, prompt_ids.shape[1] :] = True
    ids = ids.masked_fill(~only_new, -1)  # output tokens count only where the model emitted them
    if "seg" in model.heads:
        prompts, where = seg_prompts(model, ids, hidden, embeds)
        masks = seg_mask_logits(model, prompts, where, [_pixels(model, s) for s in samples])
        for reply, m in zip(replies, masks, strict=True):
            reply.masks = [x > 0 for x in m]
    if "gen" in model.heads:
        cond, where = gen_conditions(model, ids, hidden, embeds)
        images = model.decoders["gen"].sample(cond) if len(cond) else []
        for i, reply in enumerate(replies):
            reply.images = [im for im, b in zip(images, where.tolist(), strict=True) if b == i]


def _pixels(model: OneLLM, sample: dict[str, Any]) -> torch.Tensor | None:
    """The sample's first input that can carry a mask (a modality with `pixels`)."""
    for key, raw in sample.items():
        mod = model.modalities[key]
        if hasattr(mod, "pixels"):
            return mod.pixels(raw).to(model.device, model.dtype)
    return None
