"""The bilevel step under FSDP2 on two CPU processes equals the single-process step (one launch, both cases)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fsdp2_two_processes_match_one_process_with_and_without_activation_checkpointing(tmp_path):
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "tests/distributed/fsdp_bilevel_worker.py",
        str(out),
        "0,1",  # activation checkpointing off, then on
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert len(results) == 2
    for activation_checkpointing, result in zip((False, True), results):
        assert result["loss_max_abs_diff"] < 1e-5, activation_checkpointing
        assert result["grad_max_abs_diff"] < 1e-5, activation_checkpointing
        first, second = result["losses"]
        assert first != second  # the ranks really had different micro-batches
