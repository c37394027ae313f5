"""The recipe trains the tiny Qwen3 and Llama 3 models; their checkpoints load in transformers and stop at the turn end.

One ``tune run`` on 2 processes per family (the shipped configs/tiny/<family>_focusft_cpu.yaml,
one FocuSFT step): the saved checkpoint, read by transformers, gives the logits of the
project's model read by the eval loader, and names the family's end-of-turn token as eos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from focusft.eval.checkpoint import load_model, read_checkpoint
from focusft.models import get_family
from focusft.tiny import write_tiny_checkpoint
from tests.conftest import REPO


@pytest.mark.parametrize("family", ["qwen3", "llama3"])
def test_a_focusft_step_trains_and_saves_a_transformers_checkpoint(family, tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base", family=family)
    out = tmp_path / "run"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"),
        *("recipes/focusft_distributed.py", "--config", f"configs/tiny/{family}_focusft_cpu.yaml"),
        *(f"base_dir={base}", f"output_dir={out}", "dataset.num_samples=8", "epochs=1", "warmup_ratio=0"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    log = next((out / "logs").glob("log_*.txt")).read_text()
    assert "inner_loss_after_1" in log and "documents:8" in log  # the bilevel step ran on every document

    saved = out / "epoch_0"
    tokens = torch.randint(0, 512, (1, 48))
    hf = AutoModelForCausalLM.from_pretrained(saved).float().eval()
    ours = load_model(read_checkpoint(saved), dtype=torch.float32, device=torch.device("cpu"))
    with torch.no_grad():
        expected = hf(tokens).logits
        assert (ours(tokens) - expected).abs().max() <= 1e-5 * expected.abs().max()
    base_logits = AutoModelForCausalLM.from_pretrained(base).float().eval()(tokens).logits.detach()
    assert not torch.allclose(base_logits, expected)  # the step changed the weights

    stops = get_family(family).stop_tokens
    stop_ids = AutoTokenizer.from_pretrained(saved).convert_tokens_to_ids(list(stops))
    assert json.loads((saved / "generation_config.json").read_text())["eos_token_id"] == stop_ids
    assert AutoTokenizer.from_pretrained(saved).eos_token == stops[0]
