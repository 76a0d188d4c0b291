"""The efficiency figures every run logs (onellm/training/efficiency.py): padding share,
positions and samples a second by modality, MFU against a stated peak."""

import torch

from onellm.data.batches import collate
from onellm.data.packing import pack
from onellm.training import efficiency
from onellm.training.efficiency import Efficiency, batch_figures
from onellm.training.recipe import Recipe, read_metrics
from tests.training.test_train import short

ROWS = [([1, 5, 6, 2], [-100, 5, 6, 2]), ([1, 7, 2], [-100, 7, 2]), ([1, 9], [-100, 9])]


def test_padding_share_is_zero_for_a_full_packed_row_and_the_count_for_a_padded_batch():
    full, _ = pack([ROWS[0], ROWS[2]], 0, 6)
    full["features"] = {"image": torch.zeros(2, 3, 4)}
    assert batch_figures(full) == (6, 0, {"image": 2})
    padded = collate(ROWS, 0)  # 3 rows of 4: 2 + 1 + 0 padding positions
    padded["inputs"] = {"image": torch.zeros(1, 3), "audio": torch.zeros(1, 3)}
    assert batch_figures(padded) == (12, 3, {"image": 1, "audio": 1, "text": 2})
    assert batch_figures({"pixels": torch.zeros(2, 3)}) == (0, 0, {})  # no LLM rows

    e = Efficiency(torch.device("cpu"), "fp32")
    e.start(("image", [padded]))
    torch.ones(8, 8) @ torch.ones(8, 8)  # the first step of a source is counted
    e.done()
    assert e.per_position["image"] == 2 * 8**3 / 12
    e.start(("image", [full]))
    e.done()
    got = e.figures(2.0)
    assert got["padding_share"] == 3 / 18 and got["tokens_per_s"] == 18 / 2
    assert got["samples_per_s.image"] == 3 / 2 and got["samples_per_s.text"] == 1.0
    assert got["mfu"] == (2 * 8**3 / 12) * 18 / 2 / e.peak > 0


def test_the_cpu_peak_is_probed_once_and_kept(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(efficiency, "probe_cpu", lambda dtype: calls.append(dtype) or 5e10)
    first = efficiency.peak_flops(torch.device("cpu"), "bf16", cache=tmp_path)
    again = efficiency.peak_flops(torch.device("cpu"), "bf16", cache=tmp_path)
    assert first == again and first[0] == 5e10 and calls == [torch.bfloat16]
    assert "threads | bf16: matmul probe" in first[1]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "NVIDIA H100 80GB HBM3")
    assert efficiency.peak_flops(torch.device("cuda"), "bf16")[0] == 989e12


def test_a_run_logs_the_figures_and_its_peak(tmp_path):
    t = Recipe(short(tmp_path, "steps=4", "log_every=2", "eval.modalities=[]"), quiet=True)
    t.setup().train()
    t.files.plot()
    assert (tmp_path / "run" / "plots" / "efficiency.png").is_file()
    records = read_metrics(tmp_path / "run")
    assert [r["event"] for r in records if r["event"] in ("peak", "packing")] == [
        "packing",
        "peak",
    ]
    # packed by default: test_train's resume and test_distributed's 1 == 2 processes run so
    assert next(r for r in records if r["event"] == "packing")["packing"].startswith("on: ")
    peak = next(r for r in records if r["event"] == "peak")
    assert peak["peak_flops"] > 0 and "matmul probe" in peak["peak_source"]
    train = [r for r in records if r["event"] == "train"]
    assert len(train) == 2
    for r in train:
        assert r["padding_share"] == 0.0  # stage 1's captions, packed: one full row a step
        assert r["tokens_per_s"] > 0 and r["samples_per_s.image"] > 0 and 0 < r["mfu"] < 1
