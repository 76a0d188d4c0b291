"""The diffusion decoder: a tiny diffusers UNet saved and loaded as diffusers does."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers import DDIMScheduler as Sched
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from onellm.errors import CheckpointError, InputError
from onellm.experts.output.decoders.diffusion import DiffusionDecoder, tiny_unet


def test_a_saved_tiny_unet_loads_back_and_samples_images_of_its_size(tmp_path):
    torch.manual_seed(0)
    tiny_unet(sample_size=16, cross_dim=24).save_pretrained(tmp_path / "unet")
    dec = DiffusionDecoder.from_pretrained(tmp_path / "unet", steps=3)
    assert dec.cross_dim == 24 and dec.image_size == 16
    cond = torch.randn(2, 5, 24)
    images = dec.sample(cond)
    assert [im.size for im in images] == [(16, 16), (16, 16)]
    assert images[0].mode == "RGB"
    assert list(dec.sample(cond)[0].getdata()) == list(images[0].getdata())  # seeded
    assert list(dec.sample(cond + 3)[0].getdata()) != list(images[0].getdata())  # conditioned


def test_the_denoising_loss_trains_the_conditioning():
    torch.manual_seed(0)
    dec = DiffusionDecoder(tiny_unet(sample_size=8, cross_dim=16))
    cond = torch.randn(2, 4, 16, requires_grad=True)
    target = torch.rand(2, 3, 32, 32)  # resized to the UNet's 8 px
    loss = dec.loss(target, cond, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0 and cond.grad is not None and cond.grad.abs().sum() > 0
    with pytest.raises(InputError, match=r"expected conditioning \(B, L, 16\)"):
        dec.loss(target, torch.randn(2, 4, 8))


def test_an_unknown_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="neither a Stable Diffusion dir"):
        DiffusionDecoder.from_pretrained(tmp_path)


def tiny_stable_diffusion(root):
    """A Stable Diffusion directory at toy sizes, written by diffusers' own save_pretrained."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(letters)})
    vocab.update({c: len(vocab) + i for i, c in enumerate(letters)})
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
        ),
        text_encoder=CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
            )
        ),
        tokenizer=CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt")),
        unet=tiny_unet(sample_size=8, channels=4, cross_dim=32),
        scheduler=Sched(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "sd")
    return root / "sd"


def test_a_stable_diffusion_dir_loads_through_the_pipeline_and_takes_prompt_embeds(tmp_path):
    torch.manual_seed(0)
    dec = DiffusionDecoder.from_pretrained(tiny_stable_diffusion(tmp_path), steps=2)
    assert dec.pipeline is not None and dec.cross_dim == 32
    assert dec.image_size == 16  # 8 latent px x the VAE's 2x
    cond = torch.randn(1, 6, 32, requires_grad=True)
    assert dec.sample(cond.detach())[0].size == (16, 16)
    loss = dec.loss(torch.rand(1, 3, 16, 16), cond)  # through the frozen VAE's latents
    loss.backward()
    assert cond.grad is not None and all(p.grad is None for p in dec.vae.parameters())
