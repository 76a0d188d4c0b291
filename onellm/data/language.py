"""The words of the shapes world (DESIGN.md), shared by the renderers, the captions and the
tiny text tokenizer, so that all three agree.

The caption forms are listed here rather than gathered from the registered modalities on
purpose: the tiny tokenizer is trained on this corpus, and gathering it from the registry
would make its vocabulary depend on which plug-ins happen to be imported in a process.
A new modality needs no edit here: words outside the corpus encode as byte-level BPE
pieces."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
PLACES = {"left": "on the left", "right": "on the right", "top": "at the top",
          "bottom": "at the bottom", "centre": "in the centre"}  # fmt: skip
MOTIONS = ("left", "right", "up", "down")
PITCHES = ("low", "high")
PATTERNS = ("steady", "rising", "falling", "beeping")
SOLIDS = ("sphere", "cube", "cylinder", "cone")
DISTANCES = ("near", "far")
ACTIVITIES = ("standing", "walking", "running", "turning")

QUESTIONS = (
    "What is this?", "Describe it.", "What do you see?", "What do you hear?",
    "What colour is it?", "What shape is it?", "Where is it?", "Which way does it move?",
    "What is the person doing?", "Is it near or far?", "Segment the", "Draw a", "yes", "no",
    "It is", "The", "a", "an", "and", "of", "in", "to", "is", "shape", "colour", "image",
    "video", "audio", "sound", "tone", "point cloud", "depth map", "normal map", "motion",
    "scan", "person", "moving", "object", "picture", "answer", "question",
)  # fmt: skip


def captions() -> Iterator[str]:
    """Every caption the shapes world can produce, one per scene kind."""
    for c, s, p in product(COLOURS, SHAPES, PLACES.values()):
        yield f"a {c} {s} {p}"
    for c, s, m in product(COLOURS, SHAPES, MOTIONS):
        yield f"a {c} {s} moving {m}"
    for p, q in product(PITCHES, PATTERNS):
        yield f"a {p} {q} tone"
    for c, s in product(COLOURS, SOLIDS):
        yield f"a {c} {s}"
    for d, s in product(DISTANCES, SHAPES):
        yield f"a {d} {s}"
    for a in ACTIVITIES:
        yield f"a person {a}"
    for c, s in product(COLOURS, SHAPES):
        yield f"segment the {c} {s}"
        yield f"draw a {c} {s}"


def corpus(extra: tuple[str, ...] = ()) -> list[str]:
    """Text the tiny tokenizer is trained on: captions, questions and template strings."""
    return [*captions(), *QUESTIONS, *extra]
