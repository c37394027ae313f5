"""The benchmark scripts' CPU-testable parts: presets, arguments, the cost model, a tiny run of each."""

import json
import sys

import pytest
import torch

from benchmarks import max_seq_len, step_benchmark
from benchmarks.data import context_flags, synthetic_batch
from benchmarks.models import PRESETS, build_model
from focusft.bilevel import InnerLoopConfig
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import document_positions
from focusft.split_decoder import IGNORE_INDEX, SplitDecoder
from focusft.tiled_ffn import apply_tiled_ffn


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_on_the_meta_device(name):
    preset = PRESETS[name]
    model = build_model(preset, "meta", torch.bfloat16)
    assert model.tok_embeddings.num_embeddings == preset.vocab_size
    if name == "qwen2.5-7b":
        assert len(model.layers) == 28 and 7.5e9 < sum(p.numel() for p in model.parameters()) < 7.7e9


def test_cost_model_is_the_issues_formula():
    assert step_benchmark.cost_model(2, 0.35, "on+no-inner") == pytest.approx(1.35)
    assert step_benchmark.cost_model(2, 0.35, "on") == pytest.approx(1 + 3 * 2 * 0.35 / 4)
    assert step_benchmark.cost_model(2, 0.35, "off") == pytest.approx(1 + 2 * 2 * 0.35 / 3)
    assert step_benchmark.cost_model(2, 0.35, "on+inner") == pytest.approx(1 + 3 * 2 * 0.35 / 4)


def test_synthetic_rows_have_two_exchanges_with_a_tenth_in_responses():
    flags = context_flags(1000)
    assert (~flags).sum() == 100 and flags[0] and not flags[-1]
    tokens, labels, layout = synthetic_batch(200, 50, seed=0, device="cpu")
    trained = labels != IGNORE_INDEX
    # Shifted: position t is trained when t+1 is a response token.
    assert torch.equal(trained[0, :-1], ~layout.context[0, 1:])
    assert torch.equal(labels[0, :-1][trained[0, :-1]], tokens[0, 1:][~layout.context[0, 1:]])


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        step_benchmark.parse_args(["--seq-lens", "8"])
    assert "too short" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        step_benchmark.parse_args(["--ac", "sometimes"])


def test_dry_run_prints_the_plan_for_a_gpu_preset(capsys):
    step_benchmark.main(["--preset", "qwen2.5-1.5b", "--dry-run"])
    out = capsys.readouterr().out
    assert "fast weights on 18..27" in out and "cost model FocuSFT/SFT, AC on: 1.536" in out


def test_a_tiny_cpu_run_prints_every_variant_breakdown_and_targets(tmp_path, capsys):
    raw = tmp_path / "raw.json"
    argv = ["--seq-lens", "64", "--ac", "on", "--repeats", "1", "--warmup", "0", "--ffn-tile-tokens", "16"]
    step_benchmark.main([*argv, "--whole-mask", "--json", str(raw)])
    out = capsys.readouterr().out
    tiled = [v + step_benchmark.TILED_SUFFIX for v in step_benchmark.TILED_VARIANTS]
    for variant in [*step_benchmark.VARIANTS, *tiled, "SFT+Bidir, whole mask"]:
        assert f"| 64 | on | {variant} |" in out
    assert "| outer backward |" in out and "| inner step 2 (" in out
    assert "FocuSFT / straightforward time" in out and "FocuSFT / SFT memory growth" in out
    assert "SFT+Bidir row blocks / whole mask time" in out and "row blocks / whole mask memory growth" in out
    assert "FocuSFT / SFT+Bidir time" in out and "| 64 | on | FocuSFT | " in out.split("Sequence-tiled FFN")[1]
    cell = json.loads(raw.read_text())["64|on"]
    assert all(len(m["times"]) == 1 and m["memory"] > 0 for m in cell.values())


def test_untiled_rows_run_the_plain_ffn_and_tiled_rows_the_tiles():
    """--ffn-tile-tokens: one tileable model, the untiled rows with a tile over the whole row (a plain FFN call)."""
    preset = PRESETS["cpu"]
    decoder = build_model(preset, "cpu", torch.float32)
    slots = attach_fast_weight_slots(decoder, FastWeightConfig(layer_fraction=0.35))
    apply_tiled_ffn(decoder, 16)
    model = SplitDecoder(decoder, slots)
    calls = []
    for layer in decoder.layers:
        layer.mlp.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append((m.tile_tokens, args[0].shape[1], kwargs.get("tiled", True))),
            with_kwargs=True,
        )
    tokens, labels, layout = synthetic_batch(64, preset.vocab_size, seed=0, device="cpu")
    setting = step_benchmark.Setting(
        model=model,
        slots=slots,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-5),
        inner=InnerLoopConfig(steps=1),
        tokens=tokens,
        labels=labels,
        layout=layout,
        input_pos=document_positions(layout.doc),
        mask_kind="dense",
        activation_checkpointing=True,
        dtype=torch.float32,
    )
    # (tile, positions, tiled) of each FFN call: the tiled rows call the FFN once per tile of 16 inside;
    # the last layer's FFN runs on the response positions only (fewer than a tile).
    responses = int((labels != IGNORE_INDEX).sum())
    assert 0 < responses < 16
    expected = {
        "FocuSFT": {(sys.maxsize, 64, True), (sys.maxsize, responses, True)},
        "FocuSFT" + step_benchmark.TILED_SUFFIX: {(16, 64, True), (16, 16, False), (16, responses, True)},
    }
    for variant, calls_seen in expected.items():
        calls.clear()
        step_benchmark.make_step(setting, variant, seed=0, ffn_tile_tokens=16)(optimize=False)
        assert set(calls) == calls_seen


def test_max_seq_len_search_runs_under_fsdp_on_cpu(tmp_path, capsys):
    out = tmp_path / "search.json"
    max_seq_len.main(["--preset", "cpu", "--start", "32", "--stop", "64", "--json", str(out)])
    outcomes = json.loads(out.read_text())
    assert [o["seq_len"] for o in outcomes] == [32, 64] and all(o["ok"] for o in outcomes)
    assert "longest FocuSFT training step: 64 tokens" in capsys.readouterr().out


def test_sequence_parallel_report_takes_the_larger_rank_and_gives_the_ratios():
    from benchmarks.sequence_parallel import report

    def rank(peak1, peak2):
        return {
            sp: {"peak_mib": peak, "seconds": 2.0 * sp, "cpu_seconds": 1.0 * sp}
            for sp, peak in ((1, peak1), (2, peak2))
        }

    out = report([{"seq_len": 2048, "ranks": [rank(100.0, 50.0), rank(90.0, 60.0)]}])
    assert "| 2048 | 2 | 60.0 | 4.00 | 2.00 |" in out
    assert "memory sp2/sp1 0.600×;" in out
    assert "step time sp2/sp1 2.000× wall, 2.000× CPU (tokens/s per rank 0.250× wall)" in out


def test_lora_benchmark_counts_what_each_outer_loop_trains_and_keeps(capsys):
    from benchmarks import lora_benchmark

    lora_benchmark.main(["--seq-len", "64", "--rounds", "1"])
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in capsys.readouterr().out.splitlines()}
    full = lora_benchmark.build("full")
    adapters = sum(p.numel() for p in lora_benchmark.build("LoRA").parameters() if p.requires_grad)
    for variant in lora_benchmark.VARIANTS:
        assert f"| {sum(p.numel() for p in full.parameters()):,} |" in rows[("full", variant)]
        assert f"| {adapters:,} |" in rows[("LoRA", variant)] and f"| {adapters:,} |" in rows[("QLoRA", variant)]
    # QLoRA keeps less training state than LoRA, which keeps less than full fine-tuning.
    state = {outer: float(rows[(outer, "FocuSFT")].split("|")[4]) for outer in lora_benchmark.OUTER}
    assert state["QLoRA"] < state["LoRA"] < state["full"]


def test_row_block_size_prints_each_block_against_the_whole_mask(capsys):
    from benchmarks import row_block_size

    row_block_size.main(["--seq-len", "64", "--blocks", "16", "48", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| whole mask (SDPA; building the mask once:" in out
    assert "| row blocks of 16 |" in out and "| row blocks of 48 |" in out


def test_fast_weight_sweep_names_a_bad_setting_or_a_missing_log_in_one_line(tmp_path, capsys):
    from benchmarks import fast_weight_sweep

    for bad, message in (("0.5,0,0.35", "rank must be"), ("0.5,1,1.5", "layer_fraction"), ("0.5,x,0.35", "expected")):
        with pytest.raises(SystemExit):
            fast_weight_sweep.main(["--setting", bad, "--report", "--output-dir", str(tmp_path)])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no metric log for lr0.5_r1_f0.35"):
        fast_weight_sweep.main(["--setting", "0.5,1,0.35", "--report", "--output-dir", str(tmp_path)])
