"""The bilevel step under FSDP2 on two CPU processes equals the single-process step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_fsdp2_two_processes_match_one_process(tmp_path, activation_checkpointing):
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
        str(int(activation_checkpointing)),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["loss_max_abs_diff"] < 1e-5
    assert result["grad_max_abs_diff"] < 1e-5
    first, second = result["losses"]
    assert first != second  # the ranks really had different micro-batches
