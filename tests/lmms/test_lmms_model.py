"""The lmms-eval model `onellm` on lmms-eval's own request objects (Instance), in-process:
visuals as lmms-eval passes them, generation options, loglikelihood against the model's own
loss, multi-round, the chat model type, and the entry point lmms-eval finds it by."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

lmms_eval = pytest.importorskip(
    "lmms_eval", reason="lmms-eval is the eval extra (pip install onellm[eval]); not installed"
)
from lmms_eval.api.instance import Instance  # noqa: E402

from onellm.cli.main import main  # noqa: E402
from onellm.errors import InputError  # noqa: E402
from onellm.inference.messages import one_turn  # noqa: E402
from onellm.lmms.chat_model import OneLLMChat  # noqa: E402
from onellm.lmms.inputs import Visuals  # noqa: E402
from onellm.lmms.model import OneLLMEval  # noqa: E402

TASK, SPLIT = "t", "test"


def red(size=32):
    return Image.fromarray(np.full((size, size, 3), (200, 20, 20), dtype=np.uint8))


def request(kind, args, doc_id=0):
    meta = {"task": TASK, "doc_id": doc_id, "repeats": 1}
    return Instance(request_type=kind, arguments=args, idx=0, metadata=meta)


@pytest.fixture
def lm(tiny_model):
    lm = OneLLMEval(model=tiny_model, batch_size=2, max_new_tokens=6)
    lm.task_dict = {TASK: {SPLIT: [{"image": red()}, {"image": red(40)}, {"image": red(48)}]}}
    return lm


def visual(doc):
    return [doc["image"]]


def test_visuals_as_lmms_eval_passes_them(tiny_model, tmp_path):
    read = Visuals(tiny_model, "mytask", tmp_path)
    im = red()
    wave = np.sin(np.linspace(0, 400, 8000)).astype(np.float32)
    got = read.inputs(
        [im, {"array": wave, "sampling_rate": 8000}, {"type": "point", "point": "a.ply"}]
    )
    assert got["image"] is im and got["point"] == "a.ply"
    back, rate = soundfile.read(got["audio"])  # a WAV at its own rate: the reader resamples
    assert rate == 8000 and np.allclose(back, wave, atol=1e-6)
    assert read.inputs("clip.mp4") == {"video": "clip.mp4"}
    assert read.inputs(["x.JPG"]) == {"image": "x.JPG"} and read.inputs(None) == {}
    with pytest.raises(InputError, match=r"^mytask: expected a visual as .*; got int"):
        read.inputs([3])
    with pytest.raises(InputError, match=r"^mytask: .*got a dict with keys \['bytes', 'x'\]"):
        read.inputs({"x": 1, "bytes": b""})
    with pytest.raises(InputError, match="^mytask: a thermal visual .* no thermal modality"):
        read.inputs({"type": "thermal", "thermal": "t.npy"})
    with pytest.raises(InputError, match="^mytask: expected one image input per request"):
        read.inputs([im, im])


def test_generate_until_is_model_chat_batched_with_the_tasks_options(lm, tiny_model):
    gen = {"max_new_tokens": 5, "temperature": 0, "until": ["\n\n"]}
    reqs = [request("generate_until", ("", dict(gen), visual, i, TASK, SPLIT)) for i in range(3)]
    reqs.append(request("generate_until", ("What is it?", dict(gen), visual, 0, TASK, SPLIT)))
    out = lm.generate_until(reqs)
    docs = lm.task_dict[TASK][SPLIT]
    want = tiny_model.chat(
        messages=[one_turn({"image": d["image"]}) for d in docs], max_new_tokens=5
    )
    assert out[:3] == [r.text for r in want]  # the batch of 2 and the batch of 1 alike
    asked = tiny_model.chat(
        docs[0]["image"], modality="image", prompt="What is it?", max_new_tokens=5
    )
    assert out[3] == asked.text
    # until cuts the text at its first stop string
    first = out[0].split()[0] if out[0].split() else None
    if first:
        stop = dict(gen, until=[first])
        cut = lm.generate_until([request("generate_until", ("", stop, visual, 0, TASK, SPLIT))])
        assert cut == [out[0].split(first)[0]]


def test_max_new_tokens_and_sampling_follow_the_request(lm, tiny_model):
    short = {"max_new_tokens": 1, "temperature": 0}
    long = {"max_new_tokens": 6, "temperature": 0}
    reqs = [
        request("generate_until", ("", dict(short), visual, 0, TASK, SPLIT)),
        request("generate_until", ("", dict(long), visual, 0, TASK, SPLIT)),
    ]
    one, six = lm.generate_until(reqs)
    assert len(tiny_model.text_tokenizer(one, add_special_tokens=False)["input_ids"]) <= 1
    assert six.startswith(one)
    hot = {"max_new_tokens": 6, "temperature": 5.0, "top_p": 1.0}
    torch.manual_seed(1)
    sampled = {
        lm.generate_until([request("generate_until", ("", dict(hot), visual, 0, TASK, SPLIT))])[0]
        for _ in range(4)
    }
    assert len(sampled) > 1  # temperature > 0 samples; 0 is greedy


def test_loglikelihood_is_the_models_own_loss_on_the_continuation(lm, tiny_model):
    image = lm.task_dict[TASK][SPLIT][0]["image"]
    greedy = tiny_model.chat(image, modality="image", max_new_tokens=4).text
    other = "a blue square on the left"
    reqs = [
        request("loglikelihood", ("", " " + greedy, visual, 0, TASK, SPLIT)),  # a delimiter
        request("loglikelihood", ("", other, visual, 0, TASK, SPLIT)),
        request("loglikelihood", ("What is it?", other, visual, 0, TASK, SPLIT)),
    ]
    (ll_g, is_g), (ll_o, is_o), (ll_q, _) = lm.loglikelihood(reqs)
    assert is_g and not is_o and ll_g > ll_o and ll_q != ll_o
    # the same number from the model's cross-entropy on a caption row (training's layout)
    ids, labels = tiny_model.layout.row([(other, True)], ["image"])
    x = {"image": tiny_model.preprocess(image, "image")}
    with torch.no_grad():
        out = tiny_model(torch.tensor([ids]), labels=torch.tensor([labels]), inputs=x)
    n = sum(t != -100 for t in labels[1:])
    assert ll_o == pytest.approx(-float(out.loss) * n, rel=1e-4)
    # a target given as doc_to_target (lmms-eval's loglikelihood tasks) is read from the doc
    lm.task_dict[TASK][SPLIT][0]["target"] = other
    by_doc = request("loglikelihood", ("", lambda d: d["target"], visual, 0, TASK, SPLIT))
    assert lm.loglikelihood([by_doc])[0][0] == pytest.approx(ll_o)


def test_multi_round_says_each_round_after_the_replies_so_far(lm, tiny_model):
    asked = ["What shape is it?", "What colour is it?"]

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        done = round_idx >= len(asked)
        return None, None if done else asked[round_idx], done, previous_output, None

    gen = {"max_new_tokens": 3, "temperature": 0}
    req = request(
        "generate_until_multi_round", (asked[0], gen, visual, doc_to_text, 0, TASK, SPLIT)
    )
    (replies,) = lm.generate_until_multi_round([req])
    image = lm.task_dict[TASK][SPLIT][0]["image"]
    first = tiny_model.chat(image, modality="image", prompt=asked[0], max_new_tokens=3).text
    second = tiny_model.chat(
        image, modality="image", prompt=asked[1], history=[(asked[0], first)], max_new_tokens=3
    ).text
    assert replies == [first, second]


def test_the_chat_model_type_reads_doc_to_messages_as_the_simple_type_reads_visuals(lm):
    chat = OneLLMChat(model=lm.model, batch_size=2, max_new_tokens=5)
    chat.task_dict = lm.task_dict
    gen = {"max_new_tokens": 5, "temperature": 0}

    def doc_to_messages(doc):  # what lmms-eval builds from doc_to_visual + doc_to_text
        return [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "content": [
                    {"type": "image", "url": doc["image"]},
                    {"type": "text", "text": "What is it?"},
                ],
            },
        ]

    got = chat.generate_until(
        [request("generate_until", ("", doc_to_messages, gen, 1, TASK, SPLIT))]
    )
    image = lm.task_dict[TASK][SPLIT][1]["image"]
    want = lm.model.chat(
        image, modality="image", prompt="What is it?", system="Be brief.", max_new_tokens=5
    )
    assert got == [want.text]


def test_lmms_eval_finds_onellm_by_its_entry_point():
    from lmms_eval import models

    assert "onellm" in models.list_available_models()
    assert models.get_model("onellm") is OneLLMChat  # lmms-eval prefers a chat class
    assert models.get_model("onellm", force_simple=True) is OneLLMEval
    with pytest.raises(InputError, match="pretrained=RUN"):
        OneLLMEval.create_from_arg_string("batch_size=2", {"batch_size": 1, "device": None})
    with pytest.raises(InputError, match="unknown model_args pretraned; expected pretrained"):
        OneLLMEval.create_from_arg_string("pretraned=runs/x", {"max_batch_size": None})


def test_the_chat_type_runs_rounds_from_doc_to_messages(lm, tiny_model):
    chat = OneLLMChat(model=tiny_model, batch_size=2, max_new_tokens=3)
    chat.task_dict = lm.task_dict
    asked = ["What shape is it?", "What colour is it?"]

    def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
        if round_idx is None:  # round 0: the whole conversation so far
            parts = [{"type": "image", "url": doc["image"]}, {"type": "text", "text": asked[0]}]
            return [{"role": "user", "content": parts}]
        done = round_idx >= len(asked)
        turn = None if done else [{"role": "user", "content": asked[round_idx]}]
        return turn, done, previous_output, None

    gen = {"max_new_tokens": 3, "temperature": 0}
    req = request("generate_until_multi_round", ("", doc_to_messages, gen, 2, TASK, SPLIT))
    (replies,) = chat.generate_until_multi_round([req])
    image = lm.task_dict[TASK][SPLIT][2]["image"]
    first = tiny_model.chat(image, modality="image", prompt=asked[0], max_new_tokens=3).text
    second = tiny_model.chat(
        image, modality="image", prompt=asked[1], history=[(asked[0], first)], max_new_tokens=3
    ).text
    assert replies == [first, second]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "onellm_point_cap"], "--tasks goes with --backend lmms-eval"),
        (
            ["--backend", "lmms-eval", "--tasks", "t", "--prompt", "Hi", "--no-meteor"],
            "--prompt, --no-meteor are onellm's backend's",
        ),
    ],
)
def test_eval_refuses_what_its_lmms_eval_backend_would_ignore(argv, message, capsys):
    assert main(["eval", "tiny", *argv]) != 0
    assert message in capsys.readouterr().err
