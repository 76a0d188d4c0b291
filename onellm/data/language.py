"""The words of the shapes world (DESIGN.md), shared by the renderers and the tiny text
tokenizer, so that both agree.

Each modality says which captions its renderer gives (its `captions()`, beside `render`);
the tiny tokenizer learns those of the modalities in the model's config
(onellm/modeling/build.py), so its vocabulary depends on the config alone, never on which
plug-ins a process imported.
A modality added later needs no edit here: words outside the corpus encode as byte-level
BPE pieces."""

from __future__ import annotations

from collections.abc import Iterable

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
PLACES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
MOTIONS = ("left", "right", "up", "down")
PITCHES = ("low", "high")
PATTERNS = ("steady", "rising", "falling", "beeping")
SOLIDS = ("sphere", "cube", "cylinder", "cone")
DISTANCES = ("near", "far")
ACTIVITIES = ("standing", "walking", "running", "turning")

QUESTIONS = (
    "What is this?",
    "Describe it.",
    "What do you see?",
    "What do you hear?",
    "What colour is it?",
    "What shape is it?",
    "Where is it?",
    "Which way does it move?",
    "What is the person doing?",
    "Is it near or far?",
    "Segment the",
    "Draw a",
    "yes",
    "no",
    "It is",
    "The",
    "a",
    "an",
    "and",
    "of",
    "in",
    "to",
    "is",
    "shape",
    "colour",
    "image",
    "video",
    "audio",
    "sound",
    "tone",
    "point cloud",
    "depth map",
    "normal map",
    "motion",
    "scan",
    "person",
    "moving",
    "object",
    "picture",
    "answer",
    "question",
)


def corpus(captions: Iterable[str] = (), extra: tuple[str, ...] = ()) -> list[str]:
    """Text the tiny tokenizer is trained on: captions (each once, first seen first),
    questions and template strings."""
    return [*dict.fromkeys(captions), *QUESTIONS, *extra]
