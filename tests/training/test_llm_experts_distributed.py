"""Per-modality LoRA experts in the LLM under torchrun: an expert only one process's rows used
is averaged as zero on the other (2 gloo processes with FSDP2 giving the losses of 1, experts
trained: tests/training/test_distributed.py)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from onellm.training.distributed import sync_replicated_grads


def _sync(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    shared, mine, nobody = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    shared.grad = torch.full((3,), float(rank + 1))
    if rank == 0:  # only rank 0's rows held this expert's modality
        mine.grad = torch.full((3,), 4.0)
    sync_replicated_grads([shared, mine, nobody], 2)
    out[rank] = (shared.grad.tolist(), mine.grad.tolist(), nobody.grad)
    dist.destroy_process_group()


def test_an_expert_one_process_used_is_averaged_as_zero_on_the_other():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    # forked: the children share this process's imports (spawning re-imports torch and onellm)
    mp.start_processes(_sync, args=(port, out), nprocs=2, start_method="fork")
    for rank in (0, 1):
        shared, mine, nobody = out[rank]
        assert shared == [1.5] * 3 and mine == [2.0] * 3 and nobody is None
