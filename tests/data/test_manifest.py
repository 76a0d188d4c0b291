import json

import numpy as np
import pytest
from PIL import Image

from onellm.data.manifest import read_manifest
from onellm.errors import InputError


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    return tmp_path


def write(folder, lines):
    path = folder / "data.jsonl"
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    )
    return path


def test_records_resolve_relative_paths_and_read_conversations(folder):
    path = write(
        folder,
        [
            {"modality": "image", "input": "img/a.png", "caption": "a red circle"},
            {
                "modality": "image",
                "input": "img/a.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is this?"},
                    {"from": "gpt", "value": "a red circle"},
                    {"from": "human", "value": "Colour?"},
                    {"from": "gpt", "value": "red"},
                ],
            },
        ],
    )
    a, b = read_manifest(path)
    assert a.input == str(folder / "img" / "a.png") and a.caption == "a red circle"
    # LLaVA's <image> stays: the block goes where the text names it (onellm/modeling/layout.py)
    assert b.turns == [("<image>\nWhat is this?", "a red circle"), ("Colour?", "red")]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", r"data.jsonl:2: expected a JSON object, got invalid JSON"),
        (
            {"modality": "image", "input": "img/missing.png", "caption": "x"},
            r"data.jsonl:2: input .*missing.png.* does not exist",
        ),
        ({"input": "img/a.png", "caption": "x"}, r"data.jsonl:2: expected a string 'modality'"),
        (
            {"modality": "image", "input": "img/a.png"},
            r"data.jsonl:2: expected a non-empty 'caption' or 'conversations'",
        ),
        (
            {
                "modality": "image",
                "input": "img/a.png",
                "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}],
            },
            r"data.jsonl:2: turn 1 must be a 'human' then a 'gpt' message",
        ),
    ],
)
def test_a_bad_record_names_its_line(folder, bad, message):
    path = write(folder, [{"modality": "image", "input": "img/a.png", "caption": "ok"}, bad])
    with pytest.raises(InputError, match=message):
        read_manifest(path)
