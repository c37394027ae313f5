"""The recipe with a LoRA / QLoRA model on the tiny model.

QLoRA runs as a user runs it (``tune run``, 2 processes, FSDP2, gloo): NF4 base weights sharded,
adapters trained, the merged model saved from the shards. LoRA's exact resume and its PEFT
checkpoints are not about the processes: those three runs take one process, in this process
(tests/in_process.py), with the same global batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.test_recipe import REPO, losses, read_metrics, train, tune_run

LORA_CONFIG = REPO / "configs/tiny/focusft_lora_cpu.yaml"
# 8 samples, global batch 4 (2 processes x 2, or 1 process x 4) -> 2 steps per epoch, 3 epochs.
ARGS = ["epochs=3", "metric_logger.filename=metrics.txt"]


@pytest.fixture(scope="module")
def lora_config(tmp_path_factory) -> Path:
    """The shipped tiny LoRA config, training on the memorisation set of tests/recipe_data.py."""
    cfg = OmegaConf.load(LORA_CONFIG)
    cfg.dataset = {"_component_": "tests.recipe_data.memorisation_dataset", "num_samples": 8}
    path = tmp_path_factory.mktemp("config") / "tiny_lora_memorisation.yaml"
    OmegaConf.save(cfg, path)
    return path


def test_lora_run_resumes_exactly_and_writes_peft_checkpoints(lora_config, base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train(lora_config, 1, [f"base_dir={base_dir}", f"output_dir={full}", *ARGS, "batch_size=4"])
    args = [f"base_dir={base_dir}", f"output_dir={stopped}", *ARGS, "batch_size=4"]
    train(lora_config, 1, [*args, "stop_after_step=3"])
    train(lora_config, 1, [*args, "resume_from_checkpoint=True"])
    expected, resumed = losses(read_metrics(full)), losses(read_metrics(stopped))
    assert len(expected) == 6 and expected[-1] < expected[0]
    torch.testing.assert_close(resumed, expected, atol=1e-5, rtol=0)

    # Every checkpoint holds the PEFT adapter and no full weights; the last one also the merged model.
    for name in ("epoch_0", "epoch_1", "epoch_2"):
        files = {p.name for p in (full / name).iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json"} <= files
        assert not any(f.startswith("model") for f in files), name
        assert ("merged" in files) == (name == "epoch_2")
    config = json.loads((full / "epoch_2" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve()) and config["r"] == 8
    merged = AutoModelForCausalLM.from_pretrained(full / "epoch_2" / "merged", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    # Only the adapted projections moved: q, v, o and the MLP, never embeddings, norms, k or biases.
    assert changed and all(
        n.endswith(("q_proj.weight", "v_proj.weight", "o_proj.weight", "_proj.weight")) for n in changed
    )
    assert not any("k_proj" in n or "norm" in n or "embed" in n for n in changed)


def test_qlora_run_trains_on_an_nf4_base(lora_config, base_dir, tmp_path):
    args = [f"base_dir={base_dir}", f"output_dir={tmp_path}", *ARGS, "batch_size=2", "model.quantize_base=True"]
    tune_run(lora_config, 2, args)
    rows = read_metrics(tmp_path)
    assert len(rows) == 6 and rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["inner_loss_after_1"] < rows[-1]["inner_loss_before_0"]  # the inner loop still adapts
    assert (tmp_path / "epoch_2" / "merged" / "model.safetensors.index.json").is_file()
    # Saved from the 2 processes' shards: the PEFT adapter, no full weights beside it.
    files = {p.name for p in (tmp_path / "epoch_2").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not any(f.startswith("model") for f in files)
