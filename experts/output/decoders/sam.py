"""The segmentation decoder: segment-anything's `Sam`, driven by a projected `<seg>` state.

LISA's way: the output experts turn the LLM's hidden state at a `<seg>` token into one
sparse prompt embedding for SAM's mask decoder; the image encoder is frozen. The model is
assembled from `segment_anything.modeling` as `build_sam.py` does, at the sizes of a
named variant (vit_b / vit_l / vit_h, for the original checkpoints) or given sizes (the
tiny one tests and the demo use). Checkpoints are the original `.pth` state dicts, read
with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from onellm.errors import CheckpointError, ConfigError, InputError
from onellm.experts.output.decoders.text import caption_encoder
from onellm.registry import DECODERS

# the image encoders of the released checkpoints (segment_anything/build_sam.py)
VARIANTS = {
    "vit_b": {"embed_dim": 768, "depth": 12, "heads": 12, "global_attn": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "heads": 16, "global_attn": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "heads": 16, "global_attn": (7, 15, 23, 31)},
}


def build_sam(
    *,
    variant: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    image_size: int = 1024,
    patch_size: int = 16,
    embed_dim: int = 768,
    depth: int = 12,
    heads: int = 12,
    global_attn: tuple[int, ...] = (2, 5, 8, 11),
    window_size: int = 14,
    prompt_dim: int = 256,
    decoder_mlp: int = 2048,
    decoder_heads: int = 8,
) -> Sam:
    """A `Sam` at a named variant's sizes or the given ones; weights from `checkpoint`."""
    if variant is not None:
        if variant not in VARIANTS:
            raise InputError(f"sam: expected variant one of {', '.join(VARIANTS)}, got {variant!r}")
        v = VARIANTS[variant]
        embed_dim, depth, heads, global_attn = (
            v["embed_dim"],
            v["depth"],
            v["heads"],
            v["global_attn"],
        )
    grid = image_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=heads,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(global_attn),
            window_size=window_size,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_dim, mlp_dim=decoder_mlp, num_heads=decoder_heads
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=prompt_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    if checkpoint is not None:
        load_sam_checkpoint(sam, checkpoint)
    return sam


def load_sam_checkpoint(sam: Sam, path: str | os.PathLike) -> None:
    """Load an original SAM `.pth` (a plain state dict) without unpickling objects."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"sam: checkpoint not found: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with objects, or not a torch file at all
        raise CheckpointError(
            f"sam: {p} is not a plain state dict (weights_only load failed): {e}"
        ) from e
    try:
        sam.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"sam: {p} does not fit this SAM's sizes: {e}") from e


class SamMaskDecoder(nn.Module):
    """Frozen SAM image encoder + trainable-by-choice mask decoder, prompted by embeddings."""

    def __init__(self, sam: Sam, text: nn.Module | None = None) -> None:
        super().__init__()
        self.sam = sam
        self.sam.image_encoder.requires_grad_(False)
        # tiny scale: a caption encoder for text prompts (decoders/text.py)
        self.text = text

    def _apply(self, fn, recurse: bool = True):
        # segment-anything casts point coordinates to float32 inside its prompt encoder
        # (`forward_with_coords`), so that encoder's random-Fourier table stays float32 in
        # a bf16 / float64 model; what the encoder gives is cast to the decoder's dtype
        super()._apply(fn, recurse)
        pe = self.sam.prompt_encoder.pe_layer
        pe.positional_encoding_gaussian_matrix = pe.positional_encoding_gaussian_matrix.float()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.sam.pixel_mean.dtype

    @property
    def prompt_dim(self) -> int:
        return self.sam.prompt_encoder.embed_dim

    @property
    def image_size(self) -> int:
        return self.sam.image_encoder.img_size

    condition_dim = prompt_dim  # what an output head must produce

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) RGB in [0, 1] -> SAM's input (longest side resized, normalised,
        padded) and the resized (h, w) that `masks` crops back to."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"sam: expected images (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        scale = self.image_size / max(h, w)
        size = (round(h * scale), round(w * scale))
        x = F.interpolate(
            images.to(self.dtype) * 255, size=size, mode="bilinear", align_corners=False
        )
        return self.sam.preprocess(x), size

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) in [0, 1] -> image embeddings (B, C, g, g) and the resized input
        size; gradients reach the image encoder when it is trainable (tiny pretraining)."""
        x, size = self.prepare(images)
        return self.sam.image_encoder(x), size

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """-> frozen image embeddings (B, C, g, g) and the resized input size."""
        return self.encode(images)

    def forward(
        self,
        embeddings: torch.Tensor,
        prompts: list[torch.Tensor],
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> list[torch.Tensor]:
        """Image embeddings (B, C, g, g) and, per image, its `<seg>` prompts (N_i, C) ->
        per image, mask logits (N_i, H, W) at `original_size` (one mask per prompt)."""
        return self.decode(embeddings, [p[:, None, :] for p in prompts], input_size, original_size)

    def decode(
        self,
        embeddings: torch.Tensor,
        sparse: list[torch.Tensor],
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> list[torch.Tensor]:
        """Per image, N_i sparse prompt sets (N_i, T, C) -> mask logits (N_i, H, W): one
        mask decoder call per image (it repeats the image embedding per prompt set)."""
        no_mask = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        pe = self.sam.prompt_encoder.get_dense_pe().to(embeddings.dtype)
        out = []
        for i, p in enumerate(sparse):
            if p.shape[0] == 0:
                out.append(embeddings.new_zeros(0, *original_size))
                continue
            low, _ = self.sam.mask_decoder(
                image_embeddings=embeddings[i : i + 1],
                image_pe=pe,
                sparse_prompt_embeddings=p.to(embeddings.dtype),
                dense_prompt_embeddings=no_mask.expand(p.shape[0], -1, *embeddings.shape[-2:]),
                multimask_output=False,
            )
            out.append(self.sam.postprocess_masks(low, input_size, original_size)[:, 0])
        return out

    def text_prompts(self, texts: list[str]) -> torch.Tensor:
        """Phrases ("the blue triangle") -> sparse prompt embeddings (B, C): the SAM paper's
        text prompts, here from the decoder's own caption encoder."""
        if self.text is None:
            raise ConfigError("sam: this decoder has no text encoder (outputs.seg.decoder.text)")
        return self.text.pooled(texts)

    def geometric_prompts(
        self, points: torch.Tensor | None, boxes: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        """Points (N, 2) and/or boxes (N, 4) in image pixels -> SAM's sparse prompts (N, T, C)
        through its prompt encoder (`scale`: image pixels -> SAM's input pixels)."""
        pts = None
        if points is not None:
            labels = torch.ones(points.shape[0], 1, dtype=torch.int, device=points.device)
            pts = (points[:, None, :].float() * scale, labels)
        box = boxes.float() * scale if boxes is not None else None
        return self.sam.prompt_encoder(points=pts, boxes=box, masks=None)[0].to(self.dtype)

    def prompted(
        self,
        images: torch.Tensor,
        points: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        texts: list[str] | None = None,
    ) -> torch.Tensor:
        """SAM as it is trained, through its own prompt encoder: (B, 3, H, W) images in
        [0, 1], one prompt each, a point (B, 2) and/or a box (B, 4), as (x, y) / (x0, y0,
        x1, y1) in the image's pixels, or a phrase (`texts`, with a text encoder) -> mask
        logits (B, H, W). Gradients reach the image encoder when it is trainable (tiny-scale
        pretraining)."""
        if points is None and boxes is None and texts is None:
            raise InputError("sam: expected a point, box or text prompt per image, got none")
        emb, size = self.encode(images)
        parts = []
        if points is not None or boxes is not None:
            parts.append(self.geometric_prompts(points, boxes, size[0] / images.shape[-2]))
        if texts is not None:  # a phrase alone has no pad point, as a <seg> prompt has none
            parts.append(self.text_prompts(texts)[:, None, :])
        sparse = torch.cat(parts, dim=1)
        masks = self.decode(emb, list(sparse[:, None]), size, tuple(images.shape[-2:]))
        return torch.cat(masks)


def sam_decoder(
    *, checkpoint: str | None = None, text: dict | None = None, tokenizer=None, **sizes
):
    """SAM at a variant's (`variant: vit_b`) or given sizes, from an original .pth if given;
    `text: {vocab_size, width, layers, length}` adds a caption encoder for text prompts."""
    if "global_attn" in sizes:
        sizes["global_attn"] = tuple(sizes["global_attn"])
    sam = build_sam(checkpoint=checkpoint, **sizes)
    return SamMaskDecoder(sam, text=caption_encoder(text, sam.prompt_encoder.embed_dim, tokenizer))


DECODERS.register("sam", sam_decoder)
