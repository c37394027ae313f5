"""Every sample trained once per epoch by the recipe: a last, shorter step, zero-weight padding, exact resume."""

from __future__ import annotations

import math
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.in_process import run_recipe
from tests.recipe_data import TRAINED_LOG
from tests.test_recipe import BASE, LR, TUNE, read_metrics

REPO = Path(__file__).resolve().parents[1]
RECORD = ["collate_fn=tests.recipe_data.recording_collate", "shuffle=false", "batch_size=1"]


def run(config: Path, nproc: int, overrides: list[str], trained_log: Path) -> str:
    """``tune run`` with the trained documents appended to ``trained_log``; returns the output.

    One process runs in this process (tests/in_process.py): the same recipe, without the launcher.
    """
    if nproc == 1:
        proc = run_recipe(config, overrides, env={TRAINED_LOG: str(trained_log)})
    else:
        cmd = [str(TUNE), "run", "--standalone", "--nproc_per_node", str(nproc), "recipes/focusft_distributed.py"]
        env = {**os.environ, TRAINED_LOG: str(trained_log)}
        proc = subprocess.run(
            [*cmd, "--config", str(config), *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def trained(trained_log: Path) -> Counter:
    return Counter(int(line) for line in trained_log.read_text().split())


def test_five_samples_on_one_process_with_accumulation_two_train_all_five_and_resume_exactly(
    config, base_dir, tmp_path
):
    """The issue's reproduction (2 steps, sample 4 never trained) over 2 epochs: 3 steps each, the last of 1 sample."""
    args = [f"base_dir={base_dir}", *BASE, "epochs=2", "dataset.num_samples=5", "gradient_accumulation_steps=2"]
    args += RECORD
    whole, log = tmp_path / "whole", tmp_path / "whole.txt"
    output = run(config, 1, [*args, f"output_dir={whole}"], log)
    assert "Each epoch trains all 5 samples once: the last of its 3 steps accumulates 1 micro-batch(es)" in output
    assert "6 steps (3/epoch)" in output
    assert trained(log) == {index: 2 for index in range(5)}
    metrics = read_metrics(whole)
    assert [row["step"] for row in metrics] == [1, 2, 3, 4, 5, 6]
    assert [row["documents"] for row in metrics] == [2, 2, 1] * 2
    # The LR schedule counts the short steps: cosine over 6 steps after ceil(0.1 · 6) = 1 warm-up step.
    expected_lr = [0.0] + [LR * 0.5 * (1 + math.cos(math.pi * (k - 1) / 5)) for k in range(1, 6)]
    assert [row["lr"] for row in metrics] == pytest.approx(expected_lr)

    # Stopped after step 2 (mid-epoch, before the short step), then resumed: the same run.
    resumed, resumed_log = tmp_path / "resumed", tmp_path / "resumed.txt"
    run(config, 1, [*args, f"output_dir={resumed}", "stop_after_step=2"], resumed_log)
    assert trained(resumed_log) == {0: 1, 1: 1, 2: 1, 3: 1}
    run(config, 1, [*args, f"output_dir={resumed}", "resume_from_checkpoint=True"], resumed_log)
    assert trained(resumed_log) == {index: 2 for index in range(5)}
    again = read_metrics(resumed)
    assert [row["step"] for row in again] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close([r["loss"] for r in again], [r["loss"] for r in metrics], atol=1e-5, rtol=0)


def test_ten_samples_on_two_processes_with_accumulation_two_train_all_ten(config, base_dir, tmp_path):
    """The issue's reproduction: 8 of 10 trained before; now 3 steps of 4, 4 and 2 samples."""
    args = [f"base_dir={base_dir}", f"output_dir={tmp_path}", *BASE, "epochs=1", "dataset.num_samples=10"]
    log = tmp_path / "trained.txt"
    run(config, 2, [*args, *RECORD, "gradient_accumulation_steps=2"], log)
    assert trained(log) == {index: 1 for index in range(10)}
    assert [row["documents"] for row in read_metrics(tmp_path)] == [4, 4, 2]


def test_five_samples_on_two_processes_pad_with_a_sample_that_trains_nothing(config, base_dir, tmp_path):
    """Rank 1's third place is padding: it runs a micro-batch (the collectives match) but adds nothing."""
    args = [f"base_dir={base_dir}", f"output_dir={tmp_path}", *BASE, "epochs=1", "dataset.num_samples=5"]
    log = tmp_path / "trained.txt"
    output = run(config, 2, [*args, *RECORD, "gradient_accumulation_steps=2"], log)
    assert "1 zero-weight padding sample(s) give every process as many micro-batches" in output
    assert trained(log) == {index: 1 for index in range(5)}
    assert [row["documents"] for row in read_metrics(tmp_path)] == [4, 1]
