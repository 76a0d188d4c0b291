"""The one training recipe for every stage: setup, train, save, cleanup.

    onellm train configs/stages/stage1_image.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node=2 -m onellm.cli train STAGE.yaml     (FSDP2, gloo on CPU)

Step s draws its source and examples from (seed, s) alone, so a resumed run replays
exactly what an uninterrupted one would. Losses are summed over target tokens and divided
by the global token count, so N processes match one process with the same global batch.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from onellm import distributed
from onellm.contrastive import zoom_out
from onellm.data.batches import collate, length_groups, tokens
from onellm.data.sources import Source
from onellm.errors import ConfigError, InputError
from onellm.evaluate import evaluate
from onellm.model import OneLLM
from onellm.run_state import RunFiles
from onellm.stage import DECODER_TASKS, StageConfig


def prepare_model(cfg: StageConfig) -> tuple[OneLLM, list[str]]:
    """The stage's starting model (a model YAML or a saved run), with LoRA and an added
    modality if the stage asks. -> (model, names of the parameters add_modality created)."""
    src = cfg.init_from
    if src.endswith((".yaml", ".yml")):
        model = OneLLM.from_config(src, cfg.model_overrides)
    else:
        model = OneLLM.from_pretrained(src, trainable_lora=True)
    if cfg.lora is not None and not hasattr(model.llm, "peft_config"):
        lo = cfg.lora
        model.add_lora(
            r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=tuple(lo.target_modules)
        )
    added: list[str] = []
    if cfg.add_modality is not None:
        a = cfg.add_modality
        spec = {**({"type": a.type} if a.type else {}), **a.options}
        added = model.add_modality(a.name, spec, new_experts=a.new_experts, init_from=a.init_from)
    for new, trained in cfg.init_modalities.items():
        try:
            model.init_modality_from(new, trained)
        except (InputError, ConfigError) as e:
            raise ConfigError(f"init_modalities.{new}: {e}") from e
    return model, added


def output_token_rows(model: OneLLM) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    """`trainable: ["@output_tokens"]`: the LLM's input-embedding and lm_head tables, each
    with a row mask (V, 1) that keeps only the output tokens' rows (<seg>, <gen>), as LISA
    trains them. Without it the new tokens' lm_head rows stay at their mean-resized start
    and the LoRA alone has to bend the states towards them. -> {name: (table, mask)}."""
    if not model.output_token_ids:
        raise ConfigError("trainable: '@output_tokens' needs outputs in the model config")
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for table in (
        model.llm.get_input_embeddings().weight,
        model.llm.get_output_embeddings().weight,
    ):
        keep = torch.zeros(table.shape[0], 1)
        keep[list(model.output_token_ids.values())] = 1
        out[f"model.{names[id(table)]}"] = (table, keep)
    return out


def set_trainable(root: nn.Module, patterns: list[str]) -> tuple[int, int]:
    """Freeze everything, then unfreeze parameters whose name matches a glob. -> (trainable, total)."""
    root.requires_grad_(False)
    matched = set()
    for name, p in root.named_parameters():
        for pat in patterns:
            if fnmatch.fnmatchcase(name, pat):
                p.requires_grad_(True)
                matched.add(pat)
    unused = [p for p in patterns if p not in matched]
    if unused:
        raise ConfigError(f"trainable: pattern {unused[0]!r} matches no parameter")
    params = list(root.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def param_groups(root: nn.Module, lr: float, scales: dict[str, float]) -> list[dict[str, Any]]:
    """Trainable parameters grouped by the first `lr_scale` glob their name matches."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in root.named_parameters():
        if p.requires_grad:
            bare = name.removeprefix("model.")
            scale = next(
                (
                    s
                    for pat, s in scales.items()
                    if fnmatch.fnmatchcase(bare, pat) or fnmatch.fnmatchcase(name, pat)
                ),
                1.0,
            )
            groups.setdefault(scale, []).append(p)
    return [{"params": ps, "lr": lr * s} for s, ps in groups.items()]


def choose_source(weights: dict[str, float], seed: int, step: int) -> str:
    """The source step `step` draws from, with probability proportional to its weight."""
    keys = list(weights)
    w = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(np.random.default_rng([seed, step, 1]).choice(len(keys), p=w / w.sum()))]


def lr_lambda(cfg: StageConfig):
    warm, total, floor = cfg.schedule.warmup_steps, cfg.steps, cfg.schedule.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class Trainer:
    def __init__(self, cfg: StageConfig, *, resume: bool = False, quiet: bool = False) -> None:
        self.cfg, self.quiet = cfg, quiet
        self.d = distributed.init()
        torch.manual_seed(cfg.seed)
        self.model, added = prepare_model(cfg)
        self.sources = {k: Source(self.model, k, s, cfg.seed) for k, s in cfg.data.items()}
        self.aux = self._aux_modules()
        # one root so that names (for patterns and checkpoints) are "model.*" / "aux.*"
        self.root = nn.ModuleDict({"model": self.model, "aux": self.aux})
        if "@added" in cfg.trainable and not added:
            raise ConfigError("trainable: '@added' needs an add_modality section")
        rows = output_token_rows(self.model) if "@output_tokens" in cfg.trainable else {}
        if rows and self.d.world > 1:  # the row masks are gradient hooks on unsharded tables
            raise ConfigError(
                "trainable: '@output_tokens' runs in one process only (not yet under FSDP)"
            )
        keywords = {"@added": added, "@output_tokens": list(rows)}
        expanded = [n for p in cfg.trainable for n in keywords.get(p, [p])]
        patterns = [p if p.startswith(("model.", "aux.")) else f"model.{p}" for p in expanded]
        self.n_trainable, self.n_total = set_trainable(
            self.root, patterns + ["aux.*"] * bool(len(self.aux))
        )
        for p, keep in rows.values():  # only the output tokens' rows of these tables move
            p.register_hook(lambda g, keep=keep: g * keep.to(g.dtype))
        self.model.train()
        if self.d.world > 1:
            for key in cfg.data:
                if self.batch_size(key) % self.d.world:
                    raise ConfigError(
                        f"data.{key}: batch_size {self.batch_size(key)} must divide by the {self.d.world} processes"
                    )
            distributed.shard(self.model)
        if cfg.compile:
            self.model.projection.experts.compile()
        self.params = [p for p in self.root.parameters() if p.requires_grad]
        o = cfg.optimizer
        self.optimizer = torch.optim.AdamW(
            param_groups(self.root, o.lr, o.lr_scale), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
            weight_decay=o.weight_decay,
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.files = RunFiles(Path(cfg.output_dir), self.d)
        self.step = self.files.resume(self) if resume else 0
        if self.d.main:
            self.files.start(cfg, self.n_trainable, self.n_total, resumed_at=self.step)

    def _aux_modules(self) -> nn.ModuleDict:
        aux = nn.ModuleDict()
        if any(s.task == "clip" for s in self.cfg.data.values()):
            from onellm.contrastive import ContrastiveHead

            aux["clip"] = ContrastiveHead(
                width=self.model.encoder.width, vocab_size=len(self.model.text_tokenizer)
            )
        return aux

    # ------------------------------------------------------------------ data
    def batch_size(self, key: str) -> int:
        return self.cfg.data[key].batch_size or self.cfg.batch_size

    def source_for(self, step: int) -> str:
        return choose_source({k: s.weight for k, s in self.cfg.data.items()}, self.cfg.seed, step)

    def micro_batches(self, step: int, key: str) -> list[dict[str, Any]]:
        """This process's share of step `step`'s batches (grad_accum of them)."""
        cfg, src = self.cfg, self.sources[key]
        size = self.batch_size(key)
        local = size // self.d.world
        out = []
        for a in range(cfg.grad_accum):
            # a source's scenes are indexed by step, so steps given to other sources leave gaps
            first = (step * cfg.grad_accum + a) * size + self.d.rank * local
            examples = [src[first + j] for j in range(local)]
            if src.cfg.task == "sam":  # no LLM: SAM's own pretraining, every shape of an image
                out.append({"pixels": torch.stack([ex.targets["pixels"] for ex in examples]),
                            **{k: [ex.targets[k] for ex in examples] for k in ("masks", "points", "phrases")}})  # fmt: skip
                continue
            if src.cfg.task == "t2i":  # no LLM: the UNet's own pretraining, caption -> image
                out.append({"image": torch.stack([ex.targets["image"] for ex in examples]),
                            "texts": [ex.caption for ex in examples]})  # fmt: skip
                continue
            rows = [
                tokens(
                    ex,
                    src.cfg.task,
                    self.model.text_tokenizer,
                    self.model.config.chat,
                    np.random.default_rng([cfg.seed, first + j, 3]),
                    src.cfg.caption_mix,
                    src.cfg.context_mix,
                )  # fmt: skip
                for j, ex in enumerate(examples)
            ]
            # long and short texts in separate micro-batches, each padded to its own longest
            # (stage 0's LM batches were 64% padding); the count depends on the batch size
            # only, so every process runs as many forward passes (FSDP needs that)
            n = max(1, local // 16) if src.cfg.task in ("lm", "instruct") else 1
            for group in length_groups([len(ids) for ids, _ in rows], n):
                part = [examples[k] for k in group]
                out.append(self._token_batch(src, [rows[k] for k in group], part))
        return out

    def _token_batch(self, src: Source, rows: list, examples: list) -> dict[str, Any]:
        """Padded token rows plus what the task needs beside them (inputs, targets)."""
        task = src.cfg.task
        batch = collate(rows, self.model.text_tokenizer.pad_token_id or 0)
        if src.modality is not None and task != "clip":
            batch["inputs"] = torch.cat([ex.input for ex in examples])
        if task in ("seg", "gen"):  # the named phrase: the heads' alignment target
            batch["phrases"] = [ex.caption for ex in examples]
        if task == "seg":
            batch["seg_masks"] = [ex.targets["mask"] for ex in examples]
            batch["seg_pixels"] = [ex.targets["pixels"] for ex in examples]
        if task == "gen":
            batch["gen_images"] = torch.stack([ex.targets["image"] for ex in examples])
        if task == "clip":
            batch["pixels"] = torch.cat([ex.input for ex in examples])
            if src.cfg.zoom is not None:  # the source drew each example's scale
                batch["pixels"] = zoom_out(batch["pixels"], [ex.zoom for ex in examples])
            batch["captions"] = [ex.caption for ex in examples]
        return batch

    # ------------------------------------------------------------------ one step
    def loss(self, batch: dict[str, Any], key: str, items: torch.Tensor) -> torch.Tensor:
        src = self.sources[key]
        if src.cfg.task == "clip":
            ids, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:]  # no BOS
            loss = self.aux["clip"].loss(self.model, batch["pixels"], ids, mask, batch["captions"])
            return loss * self._items("clip", batch) / items
        if src.cfg.task in ("sam", "t2i"):
            from onellm.outputs import pretrain_loss

            n = self._items(src.cfg.task, batch)
            return pretrain_loss(self.model, src.cfg.task, batch) * n / items
        decoding = src.cfg.task in ("seg", "gen")
        modality = src.modality if "inputs" in batch else None
        out = self.model(
            batch["input_ids"], inputs=batch.get("inputs"), modality=modality,
            attention_mask=batch["attention_mask"], labels=batch["labels"], num_items_in_batch=items,
            output_hidden_states=decoding,
        )  # fmt: skip
        if not decoding:
            return out.loss
        from onellm.outputs import decoder_loss

        extra = decoder_loss(self.model, src.cfg.task, batch, out, modality)
        self._decoder_losses.append(float(extra.detach()))
        return out.loss + extra / self.cfg.grad_accum  # a mean per micro-batch

    @staticmethod
    def _items(task: str, batch: dict[str, Any]) -> int:
        """What a batch's loss is a mean over: samples (clip, sam, t2i) or target tokens."""
        if task == "t2i":
            return len(batch["texts"])
        if task in ("clip", "sam"):
            return batch["pixels"].shape[0]
        return int((batch["labels"][:, 1:] != -100).sum())

    def train_step(self, step: int) -> dict[str, Any]:
        key = self.source_for(step)
        batches = self.micro_batches(step, key)
        task = self.sources[key].cfg.task
        count = sum(self._items(task, b) for b in batches)
        total = self.d.all_sum(torch.tensor(float(count)))
        items = (
            total / self.d.world
        )  # per-process normaliser: FSDP averages gradients over processes
        logged = torch.zeros(())
        self._decoder_losses: list[float] = []
        autocast = torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16,
                                  enabled=self.cfg.precision == "bf16")  # fmt: skip
        for batch in batches:
            with autocast:
                loss = self.loss(batch, key, items)
            if loss.requires_grad:  # a frozen modality's replay reaches no trainable part
                loss.backward()
            logged += loss.detach().float()
        distributed.sync_replicated_grads(self.params, self.d.world)
        norm = distributed.clip_grad_norm(self.params, self.cfg.grad_clip, self.d)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = float(self.d.all_sum(logged)) / self.d.world
        stats = {
            "loss": loss_value,
            "source": key,
            "grad_norm": norm,
            "lr": max(self.scheduler.get_last_lr()),
        }
        if self._decoder_losses:  # the mask / denoising part of the loss, on its own
            stats["decoder_loss"] = sum(self._decoder_losses) / len(self._decoder_losses)
        return stats

    # ------------------------------------------------------------------ the loop
    def eval_modalities(self) -> list[str]:
        if self.cfg.eval.modalities is not None:
            return [self.model.modality_key(m) for m in self.cfg.eval.modalities]
        return sorted(
            {
                s.modality
                for s in self.sources.values()
                if s.modality and s.cfg.task in ("caption", "instruct")
            }
        )

    def output_tasks(self) -> list[str]:
        """The decoder tasks this stage trains, each with its held-out metric."""
        return sorted({s.cfg.task for s in self.sources.values()} & set(DECODER_TASKS))

    def run_eval(self, model: Any = None) -> dict[str, Any]:
        """Held-out metrics and mean routing weights of `model` (default: the one training)."""
        from onellm.data import shapes

        model = model or self.model
        e = self.cfg.eval
        results = {m: evaluate(model, m, samples=e.samples, seed=self.cfg.seed + 1, max_new_tokens=e.max_new_tokens)
                   for m in self.eval_modalities()}  # fmt: skip
        routing, per_query = {}, {}
        for m in results:
            x = torch.cat([model.preprocess(s.input, m) for s in shapes.sample(m, 16, model=model)])
            report = model.routing_report(m, x)
            routing[m], per_query[m] = report["per_expert"], report["per_query"]
        record = {"results": results, "routing": routing, "routing_per_query": per_query}
        tasks = self.output_tasks()
        if tasks:
            from onellm.evaluate import evaluate_outputs

            record["outputs"] = {t: evaluate_outputs(model, t, samples=e.samples, seed=self.cfg.seed + 1)
                                 for t in tasks}  # fmt: skip
        return record

    def train(self) -> Path:
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.name, disable=not self.d.main or self.quiet,
                   dynamic_ncols=True)  # fmt: skip
        tick, seen = time.perf_counter(), 0
        while self.step < cfg.steps:
            stats = self.train_step(self.step)
            seen += self.batch_size(stats["source"]) * cfg.grad_accum
            self.step += 1
            if self.d.main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                rate = seen / (time.perf_counter() - tick)
                tick, seen = time.perf_counter(), 0
                self.files.log(
                    {"event": "train", "step": self.step, "samples_per_s": rate, **stats}
                )
                bar.set_postfix(
                    loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.1e}", sps=f"{rate:.0f}"
                )
            bar.update(1)
            if (
                cfg.eval.every
                and self.step % cfg.eval.every == 0
                and self.step < cfg.steps
                and self.d.world == 1
            ):
                self.files.log({"event": "eval", "step": self.step, **self.run_eval()})
            if (
                cfg.checkpoint_every
                and self.step % cfg.checkpoint_every == 0
                and self.step < cfg.steps
            ):
                self.files.checkpoint(self)
        bar.close()
        final = self.files.save_final(self)
        if self.d.main and (self.eval_modalities() or self.output_tasks()):
            # under FSDP the training model is sharded; rank 0 evaluates the saved one
            model = self.model if self.d.world == 1 else OneLLM.from_pretrained(final)
            self.files.log(
                {"event": "eval", "step": self.step, "final": True, **self.run_eval(model)}
            )
        if self.d.main:
            self.files.plot()
        return final


def train(cfg: StageConfig, *, resume: bool = False, quiet: bool = False) -> Path:
    """Run one stage; returns the directory of the final saved model."""
    return Trainer(cfg, resume=resume, quiet=quiet).train()


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
