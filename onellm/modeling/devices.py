"""Where a model runs and in what precision: `device` and `dtype` arguments, autocast, scaler.

Every entry point (from_config, from_pretrained, train, chat, eval, demo) takes a device
spec: `auto` (CUDA when there is one, else the CPU), `cpu`, `cuda` or `cuda:N`. Asking
for CUDA where there is none is a `ConfigError` naming `device`, before anything is built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

from onellm.errors import ConfigError

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
# stage `precision`: the autocast dtype (fp32: no autocast)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(
    spec: str | torch.device | None = "auto",
    *,
    local_rank: int | None = None,
    where: str = "device",
) -> torch.device:
    """A device spec -> `torch.device`. Under torchrun (`local_rank` given) CUDA means this
    process's own GPU, `cuda:LOCAL_RANK`."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = "auto" if spec is None else spec
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{where}: expected auto, cpu, cuda or cuda:N, got {spec!r}") from e
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"{where}: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{where}: expected a CUDA GPU for {spec!r}, got none on this machine "
            "(torch.cuda.is_available() is False); use cpu or auto"
        )
    if local_rank is not None:
        if device.index is not None and device.index != local_rank:
            raise ConfigError(
                f"{where}: under torchrun each process takes cuda:LOCAL_RANK, got {spec!r} "
                f"in the process of LOCAL_RANK {local_rank}; use cuda or auto"
            )
        device = torch.device("cuda", local_rank)
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"{where}: expected one of cuda:0..cuda:{torch.cuda.device_count() - 1}, got {spec!r}"
        )
    return torch.device("cuda", index)


def resolve_dtype(dtype: str | torch.dtype | None, default: str, where: str = "dtype") -> str:
    """A dtype argument (a name or a torch dtype; None: `default`) -> its config name."""
    if dtype is None:
        dtype = default
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in DTYPES.items()}
        if dtype not in names:
            raise ConfigError(f"{where}: expected one of {', '.join(DTYPES)}, got {dtype}")
        return names[dtype]
    if dtype not in DTYPES:
        raise ConfigError(f"{where}: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast on the model's own device type at `precision` (fp32: none)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str, world: int) -> torch.amp.GradScaler:
    """fp16 needs loss scaling; bf16 and fp32 get a disabled scaler (a pass-through)."""
    enabled = precision == "fp16"
    if enabled and world > 1:
        # measured with 2 gloo processes: torch's scalers unscale every gradient of a device
        # in one foreach call, which refuses FSDP2's sharded (DTensor) gradients beside the
        # replicated per-modality ones
        raise ConfigError(
            f"precision: fp16 runs in one process (its loss scaler cannot unscale FSDP2's "
            f"sharded gradients beside replicated ones), got {world} processes; use bf16"
        )
    return torch.amp.GradScaler(device.type, enabled=enabled)


def move(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Every tensor in a (nested) batch onto `device`; floating ones also to `dtype` (the
    model's), index and mask tensors keep theirs."""
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point():
            return batch.to(device, dtype, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(v, device, dtype) for v in batch)
    return batch
