"""``focusft-attention`` end to end on the tiny checkpoint: report, plots, errors, a 4K-token sample's memory."""

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from focusft.analysis.cli import main
from focusft.analysis.measure import decoder_forward, measure_attention
from focusft.analysis.sample import synthetic_sample
from focusft.data.synthetic import generate_samples
from focusft.eval.checkpoint import load_model, read_checkpoint
from tests.tolerances import attention_share_error
from tests.unwritable import KINDS, unwritable_dir

PLOTS = ["sink_mass_per_layer.png", "attention_budget.png", "positional_profile.png", "attention_heatmap.png"]


def test_two_checkpoints_side_by_side_with_the_paper_rows(tiny_dir, tmp_path, capsys):
    out = tmp_path / "report"
    args = [str(tiny_dir), str(tiny_dir), "--label", "A", "--label", "B", "--mask", "causal", "bidir_context"]
    args += ["--synthetic", "tool", "--length", "700", "--heatmap-size", "64", "--output-dir", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert [(c["label"], c["mask"]) for c in data["checkpoints"]] == [("A", "causal"), ("B", "bidir_context")]
    for row in data["checkpoints"]:
        assert sum(row["budget"].values()) == pytest.approx(1.0, abs=attention_share_error(data["sample"]["tokens"]))
        assert row["context_engagement"] == pytest.approx(row["budget"]["prompt"] + row["budget"]["tool"])
        assert row["sink_mass"] == pytest.approx(sum(row["sink_mass_per_layer"]) / row["num_layers"])
        assert len(row["positional_profile"]) == data["sample"]["tokens"] and row["heatmap_layer"] == 2
    assert sum(data["sample"]["segment_tokens"].values()) == data["sample"]["tokens"]
    report = (out / "report.md").read_text()
    assert "| paper: SFT | – | 30.10% | 7.00% | 6.50% | – | 13.50% |" in report
    assert "| paper: FocuSFT | – | 0.06% | 27.00% | 14.30% | – | 41.40% |" in report
    assert re.search(r"\| A \| causal \| [\d.]+% \|", report) and report in capsys.readouterr().out
    for name in PLOTS:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_a_dataset_row_and_one_line_errors(tiny_dir, tokenizer, tmp_path, capsys):
    rows = generate_samples("qa1", num_samples=2, target_tokens=300, seed=0, tokenizer=tokenizer)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["--output-dir", str(tmp_path / "out"), "--device", "cpu"]
    assert main([str(tiny_dir), "--data", str(data), "--row", "1", *common]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["sample"]["description"] == f"{data} line 2"
    capsys.readouterr()
    for args, message in [
        ([str(tiny_dir), "--data", str(data), "--row", "2"], f"{data} has 2 rows; row 2 does not exist"),
        ([str(tmp_path / "nowhere"), "--data", str(data)], f"Checkpoint directory {tmp_path / 'nowhere'} does not"),
        ([str(tiny_dir), str(tiny_dir), "--mask", "causal", "causal", "causal", "--data", str(data)], "--mask has 3"),
        ([str(tiny_dir), "--synthetic", "qa1", "--length", "9000"], "more than"),
    ]:
        assert main([*args, *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("focusft-attention: error: ") and message in err[-1], err


def _memory_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def test_a_4k_token_sample_runs_layer_by_layer_in_little_memory(tiny_dir, tokenizer):
    sample = synthetic_sample("tool", 4096, seed=0, tokenizer=tokenizer)
    assert 3900 <= sample.seq_len <= 4096
    model = load_model(read_checkpoint(tiny_dir), dtype=torch.float32, device=torch.device("cpu"))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS of this process")
    before = _memory_kib("VmRSS")
    metrics = measure_attention(model.layers, decoder_forward(model), sample, "bidir_context", device="cpu")
    peak = _memory_kib("VmHWM") - before
    print(f"4K-token sample ({sample.seq_len} tokens): peak RSS {peak / 2**20:.2f} GiB above the start")
    assert metrics.heatmap.shape == (512, 512)
    # One layer's [heads, s, s] fp32 maps are 268 MB here; all layers' would be 1.07 GB.
    assert peak < 1.0 * 2**20


@pytest.mark.parametrize("kind", KINDS)
def test_an_output_dir_that_cannot_be_written_is_one_line_before_any_model(
    tiny_dir, tmp_path, capsys, monkeypatch, kind
):
    out, reason = unwritable_dir(tmp_path, kind, monkeypatch)
    monkeypatch.setattr("focusft.analysis.cli.read_checkpoint", lambda *a: pytest.fail("read before the check"))
    assert main([str(tiny_dir), "--synthetic", "qa1", "--output-dir", str(out), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == f"focusft-attention: error: --output-dir {reason}."
