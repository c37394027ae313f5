"""The fake-tensor memory estimate against the measured peak of the same step, and its BlockMask model."""

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from benchmarks import max_seq_len
from benchmarks.memory_estimate import StepOptions, estimate_step, fake_block_mask_tensors, measure_step
from benchmarks.models import PRESETS


@pytest.mark.parametrize(
    "options", [StepOptions(bilevel=False), StepOptions(), StepOptions(ffn_tile_tokens=64)], ids=lambda o: o.name
)
def test_estimate_equals_the_measured_cpu_peak(options):
    """Fake tensors, no allocation: the estimated peak is the measured one (the issue allows 10%)."""
    preset = PRESETS["cpu"]
    estimated = estimate_step(preset, 256, options, attention="dense")
    measured = measure_step(preset, 256, options)
    assert estimated.before == pytest.approx(measured.before, rel=1e-3)
    assert estimated.peak == pytest.approx(measured.peak, rel=0.02)


def test_options_lower_the_estimated_peak_of_the_gpu_path():
    """Offloading and tiling keep less on the device; FocuSFT stays near Standard SFT."""
    preset = PRESETS["cpu"]
    sft = estimate_step(preset, 2048, StepOptions(bilevel=False)).growth
    focus = estimate_step(preset, 2048, StepOptions()).growth
    offload = estimate_step(preset, 2048, StepOptions(offload=True)).growth
    tiled = estimate_step(preset, 2048, StepOptions(offload=True, ffn_tile_tokens=256)).growth
    assert tiled < offload < focus
    assert focus < 1.3 * sft


def test_block_mask_model_holds_the_bytes_of_a_real_block_mask():
    real = create_block_mask(lambda b, h, q, k: k <= q, 1, None, 1024, 1024, device="cpu")
    tensors = [
        getattr(real, name)
        for name in (
            "kv_num_blocks",
            "kv_indices",
            "full_kv_num_blocks",
            "full_kv_indices",
            "q_num_blocks",
            "q_indices",
            "full_q_num_blocks",
            "full_q_indices",
        )
    ]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    assert nbytes == sum(t.numel() * t.element_size() for t in fake_block_mask_tensors(1, 1024))


def test_sequence_parallel_estimate_is_refused_with_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        max_seq_len.main(["--estimate", "--preset", "qwen2.5-7b", "--sp", "2"])
    assert "FocuSFT estimate error" in capsys.readouterr().err


def test_longest_fit_refines_between_grid_lengths(monkeypatch):
    """With a peak linear in length, the search lands on the last 1K multiple that fits below the next grid length."""

    class Peak:
        def __init__(self, n):
            self.peak = n * 1000

    monkeypatch.setattr(max_seq_len, "estimate_step", lambda preset, n, options: Peak(n))
    limit = 40_000 * 1000
    assert max_seq_len.longest_fit(None, StepOptions(), limit, [16384, 32768], refine=4) == 38912
    assert torch.tensor(38912 * 1000) <= limit
