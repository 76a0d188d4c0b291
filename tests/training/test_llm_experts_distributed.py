"""Per-modality LoRA experts in the LLM under torchrun: 2 gloo processes with FSDP2 give the
losses of 1, and an expert only one process's rows used is averaged as zero on the other."""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from onellm.training.distributed import sync_replicated_grads
from tests.training.test_distributed import ARGS, losses, run

EXPERTS = 'model_overrides=["llm_experts={kind: lora_per_modality, r: 4}"]'


def test_two_gloo_processes_give_the_losses_of_one_with_llm_experts(tmp_path):
    stage = "configs/stages/stage2_video_audio_point.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [a for a in ARGS if not a.startswith(("steps=", "trainable="))]
    args += ["steps=2", EXPERTS, "trainable=[llm.*lora_*, projection.*]"]
    train = ["-m", "onellm.cli", "train", stage, *args]
    run([sys.executable, *train, f"output_dir={tmp_path / 'one'}"], env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run([*torchrun, *train, f"output_dir={tmp_path / 'two'}"], env)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-4, (one, two)


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
