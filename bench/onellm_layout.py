"""The official OneLLM stage-1 step on our weights: bench/step.py's same-run baseline.

What github csuhan/OneLLM (commit 8587a47) computes for one image-caption training step,
`MetaModel.forward` -> `Transformer.forward` -> `encode_image`, re-stated as plain functions
on the parameters of our modules (the same values, laid out as the official checkpoint lays
them out; none of their code is copied):

* CLIP trunk as open_clip 2.23 runs it: patch conv, class token, positions, `ln_pre`, then
  per block `nn.MultiheadAttention` on [L, N, D] (one packed q/k/v matmul) and the
  QuickGELU MLP, `ln_post` on every token, the frame mean (T = 1). Frozen, no autograd graph.
* UPM as `encode_image`: `clip_proj1`; queries `repeat`ed and prepended; the router on
  *every* row (queries and features); each expert alone, a Python loop over the 3 experts,
  every one of its blocks on all Q+S+1 rows (only the first Q rows of the last are used);
  `sum()` of the weighted experts; `clip_proj2`.
* LLM as `Transformer.forward`: [BOS, start tag, Q tokens, end tag, text[1:]]; its own
  LLaMA blocks (complex-number rotary on interleaved pairs, so q/k rows are permuted from
  the Hugging Face order once, on entry; attention as the fixture ran flash-attn:
  `scaled_dot_product_attention` on transposed [B, L, H, D] views, causal flag); final
  norm; the LM head on `h[:, prefix_len:]` only: 12 rows for 12 text tokens (we compute 44).
* Loss as `MetaModel.forward`: `output[:, :-1]` against `labels[:, 1:]`, cross-entropy with
  `ignore_index=0` (our step's labels are the text ids, all >= 3, so nothing is ignored).

Inside `OneLLMLayout`, `model.encode` runs the official UPM and `bench.step.run_step` runs
the whole official step (`official_loss`); bench/step.py checks that both equal ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onellm.experts.projection.upm import UniversalProjection


# ---------------------------------------------------------------------------- pieces
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """OneLLM's RMSNorm fallback (apex absent): normalise in float32, then scale."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def _rotate(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """`apply_rotary_emb` for one tensor: interleaved pairs as complex numbers."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    f = freqs_cis.view(1, xc.shape[1], 1, xc.shape[-1])
    return torch.view_as_real(xc * f).flatten(3).type_as(x)


def _block(x, w: dict, heads: int, eps: float, freqs_cis=None, causal: bool = False):
    """OneLLM's `TransformerBlock` (used for the experts and for the LLM layers)."""
    b, n, _ = x.shape
    h_in = _rms_norm(x, w["attention_norm"], eps)
    xq, xk, xv = (F.linear(h_in, w[k]).view(b, n, heads, -1) for k in ("wq", "wk", "wv"))
    if freqs_cis is not None:
        xq, xk = _rotate(xq, freqs_cis), _rotate(xk, freqs_cis)
    a = F.scaled_dot_product_attention(
        xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2), is_causal=causal
    ).transpose(1, 2)
    h = x + F.linear(a.contiguous().view(b, n, -1), w["wo"])
    f_in = _rms_norm(h, w["ffn_norm"], eps)
    return h + F.linear(F.silu(F.linear(f_in, w["w1"])) * F.linear(f_in, w["w3"]), w["w2"])


def _expert_weights(layer) -> dict:
    return {
        "attention_norm": layer.attn_norm.weight,
        "ffn_norm": layer.mlp_norm.weight,
        "wq": layer.q_proj.weight,
        "wk": layer.k_proj.weight,
        "wv": layer.v_proj.weight,
        "wo": layer.o_proj.weight,
        "w1": layer.gate_proj.weight,
        "w3": layer.up_proj.weight,
        "w2": layer.down_proj.weight,
    }


def _check_official(proj: UniversalProjection, modality: str) -> None:
    """The official UPM has one kind of router (soft) over all experts."""
    router = proj.routers[modality]
    if not hasattr(router, "mlp") or type(router).__name__ != "SoftRouter":
        raise ValueError(
            f"the official UPM has a soft router; {modality} has {type(router).__name__}"
        )
    if proj.routes[modality] != list(range(proj.num_experts)):
        raise ValueError(
            f"the official UPM routes every modality to all experts ({modality} is not)"
        )


def onellm_forward(
    proj: UniversalProjection, features: torch.Tensor, modality: str
) -> torch.Tensor:
    """`encode_image` after the CLIP trunk: (B, S+1, W) features -> (B, Q, D) tokens."""
    _check_official(proj, modality)
    bsz = features.shape[0]
    f = proj.in_proj[modality](features)  # clip_proj1
    z = torch.cat([proj.queries[modality].repeat(bsz, 1, 1), f], dim=1)
    mlp = proj.routers[modality].mlp
    routing = mlp.fc2(F.gelu(mlp.fc1(z))).sigmoid()  # every row, as the reference
    routing = routing / routing.sum(dim=-1, keepdim=True)
    q = proj.queries[modality].shape[1]
    outs = []
    for k in range(proj.num_experts):  # each expert alone, all rows through every block
        x = z
        for layer in proj.experts[k].layers:
            x = _block(x, _expert_weights(layer), layer.num_heads, layer.attn_norm.variance_epsilon)
        outs.append(x[:, :q] * routing[:, :q, k][:, :, None])
    return proj.out_proj[modality](sum(outs))  # clip_proj2


# ---------------------------------------------------------------------------- the step
class OfficialWeights:
    """Our frozen CLIP and LLM weights in the official layout, made once per model:
    CLIP's q/k/v packed into `in_proj_weight`, LLM wq/wk rows back to interleaved rotary
    pairs (the inverse of the HF conversion's permutation), the complex rotary table."""

    @torch.no_grad()
    def __init__(self, model) -> None:
        clip = model.encoder.clip
        self.clip_heads = clip.config.num_attention_heads
        self.clip_blocks = []
        for layer in clip.encoder.layers:
            a = layer.self_attn
            self.clip_blocks.append(
                {
                    "ln_1": layer.layer_norm1,
                    "ln_2": layer.layer_norm2,
                    "in_proj_weight": torch.cat(
                        [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]
                    ),
                    "in_proj_bias": torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
                    "out_proj": a.out_proj,
                    "c_fc": layer.mlp.fc1,
                    "c_proj": layer.mlp.fc2,
                }
            )
        llm = model.llm
        cfg = llm.config
        self.heads, dim = cfg.num_attention_heads, cfg.hidden_size
        if (cfg.num_key_value_heads or self.heads) != self.heads:
            raise ValueError("the official LLaMA has no grouped-query attention")
        self.eps = cfg.rms_norm_eps
        hd = dim // self.heads

        def interleave(w: torch.Tensor) -> torch.Tensor:  # HF rotate_half rows -> OneLLM's
            return w.view(self.heads, 2, hd // 2, dim).transpose(1, 2).reshape(dim, dim).clone()

        self.layers = []
        for layer in llm.model.layers:
            s, m = layer.self_attn, layer.mlp
            self.layers.append(
                {
                    "attention_norm": layer.input_layernorm.weight,
                    "ffn_norm": layer.post_attention_layernorm.weight,
                    "wq": interleave(s.q_proj.weight),
                    "wk": interleave(s.k_proj.weight),
                    "wv": s.v_proj.weight,
                    "wo": s.o_proj.weight,
                    "w1": m.gate_proj.weight,
                    "w3": m.up_proj.weight,
                    "w2": m.down_proj.weight,
                }
            )
        theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
        freqs = 1.0 / (theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
        t = torch.arange(cfg.max_position_embeddings * 2)
        self.freqs_cis = torch.polar(torch.ones(len(t), hd // 2), torch.outer(t, freqs).float())
        self.freqs_cis = self.freqs_cis.to(llm.device)
        self.embed = llm.model.embed_tokens.weight
        self.norm = llm.model.norm.weight
        self.output = llm.lm_head.weight


def official_clip(model, ow: OfficialWeights, image: torch.Tensor) -> torch.Tensor:
    """`clip.visual.conv1` + `clip_encode_image` + the frame mean: (B, 3, H, W) -> (B, S+1, W)."""
    clip = model.encoder.clip
    emb = clip.embeddings
    x = F.conv2d(
        image.to(emb.patch_embedding.weight.dtype),
        emb.patch_embedding.weight,
        emb.patch_embedding.bias,
        stride=emb.patch_embedding.stride,
    )
    bsz = x.shape[0]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = emb.class_embedding.to(x.dtype) + torch.zeros(
        bsz, 1, x.shape[-1], dtype=x.dtype, device=x.device
    )
    x = torch.cat([cls, x], dim=1) + emb.position_embedding.weight.to(x.dtype)
    x = clip.pre_layrnorm(x).permute(1, 0, 2)  # NLD -> LND, as open_clip 2.23's blocks take
    w = x.shape[-1]
    for blk in ow.clip_blocks:
        y = blk["ln_1"](x)
        a = F.multi_head_attention_forward(
            y,
            y,
            y,
            w,
            ow.clip_heads,
            blk["in_proj_weight"],
            blk["in_proj_bias"],
            None,
            None,
            False,
            0.0,
            blk["out_proj"].weight,
            blk["out_proj"].bias,
            training=True,
            need_weights=False,
        )[0]
        x = x + a
        h = blk["c_fc"](blk["ln_2"](x))
        x = x + blk["c_proj"](h * torch.sigmoid(1.702 * h))  # QuickGELU
    x = clip.post_layernorm(x.permute(1, 0, 2))  # every token
    return x.reshape(bsz, 1, *x.shape[1:]).mean(dim=1)


def official_encode(model, ow: OfficialWeights, image: torch.Tensor) -> torch.Tensor:
    """`Transformer.encode_image(image, 'image')`: (B, 3, H, W) -> (B, Q, D)."""
    return onellm_forward(model.projection, official_clip(model, ow, image), "image")


def official_logits(model, ow: OfficialWeights, image, ids) -> torch.Tensor:
    """`Transformer.forward(ids, image, ['image'])`: logits on h[:, prefix_len:] only."""
    proj = model.projection
    bsz = ids.shape[0]
    h = F.embedding(ids, ow.embed)
    image_tokens = official_encode(model, ow, image)
    h = torch.cat(
        [
            h[:, :1],
            proj.start_tag["image"].expand(bsz, -1, -1),
            image_tokens,
            proj.end_tag["image"].expand(bsz, -1, -1),
            h[:, 1:],
        ],
        dim=1,
    )
    prefix_len = image_tokens.shape[1] + 2
    seqlen = h.shape[1]
    freqs_cis = ow.freqs_cis[:seqlen]
    # built as the reference builds it; flash-attn only reads `mask is not None` (causal)
    mask = torch.triu(torch.full((1, 1, seqlen, seqlen), float("-inf"), device=h.device), 1)
    for w in ow.layers:
        h = _block(h, w, ow.heads, ow.eps, freqs_cis, causal=mask is not None)
    h = _rms_norm(h, ow.norm, ow.eps)
    return F.linear(h[:, prefix_len:, :], ow.output)


def official_loss(model, ow: OfficialWeights, image, ids, labels=None) -> torch.Tensor:
    """`MetaModel.forward`: shifted cross-entropy, `ignore_index=0`."""
    labels = ids if labels is None else labels
    output = official_logits(model, ow, image, ids)[:, :-1, :]
    return F.cross_entropy(
        output.reshape(-1, output.shape[-1]), labels[:, 1:].flatten(), ignore_index=0
    )


class OneLLMLayout:
    """Context manager: while inside, `proj(features, modality)` is the official UPM
    (`onellm_forward`) and `bench.step.run_step` on the model owning `proj` runs the whole
    official step (`official_loss`). Nothing is left behind on exit."""

    def __init__(self, proj: UniversalProjection) -> None:
        self.proj = proj
        self._weights: tuple[object, OfficialWeights] | None = None

    def weights(self, model) -> OfficialWeights:
        if self._weights is None or self._weights[0] is not model:
            self._weights = (model, OfficialWeights(model))
        return self._weights[1]

    def loss(self, model, image, ids, labels=None) -> torch.Tensor:
        return official_loss(model, self.weights(model), image, ids, labels)

    def __enter__(self):
        self.proj.forward = lambda features, modality: onellm_forward(self.proj, features, modality)
        self.proj.onellm_layout = self
        return self

    def __exit__(self, *exc) -> None:
        del self.proj.forward
        del self.proj.onellm_layout


def active_layout(model) -> OneLLMLayout | None:
    """The `OneLLMLayout` `model.projection` is inside, if any."""
    return vars(model.projection).get("onellm_layout")
