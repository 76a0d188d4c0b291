"""Multi-process training with torch.distributed: FSDP2 `fully_shard` on the heavy trainable
blocks, the small per-modality parameters replicated with their gradients all-reduced.

Why not shard everything: OneLLM's design reads small parameters (start/end tags, query
tokens, positional embeddings, CLIP's class token) outside their module's `forward`,
where FSDP2 would leave them sharded. The blocks that hold almost all trainable weights
(projection experts, LLM and CLIP layers) are called through `forward` and are sharded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from onellm.modeling.devices import resolve_device
from onellm.modeling.llm import base_llm


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: DeviceMesh | None = None  # the data-parallel mesh FSDP2 shards over

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over processes, on this process's device (NCCL takes no CPU tensor); use
        the returned tensor (`value` itself is summed in place only when already there)."""
        if self.world > 1:
            value = value.to(self.device)
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init(device: str = "auto") -> Dist:
    """This process's place: under torchrun, join the process group (NCCL on CUDA, where
    each process takes cuda:LOCAL_RANK; gloo on the CPU) with a 1-D device mesh; a single
    process otherwise. `device`: the stage's spec (auto | cpu | cuda | cuda:N)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(device=resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve_device(device, local_rank=local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if where.type == "cuda" else "gloo",
            device_id=where if where.type == "cuda" else None,
        )
    world = dist.get_world_size()
    return Dist(dist.get_rank(), world, where, init_device_mesh(where.type, (world,)))


def cleanup(d: Dist) -> None:
    """Leave the process group (the recipe's last act under torchrun)."""
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def shard(
    model: nn.Module, mesh: DeviceMesh | None = None, compute_dtype: torch.dtype | None = None
) -> list[nn.Module]:
    """`fully_shard` every heavy block that trains over `mesh`; returns the sharded blocks.
    `compute_dtype` (the stage's bf16 / fp16): FSDP2 gathers those blocks' weights in it
    (half the traffic) and reduces their gradients in fp32."""
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)

    # the projection's blocks: expert layers, not whole experts (ExpertPool calls each layer;
    # FSDP hooks run on __call__)
    projections = (model.projection, *model.projections.values())
    blocks: list[nn.Module] = [b for p in projections for b in p.blocks()]
    blocks += list(base_llm(model.llm).model.layers) + list(model.encoder.clip.encoder.layers)
    sharded = []
    for block in blocks:
        params = list(block.parameters())
        # LoRA leaves the base weights frozen; its small adapters stay replicated instead
        if params and all(p.requires_grad for p in params):
            fully_shard(block, mesh=mesh, mp_policy=policy)
            sharded.append(block)
    return sharded


def sync_replicated_grads(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of parameters FSDP does not manage (plain tensors). A parameter
    some process used and another did not (an LLM expert whose modality only one process's
    rows hold) counts as zero on the other; one no process used keeps no gradient, as in
    one process (AdamW then leaves it as it was)."""
    if world <= 1:
        return
    plain = [p for p in params if not isinstance(p, DTensor)]
    if not plain:
        return
    used = torch.tensor([p.grad is not None for p in plain], dtype=torch.int32)
    device = next((p.grad.device for p in plain if p.grad is not None), plain[0].device)
    used = used.to(device)
    dist.all_reduce(used, op=dist.ReduceOp.MAX)  # the same list in every process
    for p, anyone in zip(plain, used.tolist(), strict=True):
        if not anyone:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float | None, d: Dist) -> float:
    """Global gradient norm over sharded (DTensor) and replicated grads; clip to `max_norm`."""
    sharded = torch.zeros((), device=d.device)
    replicated = torch.zeros((), device=d.device)
    for p in params:
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            sharded += p.grad.to_local().float().pow(2).sum().to(d.device)
        else:
            replicated += p.grad.float().pow(2).sum().to(d.device)
    total = (d.all_sum(sharded) + replicated).sqrt()
    if max_norm is not None and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return float(total)
