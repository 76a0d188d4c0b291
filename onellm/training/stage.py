"""Stage recipes: one YAML per training stage, validated into `StageConfig`.

Stages differ only in these fields (data, trainable patterns, schedule), never in code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

from onellm.config import load_config
from onellm.errors import ConfigError, RegistryError
from onellm.modeling.devices import PRECISIONS, resolve_device
from onellm.registry import TASKS


@dataclasses.dataclass
class SourceConfig:
    """One data source. A step samples a source by `weight`; a batch holds one source."""

    # default: the source's key; none for task lm; a list: samples holding several
    # modalities in one conversation (a manifest's `inputs` records, or shapes-world pairs)
    modality: str | list[str] | None = None
    # a registered task (onellm/tasks/): caption | instruct | lm | clip | sam | t2i | seg | gen
    task: str = "caption"
    weight: float = 1.0
    batch_size: int | None = None  # this source's batch (default: the stage's); CLIP wants big ones
    data: str = "synthetic"  # "synthetic" (the shapes world) or a JSONL manifest path
    pool: int = 2048  # synthetic: distinct training scenes, reshuffled every pass
    caption_mix: float = 0.25  # instruct: share of plain captioning examples kept in the mix
    context_mix: float = 0.0  # lm: share of examples that first read the scene's caption as context
    # clip: each image shrunk about its centre by a factor drawn from [lo, hi] (CLIP's scale
    # augmentation), so the encoder also sees shapes smaller than the image world draws them
    zoom: list[float] | None = None


@dataclasses.dataclass
class OptimizerConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    lr_scale: dict[str, float] = dataclasses.field(
        default_factory=dict
    )  # name glob -> lr multiplier


@dataclasses.dataclass
class ScheduleConfig:
    """Linear warm-up, then cosine decay to `min_lr_ratio` x lr."""

    warmup_steps: int = 0
    min_lr_ratio: float = 0.1


@dataclasses.dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclasses.dataclass
class EvalConfig:
    every: int = 0  # steps between held-out evaluations (0: only at the end)
    # held-out scenes per modality, as `onellm eval`: at 50 one scene is 2 points, and the
    # same model read 98% and 92% on two test draws, too coarse for a 5-point forgetting limit
    samples: int = 100
    modalities: list[str] | None = None  # default: every modality the stage trains
    max_new_tokens: int = 16
    # held-out JSONL manifests by modality (`{image: test.jsonl}`, read beside the YAML):
    # every record's caption, and every question of its conversations, asked alone
    data: dict[str, str] = dataclasses.field(default_factory=dict)
    # the end-of-stage summary (onellm/training/summary.py): a held-out figure under `floor`
    # is a warning, and one more than `forgetting` points under the parent model's is an alarm.
    # 50%: at the demo's 100 scenes a modality that learnt nothing reads 0-35% (a guessed
    # word or two), one that learnt reads 90% and more
    floor: float = 0.5
    forgetting: float = 5.0
    # also evaluate, at the end, every set the parent model was measured on; false where the
    # stage trains nothing those figures read (the decoders alone): the parent's are kept
    parent: bool = True


@dataclasses.dataclass
class ReplayConfig:
    """Replay (onellm/training/replay.py): the sources the parent model was trained on that
    this stage does not name join it, drawn in `ratio` of the steps together."""

    ratio: float = 0.5
    # a replayed instruction source's share of plain captions (None: the parent's own): a
    # fine-tune on captions pulls the plain caption prompt, which instruct's 0.25 rarely asks
    # (20 stars, 300 steps: the shapes world's image captions 99% -> 89% at 0.25, 98% at 0.5;
    # at 1.0 the questions went, imu's 100% -> 0%)
    caption_mix: float | None = 0.5


@dataclasses.dataclass
class AddModalityConfig:
    """Add a modality to the starting model (`OneLLM.add_modality`) before training."""

    name: str
    type: str | None = None  # registered name, entry point, module[:Class] or file.py[:Class]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the modality's kwargs
    new_experts: int = 0
    upcycle_from: int | None = None  # the new experts copy this expert (default: i % K)
    expert_noise: float = 0.0  # ... each weight scaled by 1 + expert_noise x N(0, 1)
    init_from: str | None = None  # copy queries, router, projections, tags from this modality


@dataclasses.dataclass
class UpcycleConfig:
    """Sparse upcycling (MoE-LLaVA, CuMo) before training: the trained experts become
    `experts` experts, the new ones copies of `sources` (default: expert i % K for the
    i-th new one) with each weight scaled by 1 + noise x N(0, 1), every router's rows
    extended to them; `router` (optional) re-types the routers, keeping their MLPs."""

    experts: int
    sources: list[int] | None = None
    noise: float = 0.01
    router: dict[str, Any] | None = None  # e.g. {type: topk, k: 2}


@dataclasses.dataclass
class CollapseConfig:
    """The collapse alarm: an expert under `floor` x its fair share of the routing weight
    (all modalities together) for `steps` steps is a warning in the log and the metrics."""

    floor: float = 0.1
    steps: int = 100


@dataclasses.dataclass
class MoEConfig:
    """Losses on the projection's routers (onellm/training/moe.py): Switch balance and router
    z-loss weights, over each micro-batch or the whole optimiser step (`global`)."""

    balance: float = 0.0
    z_loss: float = 0.0
    scope: str = "global"  # micro_batch | global
    collapse: CollapseConfig = dataclasses.field(default_factory=CollapseConfig)


@dataclasses.dataclass
class StageConfig:
    name: str
    init_from: str  # a model YAML (configs/tiny.yaml) or a saved run dir
    output_dir: str
    data: dict[str, SourceConfig]
    trainable: list[str]  # parameter-name globs ("@added": what add_modality created)
    steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    # each of a step's grad_accum micro-batches draws its own source, so that one optimiser
    # step spans several modalities (as OneLLM's GPUs each hold one); moe.scope: global
    # then balances the experts over them together
    mix_sources: bool = False
    grad_clip: float | None = 1.0
    # auto (CUDA when there is one) | cpu | cuda | cuda:N; under torchrun cuda:LOCAL_RANK
    device: str = "auto"
    precision: str = (
        "fp32"  # fp32 | bf16 | fp16 (autocast on the model's device; fp16 scales the loss)
    )
    # recompute the experts', the encoder's and the LLM's blocks in backward instead of
    # keeping their activations (OneLLM's instruction stage does, for the 7B LLM)
    activation_checkpointing: bool = False
    # worker processes that decode and preprocess the data (0: the training process does),
    # each `prefetch` steps ahead; batches land in pinned memory on CUDA (onellm/data/loader.py)
    data_workers: int = 0
    prefetch: int = 2
    # a folder of cached universal-encoder outputs (onellm/data/feature_cache.py): sources
    # whose inputs reach the encoder unchanged and whose tokenizer and encoder are frozen
    # read them instead of running CLIP; built on first use, shared by later stages
    feature_cache: str | None = None
    # samples end to end in rows of at most `pack_tokens` positions (default: the LLM's
    # context), no padding (onellm/data/packing.py); auto: on wherever it equals padded rows
    packing: bool | str = "auto"
    pack_tokens: int | None = None
    compile: bool = False  # torch.compile the experts (bench/: ~1.3x a step; ~45 s to compile)
    seed: int = 0
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    lora: LoraConfig | None = None
    add_modality: AddModalityConfig | None = None
    upcycle: UpcycleConfig | None = None
    moe: MoEConfig = dataclasses.field(default_factory=MoEConfig)
    # {new: trained}: a new modality's queries, router, projections and tags start as a
    # copy of a trained one's (OneLLM's --init_from_image), applied when the stage starts
    init_modalities: dict[str, str] = dataclasses.field(default_factory=dict)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    # None: on (at ReplayConfig's ratio) when the parent model was trained on sources this
    # stage does not name; false: off; true or {ratio: 0.3}: on at that ratio
    replay: bool | ReplayConfig | None = None
    checkpoint_every: int = 0  # steps between resumable checkpoints (0: none)
    log_every: int = 10
    # `key=value` changes to the starting model's config; from a saved run, its weights load
    # where they still fit (another projection kind, a moai section: those start as built)
    model_overrides: list[str] = dataclasses.field(default_factory=list)
    # safetensors files loaded over the starting model by tensor name (onellm export writes
    # them): parts pretrained elsewhere, such as the demo's tiny SAM and UNet
    load_weights: list[str] = dataclasses.field(default_factory=list)
    vars: dict[str, Any] = dataclasses.field(default_factory=dict)


def load_stage(path: str | os.PathLike, overrides: Iterable[str] = ()) -> StageConfig:
    """Read and validate a stage YAML (`key=value` overrides reach any key)."""
    cfg = load_config(path, overrides, schema=StageConfig)
    validate(cfg)
    return cfg


def validate(cfg: StageConfig) -> None:
    if not cfg.data:
        raise ConfigError("data: a stage needs at least one data source")
    for key, src in cfg.data.items():
        try:
            TASKS.get(src.task)
        except RegistryError:
            raise ConfigError(
                f"data.{key}.task: expected one of {', '.join(TASKS.names())}, got {src.task!r}"
            ) from None
        if src.weight < 0:
            raise ConfigError(f"data.{key}.weight: expected >= 0, got {src.weight}")
        if src.batch_size is not None and src.batch_size < 1:
            raise ConfigError(f"data.{key}.batch_size: expected >= 1, got {src.batch_size}")
        TASKS.get(src.task).check(key, src)
    if sum(s.weight for s in cfg.data.values()) <= 0:
        raise ConfigError("data: the weights sum to zero")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(
            f"precision: expected one of {', '.join(PRECISIONS)}, got {cfg.precision!r}"
        )
    if cfg.data_workers < 0 or cfg.prefetch < 1:
        raise ConfigError(
            f"data_workers/prefetch: expected >= 0 / >= 1, got {cfg.data_workers} / {cfg.prefetch}"
        )
    for name in ("steps", "batch_size", "grad_accum"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}: expected >= 1, got {getattr(cfg, name)}")
    resolve_device(cfg.device)  # no CUDA where it asks for one: say so now, not mid-setup
    if isinstance(cfg.replay, ReplayConfig) and not 0 < cfg.replay.ratio < 1:
        raise ConfigError(f"replay.ratio: expected a share in (0, 1), got {cfg.replay.ratio}")
    mix = cfg.replay.caption_mix if isinstance(cfg.replay, ReplayConfig) else None
    if mix is not None and not 0 <= mix <= 1:
        raise ConfigError(f"replay.caption_mix: expected a share in [0, 1], got {mix}")
    if not 0 <= cfg.eval.floor <= 1 or cfg.eval.forgetting < 0:
        raise ConfigError(
            f"eval.floor / eval.forgetting: expected a share in [0, 1] and points >= 0, got "
            f"{cfg.eval.floor} and {cfg.eval.forgetting}"
        )
    if not cfg.trainable:
        raise ConfigError("trainable: name at least one parameter pattern")
    if cfg.packing not in (True, False, "auto") or (
        cfg.pack_tokens is not None and cfg.pack_tokens < 1
    ):
        raise ConfigError(
            f"packing / pack_tokens: expected true, false or auto / a length >= 1, got "
            f"{cfg.packing!r} / {cfg.pack_tokens!r}"
        )
    validate_moe(cfg)


def validate_moe(cfg: StageConfig) -> None:
    m = cfg.moe
    if m.scope not in ("micro_batch", "global"):
        raise ConfigError(f"moe.scope: expected micro_batch or global, got {m.scope!r}")
    for name in ("balance", "z_loss"):
        if getattr(m, name) < 0:
            raise ConfigError(f"moe.{name}: expected >= 0, got {getattr(m, name)}")
    if not 0 <= m.collapse.floor <= 1 or m.collapse.steps < 1:
        raise ConfigError(
            f"moe.collapse: expected floor in [0, 1] and steps >= 1, got "
            f"{m.collapse.floor} and {m.collapse.steps}"
        )
    u = cfg.upcycle
    if u is not None and (u.experts < 1 or u.noise < 0):
        raise ConfigError(
            f"upcycle: expected experts >= 1 and noise >= 0, got {u.experts} and {u.noise}"
        )
