"""The generation decoder: a diffusers `UNet2DConditionModel` conditioned on the `<gen>` head.

The gen head's output (B, L, C) is the UNet's `encoder_hidden_states` (C = its
`cross_attention_dim`). Training: DDPM noise, the epsilon MSE (NExT-GPT's denoising
loss). Sampling: DDIM, `steps` steps. Two forms, loaded through diffusers' own calls:

- a UNet directory (`UNet2DConditionModel.save_pretrained`): denoises pixels in [-1, 1];
  the tiny one serves tests and the demo;
- a Stable Diffusion directory (`model_index.json`): `StableDiffusionPipeline
  .from_pretrained(dir)`; latents through its VAE, sampling via `pipeline(prompt_embeds=...)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from torch import nn

from onellm.errors import CheckpointError, ConfigError, InputError
from onellm.experts.output.decoders.text import caption_encoder
from onellm.registry import DECODERS


def tiny_unet(
    *, sample_size: int = 16, channels: int = 3, cross_dim: int = 32
) -> UNet2DConditionModel:
    """A small pixel-space UNet with cross-attention (tests, demo).

    Attention only at the lowest resolution: at 32 px, self-attention over the full-size
    grid made a batch-32 training step 8.5 s on one CPU core; here it is 0.47 s.
    """
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


class DiffusionDecoder(nn.Module):
    def __init__(
        self,
        unet: UNet2DConditionModel,
        *,
        pipeline: Any = None,
        train_timesteps: int = 1000,
        steps: int = 20,
        text: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.text = text  # tiny scale: its own caption encoder (decoders/text.py)
        self.pipeline = pipeline  # a StableDiffusionPipeline when loaded from an SD dir
        self.vae = pipeline.vae if pipeline is not None else None
        if self.vae is not None:
            self.vae.requires_grad_(False)
        self.noise = DDPMScheduler(num_train_timesteps=train_timesteps)
        self.steps = steps

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> DiffusionDecoder:
        p = Path(path)
        if (p / "model_index.json").is_file():
            pipe = StableDiffusionPipeline.from_pretrained(
                p, local_files_only=True, safety_checker=None
            )
            return cls(pipe.unet, pipeline=pipe, **kwargs)
        if (p / "config.json").is_file():
            return cls(UNet2DConditionModel.from_pretrained(p, local_files_only=True), **kwargs)
        raise CheckpointError(
            f"diffusion: {p} is neither a Stable Diffusion dir (model_index.json) nor a UNet dir (config.json)"
        )

    @property
    def cross_dim(self) -> int:
        return self.unet.config.cross_attention_dim

    condition_dim = cross_dim  # what an output head must produce

    @property
    def image_size(self) -> int:
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return self.unet.config.sample_size * scale

    @property
    def has_text(self) -> bool:
        return self.text is not None or self.pipeline is not None

    def caption_states(self, texts: list[str]) -> torch.Tensor:
        """Captions -> the text encoder's states (B, L, C) the UNet is conditioned on: the
        target of NExT-GPT's L2 for the `<gen>` head (SD: its CLIP text encoder, L = 77)."""
        if self.text is not None:
            return self.text(texts)[0]
        if self.pipeline is not None:
            with torch.no_grad():
                return self.pipeline.encode_prompt(list(texts), self.unet.device, 1, False)[0]
        raise ConfigError("diffusion: this decoder has no text encoder (outputs.gen.decoder.text)")

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] at `image_size` -> what the UNet denoises."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(
                images,
                size=(self.image_size,) * 2,
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        x = images * 2 - 1
        if self.vae is None:
            return x
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor

    def loss(self, images: torch.Tensor, cond: torch.Tensor, generator=None) -> torch.Tensor:
        """Denoising MSE for target images (B, 3, H, W) in [0, 1] under conditioning (B, L, C)."""
        if cond.shape[-1] != self.cross_dim:
            raise InputError(
                f"diffusion: expected conditioning (B, L, {self.cross_dim}), got {tuple(cond.shape)}"
            )
        x0 = self.to_latents(images)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(
            0,
            self.noise.config.num_train_timesteps,
            (x0.shape[0],),
            generator=generator,
            device=x0.device,
        )
        noisy = self.noise.add_noise(x0, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=cond.to(x0.dtype)).sample
        return F.mse_loss(pred, noise)

    @torch.no_grad()
    def sample(
        self, cond: torch.Tensor, *, steps: int | None = None, seed: int = 0
    ) -> list[Image.Image]:
        """Conditioning (B, L, C) -> B PIL images (DDIM, `steps` steps)."""
        steps = steps or self.steps
        g = torch.Generator(device="cpu").manual_seed(seed)
        if self.pipeline is not None:
            return self.pipeline(
                prompt_embeds=cond,
                guidance_scale=1.0,
                num_inference_steps=steps,
                generator=g,
                output_type="pil",
            ).images
        sched = DDIMScheduler.from_config(self.noise.config)
        sched.set_timesteps(steps)
        c = self.unet.config
        x = torch.randn(cond.shape[0], c.in_channels, c.sample_size, c.sample_size, generator=g)
        x = x.to(cond.device, cond.dtype)
        for t in sched.timesteps:
            eps = self.unet(x, t, encoder_hidden_states=cond).sample
            x = sched.step(eps, t, x).prev_sample
        pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        return [Image.fromarray(p.numpy()) for p in pixels]


def diffusion_decoder(
    *,
    path: str | None = None,
    tiny: dict | None = None,
    steps: int = 20,
    text: dict | None = None,
    tokenizer=None,
):
    """A UNet or Stable Diffusion directory (`path`), or a tiny random UNet (`tiny: {...}`);
    `text: {...}` gives the tiny UNet a caption encoder (an SD directory has its own)."""
    if path is not None:
        return DiffusionDecoder.from_pretrained(path, steps=steps)
    unet = tiny_unet(**(tiny or {}))
    text_encoder = caption_encoder(text, unet.config.cross_attention_dim, tokenizer)
    return DiffusionDecoder(unet, steps=steps, text=text_encoder)


DECODERS.register("diffusion", diffusion_decoder)
