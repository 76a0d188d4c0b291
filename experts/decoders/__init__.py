"""Task decoders behind the output experts: SAM masks (sam.py), diffusion images (diffusion.py).

`DECODERS.build(type, **kwargs)` from a model config's `outputs.<task>.decoder`.
"""

from __future__ import annotations

from onellm.registry import Registry

DECODERS: Registry = Registry("decoder")


@DECODERS.register("sam")
def sam_decoder(*, checkpoint: str | None = None, **sizes):
    """SAM at a variant's (`variant: vit_b`) or given sizes, from an original .pth if given."""
    from experts.decoders.sam import SamMaskDecoder, build_sam

    if "global_attn" in sizes:
        sizes["global_attn"] = tuple(sizes["global_attn"])
    return SamMaskDecoder(build_sam(checkpoint=checkpoint, **sizes))


@DECODERS.register("diffusion")
def diffusion_decoder(*, path: str | None = None, tiny: dict | None = None, steps: int = 20):
    """A UNet or Stable Diffusion directory (`path`), or a tiny random UNet (`tiny: {...}`)."""
    from experts.decoders.diffusion import DiffusionDecoder, tiny_unet

    if path is not None:
        return DiffusionDecoder.from_pretrained(path, steps=steps)
    return DiffusionDecoder(tiny_unet(**(tiny or {})), steps=steps)
