"""Replay: a stage that starts from a trained model keeps sampling what that model was
trained on, so that fine-tuning on new data does not erase it.

    replay: {ratio: 0.3}    # the parent's sources in 30% of the steps
    replay: false           # off

The parent's sources are read from the saved model (onellm/training/lineage.py): for each
(modality, data) its latest source of captions or questions, as it was (task, pool, batch),
except those the stage names itself (the same modality and data). They join the stage's
data as `replay_<key>` with weights that sum to `ratio / (1 - ratio)` of the stage's own,
so `ratio` of the steps draw from them: half for the modalities the stage trains, half for
the others (`split`); a replayed instruction source keeps `caption_mix` of plain captions
(0.5: the fine-tune's captions pull that prompt). By default (`replay:` unset) it is on at
ReplayConfig's ratio whenever there is such a source: the demo's stages name every earlier
modality themselves, so they replay nothing; a fine-tune on one's own manifest from the
demo's model replays all eight shapes-world modalities.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from onellm.training.lineage import Lineage, teaches
from onellm.training.stage import ReplayConfig, SourceConfig, StageConfig
from onellm.training.stage_eval import SYNTHETIC

FIELDS = {f.name for f in dataclasses.fields(SourceConfig)}


def named(cfg: StageConfig) -> set[tuple[str, str]]:
    """The (modality, data) pairs the stage's own sources read."""
    out = set()
    for key, s in cfg.data.items():
        modality = s.modality[0] if isinstance(s.modality, list) else s.modality or key
        out.add((modality, s.data if s.data == SYNTHETIC else str(Path(s.data).resolve())))
    return out


def plan_replay(
    cfg: StageConfig, parent: Lineage | None
) -> tuple[dict[str, SourceConfig], dict[str, Any]]:
    """The replay sources to add to `cfg.data`, and what to report about them
    ({"ratio", "sources": {key: {modality, task, data, weight}}, "note"})."""
    if cfg.replay is False:
        return {}, {"note": "off (replay: false)"}
    if parent is None:
        return {}, {"note": "none: the stage starts from a model config, not a trained model"}
    settings = cfg.replay if isinstance(cfg.replay, ReplayConfig) else ReplayConfig()
    ratio = settings.ratio
    own, missing, chosen = named(cfg), [], {}
    for (modality, data), src in parent.sources().items():
        teaching = teaches(src["task"], "captions") or teaches(src["task"], "questions")
        if (modality, data) in own or not teaching:
            continue
        if data != SYNTHETIC and not Path(data).exists():
            missing.append(f"{modality} from {data}")
            continue
        key = f"replay_{modality}" + ("" if data == SYNTHETIC else f"_{Path(data).stem}")
        chosen[key] = src
    notes = [f"not replayed (file gone): {', '.join(missing)}"] if missing else []
    if not chosen:
        notes.append(
            "nothing to replay: the stage names every source of captions or questions the parent was trained on"
        )
        return {}, {"note": "; ".join(notes)}
    mine = sum(s.weight for s in cfg.data.values())
    weights = split(chosen, {m for m, _ in own}, mine, ratio)
    everything = mine + sum(weights.values())
    mix = {} if settings.caption_mix is None else {"caption_mix": settings.caption_mix}
    added = {
        k: SourceConfig(
            **{f: v for f, v in src.items() if f in FIELDS} | {"weight": weights[k]} | mix
        )
        for k, src in chosen.items()
    }
    info = {
        "ratio": ratio,
        "sources": {
            k: {"modality": s["modality"], "task": s["task"], "data": s["data"]}
            | {"weight": weights[k], "share": weights[k] / everything}
            for k, s in chosen.items()
        },
        "note": "; ".join(notes),
    }
    return added, info


def split(
    chosen: dict[str, dict[str, Any]], trained: set[str], own: float, ratio: float
) -> dict[str, float]:
    """Each replay source's weight: together `ratio / (1 - ratio)` of the stage's own
    weight `own`, half of it to the sources of modalities the stage trains (the ones its
    data pulls away: a fine-tune on stars lost the shapes world's image captions, 99% ->
    56%, at an equal share of 1/8, and held every other modality) and half to the others,
    equally within each half (all of it to one side when the other is empty)."""
    total = own * ratio / (1 - ratio)
    near = [k for k, s in chosen.items() if s["modality"] in trained]
    far = [k for k in chosen if k not in near]
    halves = [(near, total / 2), (far, total / 2)] if near and far else [(list(chosen), total)]
    return {k: share / len(keys) for keys, share in halves for k in keys}


def replay_line(name: str, info: dict[str, Any]) -> str:
    """The start-of-stage line that says what replays, at which ratio."""
    if "ratio" not in info:
        return f"[{name}] replay: {info['note']}"
    mods = sorted({s["modality"] for s in info["sources"].values()})
    data = sorted(
        {
            "shapes world" if s["data"] == SYNTHETIC else Path(s["data"]).name
            for s in info["sources"].values()
        }
    )
    extra = f"; {info['note']}" if info["note"] else ""
    return (
        f"[{name}] replay: {info['ratio']:.0%} of the steps from the parent's sources "
        f"({', '.join(mods)}; {', '.join(data)}); `replay: false` turns it off{extra}"
    )


def replay_reasons(info: dict[str, Any], parent: Lineage | None) -> dict[str, list[str]]:
    """{modality: what replay did for it}, the reason the summary gives beside a drop."""
    if parent is None:
        return {}
    if "ratio" in info:
        share: dict[str, float] = {}
        for s in info["sources"].values():
            share[s["modality"]] = share.get(s["modality"], 0.0) + s["share"]
        return {
            m: [
                f"the parent's {m} data replayed in {v:.0%} of the steps (replay.ratio {info['ratio']:g})"
            ]
            for m, v in share.items()
        }
    if info["note"].startswith("off"):
        return {m: ["replay was off (replay: false)"] for m, _ in parent.sources()}
    return {}
