"""Multi-process training with torch.distributed: FSDP2 `fully_shard` on the heavy trainable
blocks, the small per-modality parameters replicated with their gradients all-reduced.

Why not shard everything: OneLLM's design reads small parameters (start/end tags, query
tokens, positional embeddings, CLIP's class token) outside their module's `forward`,
where FSDP2 would leave them sharded. The blocks that hold almost all trainable weights
(projection experts, LLM and CLIP layers) are called through `forward` and are sharded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value


def init() -> Dist:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); single process otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def shard(model: nn.Module) -> list[nn.Module]:
    """`fully_shard` every heavy block that trains; returns the sharded blocks."""
    from torch.distributed.fsdp import fully_shard

    # expert layers, not whole experts: ExpertPool calls each layer (FSDP hooks run on __call__)
    blocks: list[nn.Module] = [layer for e in model.projection.experts for layer in e.layers]
    llm = model.llm.get_base_model() if hasattr(model.llm, "peft_config") else model.llm
    blocks += list(llm.model.layers) + list(model.encoder.clip.encoder.layers)
    sharded = []
    for block in blocks:
        params = list(block.parameters())
        # LoRA leaves the base weights frozen; its small adapters stay replicated instead
        if params and all(p.requires_grad for p in params):
            fully_shard(block)
            sharded.append(block)
    return sharded


def sync_replicated_grads(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of parameters FSDP does not manage (plain tensors)."""
    if world <= 1:
        return
    for p in params:
        if p.grad is not None and not isinstance(p.grad, DTensor):
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float | None, d: Dist) -> float:
    """Global gradient norm over sharded (DTensor) and replicated grads; clip to `max_norm`."""
    sharded = torch.zeros(())
    replicated = torch.zeros(())
    for p in params:
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            sharded += p.grad.to_local().float().pow(2).sum()
        else:
            replicated += p.grad.float().pow(2).sum()
    total = (d.all_sum(sharded) + replicated).sqrt()
    if max_norm is not None and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return float(total)
