"""`onellm train`, and the verbs that prepare a stage's data: `onellm shards` (a manifest
as WebDataset tar shards) and `onellm cache-features` (the frozen encoder's outputs)."""

from __future__ import annotations

import argparse

from onellm.data.feature_cache import cache_stage
from onellm.data.shards import write_shards
from onellm.training.recipe import train
from onellm.training.stage import load_stage


def stage_overrides(args: argparse.Namespace) -> list[str]:
    """The command line's key=value overrides, `--device` as one more."""
    return [*args.overrides, *([f"device={args.device}"] if args.device else [])]


def train_verb(args: argparse.Namespace) -> int:
    final = train(load_stage(args.stage, stage_overrides(args)), resume=args.resume)
    print(f"saved {final}")
    return 0


def shards_verb(args: argparse.Namespace) -> int:
    written = write_shards(args.manifest, args.out, per_shard=args.per_shard)
    for modality, pattern in written.items():
        print(f"{modality}: data: {pattern}")
    return 0


def cache_features_verb(args: argparse.Namespace) -> int:
    for name, note in cache_stage(load_stage(args.stage, stage_overrides(args))).items():
        print(f"data.{name}: {note}")
    return 0
