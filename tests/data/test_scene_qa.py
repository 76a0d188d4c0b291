"""The spatial-question scenes (onellm/data/scene_qa.py): every answer follows from the
drawing, and both splits are deterministic and apart."""

import numpy as np
import pytest

from onellm.data import scene_qa
from onellm.data.draw import RGB


def colour_at(img: np.ndarray, colour: str, cell: int) -> float:
    """The share of cell's pixels within 40 of `colour`."""
    row, col = divmod(cell, 2)
    h, w = img.shape[0] // 2, img.shape[1] // 2
    part = img[row * h : (row + 1) * h, col * w : (col + 1) * w].astype(int)
    return float((np.abs(part - np.array(RGB[colour])).max(-1) < 40).mean())


@pytest.mark.parametrize("index", range(12))
def test_answers_follow_from_the_drawing(index):
    sc = scene_qa.scene(index, "test")
    at = {cell: (c, s) for c, s, cell in sc.shapes}
    assert 2 <= len(sc.shapes) <= 4 and len(set(at)) == len(sc.shapes)
    for c, _, cell in sc.shapes:  # each shape is painted in its own cell
        assert colour_at(sc.image, c, cell) > 0.03
    for q, a in sc.questions["existence"]:
        named = tuple(q[len("Is there a ") : -1].split(" "))
        assert (a == "yes") == (named in {(c, s) for c, s, _ in sc.shapes})
    yes = sum(a == "yes" for _, a in sc.questions["existence"])
    assert yes * 2 == len(sc.questions["existence"])  # as many noes as yeses
    for q, a in sc.questions["position"]:
        c, s = q[len("Where is the ") : -1].split(" ")
        assert a == scene_qa.CELLS[next(cell for cc, ss, cell in sc.shapes if (cc, ss) == (c, s))]
    for q, a in sc.questions["relation"]:
        rel = next(r for r in scene_qa.RELATIONS if q.startswith(f"What is {r} the "))
        c, s = q[len(f"What is {rel} the ") : -1].split(" ")
        row, col = divmod(next(cell for cc, ss, cell in sc.shapes if (cc, ss) == (c, s)), 2)
        dr, dc = scene_qa.RELATIONS[rel]
        assert a == "the " + " ".join(at[(row + dr) * 2 + col + dc])
    for q, a in sc.questions["count"]:
        shape = q[len("How many ") : -2]
        assert scene_qa.NUMBERS.index(a) == sum(s == shape for _, s, _ in sc.shapes)


def test_scenes_are_deterministic_and_splits_differ():
    a, b = scene_qa.scene(5, "train", seed=1), scene_qa.scene(5, "train", seed=1)
    assert np.array_equal(a.image, b.image) and a.questions == b.questions
    assert not np.array_equal(a.image, scene_qa.scene(5, "test", seed=1).image)
