"""Several references to a record: `captions` beside or instead of `caption`, and a bad one
named by its line, field, what was expected and what was given."""

import json

import numpy as np
import pytest
from PIL import Image

from onellm.data.manifest import read_manifest
from onellm.errors import InputError


@pytest.fixture
def write(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")

    def lines(*records) -> str:
        path = tmp_path / "test.jsonl"
        base = {"modality": "image", "input": "a.png"}
        path.write_text("\n".join(json.dumps(base | r) for r in records) + "\n")
        return str(path)

    return lines


def test_captions_are_every_reference_and_caption_joins_them_first(write):
    one, many, both = read_manifest(
        write(
            {"caption": "a red circle"},
            {"captions": [" a cat on a bed ", "a sleeping cat"]},
            {"caption": "a dog", "captions": ["a puppy", "a dog", "a small dog"]},
        )
    )
    assert (one.caption, one.captions) == ("a red circle", ["a red circle"])
    # training targets the first; evaluation scores against all
    assert (many.caption, many.captions) == ("a cat on a bed", ["a cat on a bed", "a sleeping cat"])
    assert (both.caption, both.captions) == ("a dog", ["a dog", "a puppy", "a small dog"])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"captions": []}, "expected 'captions' as a non-empty list of strings, got []"),
        ({"captions": "a cat"}, "expected 'captions' as a non-empty list of strings, got 'a cat'"),
        ({"captions": ["a cat", 5]}, "expected 'captions'[1] a non-empty string, got 5"),
        ({"captions": ["a cat", " "]}, "expected 'captions'[1] a non-empty string, got ' '"),
    ],
)
def test_a_bad_reference_names_the_record_field_expected_and_given(write, record, message):
    path = write({"caption": "fine"}, record)
    with pytest.raises(InputError) as e:
        read_manifest(path)
    assert str(e.value) == f"manifest {path}:2: {message}"
