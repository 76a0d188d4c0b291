"""Task decoders behind the output experts: SAM masks (sam.py), diffusion images (diffusion.py).

`DECODERS.build(type, **kwargs)` from a model config's `outputs.<task>.decoder`.
"""

from __future__ import annotations

from onellm.registry import Registry

DECODERS: Registry = Registry("decoder")


@DECODERS.register("sam")
def sam_decoder(*, checkpoint: str | None = None, text: dict | None = None, tokenizer=None,
                **sizes):  # fmt: skip
    """SAM at a variant's (`variant: vit_b`) or given sizes, from an original .pth if given;
    `text: {vocab_size, width, layers, length}` adds a caption encoder for text prompts."""
    from experts.decoders.sam import SamMaskDecoder, build_sam

    if "global_attn" in sizes:
        sizes["global_attn"] = tuple(sizes["global_attn"])
    sam = build_sam(checkpoint=checkpoint, **sizes)
    return SamMaskDecoder(sam, text=_caption_encoder(text, sam.prompt_encoder.embed_dim, tokenizer))


@DECODERS.register("diffusion")
def diffusion_decoder(*, path: str | None = None, tiny: dict | None = None, steps: int = 20,
                      text: dict | None = None, tokenizer=None):  # fmt: skip
    """A UNet or Stable Diffusion directory (`path`), or a tiny random UNet (`tiny: {...}`);
    `text: {...}` gives the tiny UNet a caption encoder (an SD directory has its own)."""
    from experts.decoders.diffusion import DiffusionDecoder, tiny_unet

    if path is not None:
        return DiffusionDecoder.from_pretrained(path, steps=steps)
    unet = tiny_unet(**(tiny or {}))
    text_encoder = _caption_encoder(text, unet.config.cross_attention_dim, tokenizer)
    return DiffusionDecoder(unet, steps=steps, text=text_encoder)


def _caption_encoder(spec: dict | None, out_dim: int, tokenizer):
    """A tiny caption encoder reading `tokenizer` (the LLM's), if `spec` asks for one."""
    from experts.decoders.text import CaptionEncoder

    if spec is None:
        return None
    return CaptionEncoder(out_dim=out_dim, tokenizer=tokenizer, **spec)
