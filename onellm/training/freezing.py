"""What trains in a stage: freeze everything, unfreeze the parameters a stage's
`trainable` globs name (OpenFlamingo's explicit freezing); learning-rate groups are in
onellm/training/optim.py.

Keywords beside the globs: `@added` (what `add_modality` created) and `@output_tokens`
(the <seg>/<gen> rows of the LLM's embedding and lm_head tables, as LISA trains them).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn

from onellm.errors import ConfigError


def output_token_rows(model: Any) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    """`trainable: ["@output_tokens"]`: the LLM's input-embedding and lm_head tables, each
    with a row mask (V, 1) on the table's device that keeps only the output tokens' rows.
    Without it the new tokens' lm_head rows stay at their mean-resized start and the LoRA
    alone has to bend the states towards them. -> {name: (table, mask)}."""
    if not model.outputs.token_ids:
        raise ConfigError("trainable: '@output_tokens' needs outputs in the model config")
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for table in (
        model.llm.get_input_embeddings().weight,
        model.llm.get_output_embeddings().weight,
    ):
        keep = torch.zeros(table.shape[0], 1, device=table.device)
        keep[list(model.outputs.token_ids.values())] = 1
        out[f"model.{names[id(table)]}"] = (table, keep)
    return out


def set_trainable(root: nn.Module, patterns: list[str]) -> tuple[int, int]:
    """Freeze everything, then unfreeze parameters whose name matches a glob.
    -> (trainable, total)."""
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


def apply_trainable(
    root: nn.ModuleDict, trainable: list[str], added: list[str], *, world: int
) -> tuple[int, int]:
    """A stage's `trainable` list on the recipe's root ({"model", "aux"}): keywords
    expanded, bare globs read under `model.`, every auxiliary module trained. -> counts."""
    model = root["model"]
    if "@added" in trainable and not added:
        raise ConfigError("trainable: '@added' needs an add_modality section")
    rows = output_token_rows(model) if "@output_tokens" in trainable else {}
    if rows and world > 1:  # the row masks are gradient hooks on unsharded tables
        raise ConfigError(
            "trainable: '@output_tokens' runs in one process only (not yet under FSDP)"
        )
    keywords = {"@added": added, "@output_tokens": list(rows)}
    expanded = [n for p in trainable for n in keywords.get(p, [p])]
    patterns = [p if p.startswith(("model.", "aux.")) else f"model.{p}" for p in expanded]
    counts = set_trainable(root, patterns + ["aux.*"] * bool(len(root["aux"])))
    for p, keep in rows.values():  # only the output tokens' rows of these tables move
        p.register_hook(lambda g, keep=keep: g * keep.to(g.dtype))
    return counts
