"""The recipe as a user runs it: ``tune run --nproc_per_node N recipes/focusft_distributed.py --config …``.

Each run trains the tiny model for a few steps on CPU (gloo). Runs are shared between
tests through a module-level cache, since starting the processes dominates the time; the
one-process runs that only serve as references run in this process (tests/in_process.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchtune.models.qwen2 import qwen2_hf_to_tune

from focusft.analysis.measure import decoder_forward, measure_attention
from focusft.analysis.sample import item_sample
from focusft.eval.checkpoint import load_model, read_checkpoint
from focusft.split_decoder import IGNORE_INDEX
from focusft.tiny import TinyQwenConfig, load_tiny_tokenizer, tiny_qwen2_5
from tests.in_process import run_recipe
from tests.recipe_data import memorisation_dataset

REPO = Path(__file__).resolve().parents[1]
TUNE = Path(sys.executable).parent / "tune"
SHIPPED_CONFIG = REPO / "configs/tiny/focusft_cpu.yaml"
LR, WEIGHT_DECAY, WARMUP_RATIO, CLIP = 1e-3, 0.01, 0.1, 1.0
# Runs that batch the same samples differently: each logged loss is a mean of ≤ 40 fp32
# response-token losses summed in another order (≤ 40·eps ≈ 5e-6 relative), after steps
# that rounded differently too.
ACROSS_LAYOUTS = {"atol": 0, "rtol": 1e-5}

# 8 samples, global batch 4 -> 2 steps per epoch, 3 epochs.
BASE = [
    "epochs=3",
    f"optimizer.lr={LR}",
    f"optimizer.weight_decay={WEIGHT_DECAY}",
    f"warmup_ratio={WARMUP_RATIO}",
    f"clip_grad_norm={CLIP}",
    "metric_logger.filename=metrics.txt",
]
SFT = ["focusft.bilevel=false", "focusft.attention=causal", "shuffle=false"]
# The attention probe only reads the model (before step 1, then every 2 steps); the FocuSFT runs
# carry it, so that one run checks both the training and the probe.
PROBE = ["attention_probe.every_n_steps=2", "attention_probe.sample_index=1"]
RUNS = {
    "focusft_2x1x2": (2, ["batch_size=1", "gradient_accumulation_steps=2", *PROBE]),
    "focusft_1x1x4": (1, ["batch_size=1", "gradient_accumulation_steps=4", *PROBE]),
    "sft_2x2": (2, ["batch_size=2", *SFT]),
    "sft_1x4": (1, ["batch_size=4", *SFT]),
    # Variants whose point is not the processes: one process, the same global batch of 4.
    "sft_bidir": (1, ["batch_size=4", "focusft.bilevel=false", "focusft.attention=bidir_context"]),
    "causal_bilevel": (1, ["batch_size=4", "focusft.attention=causal", "save_every_n_steps=3"]),
}


def tune_run(config: Path, nproc: int, overrides: list[str], check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(TUNE), "run", "--standalone", "--nproc_per_node", str(nproc), "recipes/focusft_distributed.py"]
    proc = subprocess.run(
        [*cmd, "--config", str(config), *overrides], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def train(config: Path, nproc: int, overrides: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """``tune run`` on ``nproc`` processes; one process runs in this process instead (the same recipe, no launcher)."""
    proc = run_recipe(config, overrides) if nproc == 1 else tune_run(config, nproc, overrides, check=False)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def read_metrics(output_dir: Path) -> list[dict[str, float]]:
    """Per-step metrics from the DiskLogger file, in step order."""
    rows = []
    for line in (output_dir / "logs" / "metrics.txt").read_text().splitlines():
        step, _, payload = line.partition(" | ")
        values = dict(item.split(":", 1) for item in payload.split())
        rows.append({"step": int(step.removeprefix("Step ")), **{k: float(v) for k, v in values.items()}})
    return rows


def cached_runs(config: Path, base_dir: Path, tmp_path_factory) -> Callable[[str], tuple[Path, list[dict]]]:
    """Lazily run and cache each named configuration of RUNS (the ``runs`` fixture of tests/conftest.py)."""
    cache: dict[str, tuple[Path, list[dict[str, float]]]] = {}

    def get(name: str) -> tuple[Path, list[dict[str, float]]]:
        if name not in cache:
            nproc, overrides = RUNS[name]
            out = tmp_path_factory.mktemp(name)
            train(config, nproc, [f"base_dir={base_dir}", f"output_dir={out}", *BASE, *overrides])
            cache[name] = (out, read_metrics(out))
        return cache[name]

    return get


def steps(metrics: list[dict[str, float]]) -> list[dict[str, float]]:
    """The optimizer steps' rows (the attention probe logs rows of its own)."""
    return [row for row in metrics if "loss" in row]


def losses(metrics: list[dict[str, float]]) -> list[float]:
    return [row["loss"] for row in steps(metrics)]


@pytest.mark.parametrize("name", ["focusft_2x1x2", "sft_2x2", "sft_bidir", "causal_bilevel"])
def test_each_variant_trains_and_its_loss_falls(runs, name):
    metrics = steps(runs(name)[1])
    assert [row["step"] for row in metrics] == [1, 2, 3, 4, 5, 6]
    values = losses(metrics)
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < values[0] - 0.3
    bilevel = "inner_loss_before_0" in metrics[0]
    assert bilevel == (name in ("focusft_2x1x2", "causal_bilevel"))
    if bilevel:
        for row in metrics:
            assert row["inner_loss_after_1"] < row["inner_loss_before_0"]
            assert row["inner_loss_after_1"] == pytest.approx(row["loss"], abs=1e-5)
            assert row["inner_skipped_updates"] == 0 and row["fast_weight_delta_norm"] > 0


def test_two_processes_equal_one_process_with_the_same_global_batch(runs):
    # Bilevel off: 2 ranks x batch 2 == 1 rank x batch 4.
    torch.testing.assert_close(losses(runs("sft_2x2")[1]), losses(runs("sft_1x4")[1]), **ACROSS_LAYOUTS)
    # Bilevel on: each sample's φ_0 depends on its dataset index only, so 2 ranks x batch 1 x GA 2
    # == 1 rank x batch 1 x GA 4.
    a, b = steps(runs("focusft_2x1x2")[1]), steps(runs("focusft_1x1x4")[1])
    for key in ("loss", "inner_loss_before_0", "inner_loss_after_0", "fast_weight_delta_norm"):
        torch.testing.assert_close([r[key] for r in a], [r[key] for r in b], **ACROSS_LAYOUTS, msg=key)


@pytest.mark.parametrize("normalization", ["token", "sample"])
def test_packed_and_unpacked_samples_take_the_same_first_step(config, base_dir, tmp_path, normalization):
    """Samples 0-3 as 2 packed rows on 1 process, or one by one on 2 processes × GA 2: the same θ after step 1.

    With ``sample`` normalisation the documents are counted over the micro-batches and processes
    (tests/test_normalization.py checks the gradient itself against documents trained alone).
    """
    first_step = [
        *BASE,
        f"focusft.loss_normalization={normalization}",
        "epochs=1",
        "max_steps_per_epoch=1",
        "shuffle=false",
        "optimizer._component_=torch.optim.SGD",
        "optimizer.lr=1.0",  # θ_1 − θ_0 is the gradient itself
        "warmup_ratio=0",  # full lr at step 1
        "clip_grad_norm=null",
    ]
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    train(config, 1, [f"base_dir={base_dir}", f"output_dir={packed}", *first_step, "dataset.packed=true"])
    tune_run(
        config,
        2,
        [
            f"base_dir={base_dir}",
            f"output_dir={unpacked}",
            *first_step,
            "batch_size=1",
            "gradient_accumulation_steps=2",
        ],
    )
    assert read_metrics(packed)[0]["documents"] == read_metrics(unpacked)[0]["documents"] == 4
    for out in (packed, unpacked):
        row = read_metrics(out)[0]
        # sample: the logged loss is the mean of the documents' means, not the token-weighted
        # mean (the answers differ in length).
        assert (row["loss"] == pytest.approx(row["inner_loss_after_1"], abs=1e-5)) == (normalization == "token")
    base = load_file(base_dir / "model.safetensors")
    a = load_file(packed / "epoch_0" / "model-00001-of-00001.safetensors")
    b = load_file(unpacked / "epoch_0" / "model-00001-of-00001.safetensors")
    assert a.keys() == b.keys() == base.keys()
    assert max((a[k] - base[k]).abs().max().item() for k in a) > 1e-2  # the step moved θ
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5, msg=key)


def plain_sft_losses(base_dir: Path, steps: int, batch_size: int) -> list[float]:
    """Standard SFT written directly: full-model forward, causal mask, AdamW, cosine warm-up, clipping."""
    torch.manual_seed(0)
    config = TinyQwenConfig()
    model = tiny_qwen2_5()
    hf_state = load_file(base_dir / "model.safetensors")
    model.load_state_dict(
        qwen2_hf_to_tune(hf_state, num_heads=config.num_heads, num_kv_heads=config.num_kv_heads, dim=config.embed_dim)
    )
    tokenizer = load_tiny_tokenizer(base_dir)  # as the shipped config: no tokenizer-side truncation
    samples = memorisation_dataset(tokenizer, num_samples=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    warmup = math.ceil(WARMUP_RATIO * steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    result = []
    for step in range(steps):
        start = (step * batch_size) % len(samples)
        batch = samples[start : start + batch_size]
        width = max(len(s["tokens"]) for s in batch)
        tokens = torch.tensor([s["tokens"] + [0] * (width - len(s["tokens"])) for s in batch])
        labels = torch.tensor([s["labels"][1:] + [IGNORE_INDEX] * (width - len(s["labels"]) + 1) for s in batch])
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        result.append(loss.item())
    return result


def test_bilevel_off_causal_reproduces_a_plain_sft_loop(runs, base_dir):
    recipe = losses(runs("sft_1x4")[1])
    torch.testing.assert_close(recipe, plain_sft_losses(base_dir, steps=6, batch_size=4), **ACROSS_LAYOUTS)


def test_resumed_run_reaches_the_same_losses(runs, config, base_dir, tmp_path):
    """Stopped mid-epoch (after step 3), resumed and stopped at an epoch boundary (step 4), resumed to the end."""
    nproc, overrides = RUNS["focusft_2x1x2"]
    args = [f"base_dir={base_dir}", f"output_dir={tmp_path}", *BASE, *overrides]
    tune_run(config, nproc, [*args, "stop_after_step=3"])
    assert [row["step"] for row in steps(read_metrics(tmp_path))] == [1, 2, 3]
    assert (tmp_path / "LATEST").read_text() == "step_3"
    tune_run(config, nproc, [*args, "resume_from_checkpoint=True", "stop_after_step=4"])
    assert [row["step"] for row in steps(read_metrics(tmp_path))] == [1, 2, 3, 4]
    assert (tmp_path / "LATEST").read_text() == "epoch_1"
    tune_run(config, nproc, [*args, "resume_from_checkpoint=True"])
    resumed = steps(read_metrics(tmp_path))
    assert [row["step"] for row in resumed] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(losses(resumed), losses(runs("focusft_2x1x2")[1]), atol=1e-5, rtol=0)


def test_save_every_n_steps_adds_step_checkpoints(runs):
    out, _ = runs("causal_bilevel")
    # Step 3 falls inside epoch 2 (2 steps per epoch); step 6 ends epoch 3 and is saved as epoch_2.
    assert sorted(p.name for p in out.glob("step_*")) == ["step_3"]
    assert sorted(p.name for p in out.glob("epoch_*")) == ["epoch_0", "epoch_1", "epoch_2"]
    # keep_recipe_states=2: only the two newest checkpoints keep the (large) optimizer state.
    assert sorted(p.parent.name for p in out.glob("*/recipe_state.pt")) == ["epoch_1", "epoch_2"]
    assert (out / "step_3" / "model-00001-of-00001.safetensors").is_file()


def test_checkpoint_has_no_fast_weights_and_loads_in_transformers(runs):
    from transformers import AutoModelForCausalLM

    out, _ = runs("focusft_2x1x2")
    assert (out / "LATEST").read_text() == "epoch_2"
    assert sorted(p.name for p in out.glob("epoch_*")) == ["epoch_0", "epoch_1", "epoch_2"]
    ckpt = out / "epoch_2"
    # Only the newest checkpoints (keep_recipe_states=2) keep the (large) optimizer state needed to resume.
    assert (ckpt / "recipe_state.pt").is_file() and not (out / "epoch_0" / "recipe_state.pt").exists()
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert not any("fast" in key or "lora" in key for key in index["weight_map"])
    hf_model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()

    config = TinyQwenConfig()
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state |= load_file(ckpt / shard)
    ours = tiny_qwen2_5()
    ours.load_state_dict(
        qwen2_hf_to_tune(state, num_heads=config.num_heads, num_kv_heads=config.num_kv_heads, dim=config.embed_dim)
    )
    tokens = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(tokens).logits, ours.eval()(tokens), atol=1e-4, rtol=1e-4)


def test_attention_probe_logs_what_a_one_process_analysis_of_the_weights_measures(runs, base_dir):
    out, rows = runs("focusft_2x1x2")
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4, 5, 6]
    probes = {row["step"]: row for row in rows if "attention/sink_mass" in row}
    assert sorted(probes) == [0, 2, 4, 6]  # before the first step, then every 2 steps
    tokenizer = load_tiny_tokenizer(base_dir)
    sample = item_sample(memorisation_dataset(tokenizer)[1], tokenizer, "probe")
    # Two FSDP2 ranks, sharded model, SplitDecoder == one process, plain decoder, the checkpoint's weights.
    for step, checkpoint in ((0, base_dir), (6, out / "epoch_2")):
        model = load_model(read_checkpoint(checkpoint, base_dir), dtype=torch.float32, device=torch.device("cpu"))
        metrics = measure_attention(
            model.layers, decoder_forward(model), sample, "bidir_context", device="cpu", with_heatmap=False
        )
        budget, probe = metrics.budget(), probes[step]
        assert probe["attention/sink_mass"] == pytest.approx(metrics.sink_mass, abs=1e-5)
        assert probe["attention/context_engagement"] == pytest.approx(metrics.context_engagement, abs=1e-5)
        for name in ("prompt", "tool", "response"):
            assert probe[f"attention/{name}"] == pytest.approx(budget[name], abs=1e-5)
    assert probes[6]["attention/sink_mass"] != pytest.approx(probes[0]["attention/sink_mass"], abs=1e-6)


@pytest.mark.parametrize(
    "nproc, override, message",
    [
        (2, "focusft.inner_stepz=2", "Unknown key(s) in focusft: ['inner_stepz']"),
        (1, "dataset.num_samples=0", "The dataset has no samples"),  # 2 samples now train (a short step)
    ],
)
def test_bad_configs_stop_the_run_with_a_named_error(config, base_dir, tmp_path, nproc, override, message):
    proc = train(config, nproc, [f"base_dir={base_dir}", f"output_dir={tmp_path}", *BASE, override], check=False)
    assert proc.returncode != 0
    assert f"FocuSFT config error: {message}" in proc.stderr, proc.stderr[-3000:]
