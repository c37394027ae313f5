"""Preemption: SIGTERM saves after the current step and a resume is bit-identical; SIGINT stops with one line."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from focusft.launch import wants_help
from focusft.metric_guard import GuardedMetricLogger, MetricsError
from focusft.preemption import Stopped, StopSignals
from tests.test_recipe import BASE, RUNS, SFT, read_metrics
from tests.test_recipe_robustness import REPO, checkpoint_weights, launch, launch_command

SLOW_MODEL = ["model._component_=tests.recipe_faults.slow_tiny_qwen2_5", "model.seconds=0.4"]


@pytest.fixture
def handlers():
    """Restore the test process's own SIGTERM / SIGINT handlers afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield StopSignals().install()
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_sigterm_outside_training_and_sigint_anywhere_stop_at_once(handlers):
    with pytest.raises(Stopped) as stopped:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.exit_code == 143 and "stopped by SIGTERM" in stopped.value.message
    with handlers.deferring_sigterm(), pytest.raises(Stopped) as interrupted:
        os.kill(os.getpid(), signal.SIGINT)
    assert interrupted.value.exit_code == 130 and "stopped by SIGINT" in interrupted.value.message


def test_sigterm_during_training_is_noted_until_the_ranks_agree(handlers):
    device = torch.device("cpu")
    with handlers.deferring_sigterm():
        assert not handlers.agreed(device)
        os.kill(os.getpid(), signal.SIGTERM)  # no exception: training goes on to the step boundary
        assert handlers.pending_sigterm and handlers.received == signal.SIGTERM
        assert handlers.agreed(device) and handlers.stop_agreed


def test_launcher_help_is_its_own_and_the_recipes_stays_the_recipes():
    assert wants_help([]) and wants_help(["--help"]) and wants_help(["--nproc_per_node", "2", "-h"])
    assert not wants_help(["--nproc_per_node", "2", "recipes/focusft_distributed.py", "--help"])
    out = subprocess.run(
        [sys.executable, "-m", "focusft.launch", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.startswith("``python -m focusft.launch``"), out.stdout[:500]


def wait_for_steps(out: Path, launcher: subprocess.Popen, log: Path, steps: int) -> None:
    metrics = out / "logs" / "metrics.txt"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= steps):
        assert launcher.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def signalled_run(config: Path, nproc: int, overrides: list[str], out: Path, log: Path, send) -> tuple[int, str]:
    """Launch, wait for the first logged step, call ``send(launcher)``, return (exit code, stderr)."""
    with open(log, "w") as stderr:
        launcher = subprocess.Popen(
            launch_command(config, nproc, overrides),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # a terminal of its own: Ctrl-C reaches the launcher's group only
        )
    try:
        wait_for_steps(out, launcher, log, 1)
        send(launcher)
        code = launcher.wait(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    return code, log.read_text()


def test_sigterm_saves_after_the_current_step_and_the_resume_is_bit_identical(runs, config, base_dir, tmp_path):
    # The reference: tests/test_recipe.py's run sft_2x2, the same run without the slow model's sleeps.
    reference_dir, _ = runs("sft_2x2")
    assert RUNS["sft_2x2"] == (2, ["batch_size=2", *SFT])
    args = [*BASE, "batch_size=2", *SFT, *SLOW_MODEL, f"base_dir={base_dir}"]  # 2 steps per epoch, 3 epochs

    out = tmp_path / "preempted"
    code, stderr = signalled_run(
        config, 2, [*args, f"output_dir={out}"], out, tmp_path / "stderr.txt", lambda p: p.send_signal(signal.SIGTERM)
    )
    assert code == 143, stderr[-3000:]
    assert not re.search(r"Traceback|error:|death signal|closing signal", stderr), stderr[-3000:]
    lines = re.findall(r"FocuSFT:[^\r\n]*", stderr)
    assert len(lines) == 1, stderr[-3000:]
    found = re.fullmatch(rf"FocuSFT: stopped by SIGTERM after step (\d); saved checkpoint {out}/(\w+)\. .*", lines[0])
    assert found, lines[0]
    step, name = int(found[1]), found[2]
    assert 1 <= step < 6 and (out / "LATEST").read_text() == name
    assert name in (f"step_{step}", f"epoch_{step // 2 - 1}")
    assert [row["step"] for row in read_metrics(out)] == list(range(1, step + 1))

    resumed = launch(config, 2, [*args, f"output_dir={out}", "resume_from_checkpoint=True"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {out / name} after step {step}:" in resumed.stdout + resumed.stderr
    expected, got = read_metrics(reference_dir), read_metrics(out)
    assert [row["step"] for row in got] == list(range(1, 7))
    assert [row["loss"] for row in got] == [row["loss"] for row in expected]
    final, reference_final = checkpoint_weights(out / "epoch_2"), checkpoint_weights(reference_dir / "epoch_2")
    for key, tensor in reference_final.items():
        torch.testing.assert_close(final[key], tensor, atol=0, rtol=0)


def test_sigint_stops_with_one_line_and_exit_130(config, base_dir, tmp_path):
    out = tmp_path / "out"
    overrides = [*BASE, "batch_size=4", *SFT, *SLOW_MODEL, f"base_dir={base_dir}", f"output_dir={out}"]
    code, stderr = signalled_run(
        config, 1, overrides, out, tmp_path / "stderr.txt", lambda p: os.killpg(p.pid, signal.SIGINT)
    )
    assert code == 130, stderr[-3000:]
    assert not re.search(r"Traceback|error:|death signal|closing signal", stderr), stderr[-3000:]
    lines = re.findall(r"FocuSFT:[^\r\n]*", stderr)
    assert len(lines) == 1 and lines[0].startswith("FocuSFT: stopped by SIGINT; nothing was saved"), stderr[-3000:]
    assert (
        "Standard SFT, full fine-tuning: 6 steps (2/epoch), 1 process(es) (sequence parallel: 1), rows mask, "
        "no fast weights (bilevel=false)"
    ) in stderr


def test_a_metrics_write_error_is_kept_and_raised_at_the_step_boundary(tmp_path):
    class FullDisk:
        def log_dict(self, metrics, step):
            raise OSError(errno.ENOSPC, "No space left on device")

    guarded = GuardedMetricLogger(FullDisk(), str(tmp_path / "logs"), tmp_path)
    guarded.log_dict({"loss": 1.0}, step=7)  # rank 0 goes on to the step boundary
    assert isinstance(guarded.failure, MetricsError)
    with pytest.raises(MetricsError, match=rf"cannot write the metrics of step 7 to {tmp_path / 'logs'}: No space"):
        StopSignals().agreed(torch.device("cpu"), failure=guarded.failure)
