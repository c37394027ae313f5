"""The recipe under faults: non-finite steps, broken checkpoints, a second run, a killed launcher, bad input.

Runs on several processes go through ``python -m focusft.launch`` (``tune run`` with torchrun's
own failure traceback left out): each launch costs 10-20 s on a 2-core machine. Most one-process
runs run the recipe in this process instead (tests/in_process.py); two of the bad-input cases go
through the launcher on one process too.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from focusft.checkpointing import RECIPE_STATE
from focusft.errors import ConfigError
from focusft.run_guard import LAUNCHER_GONE_EXIT_CODE, REPORTED_ERROR_EXIT_CODE, lock_output_dir
from tests.in_process import run_recipe
from tests.test_recipe import BASE, SFT, read_metrics
from tests.test_run_guard import alive

REPO = Path(__file__).resolve().parents[1]
NAN_MODEL = "model._component_=tests.recipe_faults.tiny_qwen2_5_with_nan"


def launch_command(config: Path, nproc: int, overrides: list[str]) -> list[str]:
    recipe = ["recipes/focusft_distributed.py", "--config", str(config)]
    return [sys.executable, "-m", "focusft.launch", "--nproc_per_node", str(nproc), *recipe, *overrides]


def launch(config: Path, nproc: int, overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        launch_command(config, nproc, overrides), cwd=REPO, capture_output=True, text=True, timeout=600
    )


def error_line(proc: subprocess.CompletedProcess, kind: str) -> str:
    """The one distinct ``FocuSFT <kind> error:`` line (each rank prints it), with no traceback anywhere."""
    output = proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.returncode == REPORTED_ERROR_EXIT_CODE, output
    assert "Traceback" not in proc.stderr, output
    # A line may follow rank 0's progress bar on the terminal line it shares.
    lines = set(re.findall(r"FocuSFT [a-z]+ error: [^\r\n]*", proc.stderr))
    assert len(lines) == 1, output
    line = lines.pop()
    assert line.startswith(f"FocuSFT {kind} error: "), line
    return line


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    state = {}
    for shard in sorted(path.glob("model-*.safetensors")):
        state |= load_file(shard)
    assert state, path
    return state


def assert_all_checkpoints_finite(out: Path) -> None:
    for path in [p for p in out.iterdir() if p.name.startswith(("epoch_", "step_"))]:
        for name, tensor in checkpoint_weights(path).items():
            assert torch.isfinite(tensor).all(), f"{path.name}: {name}"


def test_non_finite_steps_are_skipped_on_every_rank_and_too_many_in_a_row_stop(config, base_dir, tmp_path):
    # 2 ranks x batch 2, 2 steps per epoch. NaN on rank 1 only at step 2, on rank 0 at steps 4 and 5.
    nan_at = "model.nan_at=['1:1','0:3','0:4']"
    overrides = [*BASE, "batch_size=2", *SFT, NAN_MODEL, nan_at, "save_every_n_steps=1"]
    overrides += ["max_consecutive_skipped_steps=2", f"base_dir={base_dir}", f"output_dir={tmp_path}"]
    proc = launch(config, 2, overrides)
    line = error_line(proc, "training")
    assert "2 optimizer steps in a row (up to step 5)" in line and "epoch_1 stays LATEST" in line
    for step in (2, 4, 5):
        assert f"Step {step}: the outer loss or a gradient of θ is not finite" in proc.stderr + proc.stdout
    assert "Step 3: the outer loss" not in proc.stderr + proc.stdout

    metrics = read_metrics(tmp_path)
    assert [row["step"] for row in metrics] == [1, 2, 3, 4, 5]
    assert [math.isnan(row["loss"]) for row in metrics] == [False, True, False, True, True]
    assert [row["skipped_steps"] for row in metrics] == [0, 1, 1, 2, 3]

    # Nothing was saved after the stop; LATEST is the last checkpoint written, all finite.
    assert (tmp_path / "LATEST").read_text() == "epoch_1"
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_1", "step_3"]
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_0", "epoch_1"]
    assert_all_checkpoints_finite(tmp_path)
    # A skipped step leaves θ exactly as it was.
    for skipped, before in (("epoch_0", "step_1"), ("epoch_1", "step_3")):
        after, prior = checkpoint_weights(tmp_path / skipped), checkpoint_weights(tmp_path / before)
        for name in prior:
            torch.testing.assert_close(after[name], prior[name], atol=0, rtol=0)
    # keep_recipe_states=2: the two newest checkpoints can be resumed from.
    assert sorted(p.parent.name for p in tmp_path.glob(f"*/{RECIPE_STATE}")) == ["epoch_1", "step_3"]


@pytest.mark.parametrize(
    "overrides",
    [["focusft.inner_lr=1e30"], ["optimizer.lr=1e10", *SFT]],
    ids=["inner_lr", "optimizer_lr"],
)
def test_a_huge_learning_rate_never_reaches_a_checkpoint(config, base_dir, tmp_path, overrides):
    args = [*BASE, "epochs=2", "batch_size=4", "save_every_n_steps=1", "max_consecutive_skipped_steps=2"]
    proc = run_recipe(config, [*args, *overrides, f"base_dir={base_dir}", f"output_dir={tmp_path}"])
    if proc.returncode != 0:  # diverged: stopped with one line; otherwise the guards kept every step finite
        assert "steps in a row" in error_line(proc, "training")
    assert "Traceback" not in proc.stderr
    assert_all_checkpoints_finite(tmp_path)
    latest = tmp_path / (tmp_path / "LATEST").read_text()
    assert (latest / RECIPE_STATE).is_file()


def corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_falls_back_from_an_unreadable_latest_and_a_finished_run_says_so(config, base_dir, tmp_path):
    args = [*BASE, "epochs=2", "batch_size=4", *SFT, f"base_dir={base_dir}", f"output_dir={tmp_path}"]
    launch_ok = run_recipe(config, [*args, "stop_after_step=3"])
    assert launch_ok.returncode == 0, launch_ok.stderr[-3000:]
    assert (tmp_path / "LATEST").read_text() == "step_3"
    corrupt(tmp_path / "step_3" / RECIPE_STATE)
    staging = tmp_path / ".staging" / "epoch_0"  # what a save on a full disk leaves behind
    staging.mkdir(parents=True)
    (staging / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 1000)

    resumed = run_recipe(config, [*args, "resume_from_checkpoint=True", "optimizer.lr=0.002", "clip_grad_norm=2.0"])
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-5000:]
    assert f"Cannot resume from {tmp_path / 'step_3'}: PytorchStreamReader failed" in output
    assert "optimizer.lr 0.001 -> 0.002" in output and "clip_grad_norm 1.0 -> 2.0" in output
    assert not (tmp_path / ".staging").exists()
    metrics = read_metrics(tmp_path)
    assert [row["step"] for row in metrics] == [1, 2, 3, 3, 4]
    # Step 3 again from epoch_0's state: the same loss as the first time.
    assert metrics[3]["loss"] == pytest.approx(metrics[2]["loss"], abs=1e-6)
    assert (tmp_path / "LATEST").read_text() == "epoch_1"
    # The checkpoint's learning rate stays in effect: cosine schedule, 1 warm-up step of 4, at step 4.
    assert metrics[4]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))

    finished = run_recipe(config, [*args, "resume_from_checkpoint=True"])
    line = error_line(finished, "config")
    assert f"The run in {tmp_path} is finished: epoch_1 ends epoch 2 of 2 (step 4)" in line


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_staging(config, base_dir, tmp_path):
    args = [*BASE, "epochs=1", "batch_size=2", *SFT, f"base_dir={base_dir}", f"output_dir={tmp_path}"]
    args += ["warmup_ratio=null", "lr_scheduler.num_warmup_steps=2"]  # torchtune's way of giving the warm-up
    full = launch(config, 2, [*args, "checkpointer._component_=tests.recipe_faults.FullDiskCheckpointer"])
    assert f"no space left on {tmp_path} while writing checkpoint epoch_0" in error_line(full, "checkpoint")
    assert not list(tmp_path.glob(".staging*")) and not (tmp_path / "LATEST").exists()
    # Linear warm-up over 2 steps (warmup_ratio=0.1 would have given 1 step: lr 1e-3 at step 2).
    assert [row["lr"] for row in read_metrics(tmp_path)] == [0.0, pytest.approx(0.5e-3)]


def test_a_disk_filling_while_metrics_are_logged_stops_every_rank_with_one_line(config, base_dir, tmp_path):
    args = [*BASE, "epochs=2", "batch_size=2", *SFT, f"base_dir={base_dir}", f"output_dir={tmp_path}"]
    logger = ["metric_logger._component_=tests.recipe_faults.FullDiskLogger", "+metric_logger.full_after=2"]
    proc = launch(config, 2, [*args, *logger])
    line = error_line(proc, "metrics")
    assert f"cannot write the metrics of step 3 to {tmp_path / 'logs'}: No space left on device" in line
    assert f"the last checkpoint is {tmp_path / 'epoch_0'}" in line
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


CHAT = ["dataset=focusft.data.chat_dataset", "~dataset.num_samples", "dataset.source=json", "dataset.max_seq_len=256"]
GOOD = {"messages": [{"role": "user", "content": "Where is Mary?"}, {"role": "assistant", "content": "kitchen"}]}
BAD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"name": "f<|im_end|>"}]}]}


def bad_input_cases(tmp: Path, base_dir: Path) -> dict[str, tuple[list[str], str, str]]:
    """name -> (overrides, error kind, text the line must hold)."""
    (tmp / "a_file").write_text("")
    nan_base = Path(shutil.copytree(base_dir, tmp / "nan_base"))
    weights = load_file(nan_base / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][0, 0] = math.nan
    save_file(weights, nan_base / "model.safetensors", metadata={"format": "pt"})
    rows = write_rows(tmp / "rows.jsonl", [GOOD, BAD])
    instruct = write_rows(tmp / "instruct.jsonl", [{"input": "Where is Mary?", "output": "kitchen"}] * 8)
    return {
        "typo in a top-level key": (
            ["stop_after_stpe=3"],
            "config",
            "`stop_after_stpe` (did you mean `stop_after_step`?)",
        ),
        "typo in a dataset key": (["dataset.num_sample=4"], "config", "`dataset.num_sample` (did you mean"),
        "invalid lr": (["optimizer.lr=-1"], "config", "`optimizer.lr` must be a finite number > 0, got -1"),
        "two warm-ups": (["lr_scheduler.num_warmup_steps=2"], "config", "Set either `warmup_ratio` or"),
        "output_dir that cannot be created": ([f"output_dir={tmp}/a_file/run"], "config", "cannot be created"),
        "bad row": ([*CHAT, f"dataset.data_files={rows}"], "data", f"Bad row in {rows} line 2: message 1 tool call 0"),
        "torchtune dataset": (
            ["dataset=torchtune.datasets.instruct_dataset", "~dataset.num_samples", "dataset.source=json"]
            + [f"dataset.data_files={instruct}"],  # passed on to datasets.load_dataset
            "config",
            "have no `context` field",
        ),
        "items without sample_index": (
            ["dataset.sample_indices=false"],
            "config",
            "items have no `sample_index`",
        ),
        "missing logger package": (
            ["metric_logger=torchtune.training.metric_logging.WandBLogger"],
            "config",
            "metric_logger torchtune.training.metric_logging.WandBLogger cannot be used",
        ),
        "cuda without a GPU": (["device=cuda"], "config", "device=cuda, but this process sees no CUDA GPU"),
        "unknown model component": (
            ["model=focusft.tiny.tiny_qwen4"],
            "config",
            "`model._component_` 'focusft.tiny.tiny",
        ),
        "NaN in the base weights": (
            [f"base_dir={nan_base}"],
            "checkpoint",
            f"base weight model.layers.1.mlp.up_proj.weight in {nan_base / 'model.safetensors'} holds 1 NaN",
        ),
    }


CASES = [
    "typo in a top-level key",
    "typo in a dataset key",
    "invalid lr",
    "two warm-ups",
    "output_dir that cannot be created",
    "bad row",
    "torchtune dataset",
    "items without sample_index",
    pytest.param(
        "missing logger package",
        marks=pytest.mark.skipif(bool(__import__("importlib").util.find_spec("wandb")), reason="wandb installed"),
    ),
    pytest.param("cuda without a GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
    "unknown model component",
    "NaN in the base weights",
]


# Cases run through the launcher (one before the process group exists, one after); the rest in this process.
LAUNCHED = {"typo in a top-level key", "NaN in the base weights"}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_before_compute(config, base_dir, tmp_path, case):
    overrides, kind, text = bad_input_cases(tmp_path, base_dir)[case]
    out = tmp_path / "out"
    args = [*BASE, f"base_dir={base_dir}", f"output_dir={out}", *overrides]
    proc = launch(config, 1, args) if case in LAUNCHED else run_recipe(config, args)
    assert text in error_line(proc, kind)
    assert not list(out.glob("epoch_*"))


def test_a_second_run_on_the_same_output_dir_is_refused(config, base_dir, tmp_path):
    holder = lock_output_dir(tmp_path)  # this test process plays the first run
    try:
        proc = launch(config, 2, [*BASE, f"base_dir={base_dir}", f"output_dir={tmp_path}"])
    finally:
        holder.close()
    line = error_line(proc, "config")
    assert f"is in use by another run (host {socket.gethostname()}, pid {os.getpid()}," in line
    assert not (tmp_path / "logs").exists()


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def test_workers_exit_when_the_launcher_is_killed(config, base_dir, tmp_path):
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    overrides = [*BASE, "epochs=100", f"base_dir={base_dir}", f"output_dir={out}"]
    with open(log, "w") as stderr:
        launcher = subprocess.Popen(
            launch_command(config, 2, overrides), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        metrics = out / "logs" / "metrics.txt"
        deadline = time.monotonic() + 300
        while not (metrics.is_file() and metrics.read_text()) and time.monotonic() < deadline:
            assert launcher.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        workers = children(launcher.pid)
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
    assert f"the launcher (pid {launcher.pid}) is gone" in log.read_text()
    # No worker holds the run's lock any more. A dying worker's other threads may still hold its files
    # for a moment after its main thread shows as ended, so allow the kernel that moment.
    deadline = time.monotonic() + 30
    while True:
        try:
            lock_output_dir(out).close()
            break
        except ConfigError:
            assert time.monotonic() < deadline, "a worker still holds the output_dir lock"
            time.sleep(0.2)
    assert LAUNCHER_GONE_EXIT_CODE == 75
