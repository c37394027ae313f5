"""Ulysses sequence parallelism: the same step as one process on whole rows (docs/DESIGN.md section 3b).

The multi-process checks launch ``tests/distributed/sequence_parallel_worker.py`` once per
process count and check many cases in that one launch; the rest runs in this process.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focusft.batch import prepare_batch
from focusft.errors import ConfigError
from focusft.sequence_parallel import ParallelDims, SequenceShard, check_heads
from focusft.split_decoder import IGNORE_INDEX
from focusft.tiny import tiny_qwen2_5
from tests.layouts import brute_force_documents, documents_layout

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # fp32


def launch(tmp_path: Path, nproc: int, meshes: str, cases: list[str]) -> list[dict]:
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += ["tests/distributed/sequence_parallel_worker.py", str(out), meshes, ",".join(cases)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def check(records: list[dict], expected_cases: int) -> None:
    assert len(records) == expected_cases
    for record in records:
        assert record["inner"] < TOLERANCE, record
        assert record["outer"] < TOLERANCE, record
        assert record["theta"] < TOLERANCE, record
        assert record["tokens"][0] == record["tokens"][1], record
        assert record["theta_moved"] > 1e-2, record  # the step changed θ: the comparison is not vacuous


def test_sp2_on_two_processes_takes_the_one_process_step(tmp_path):
    """Both masks, packed rows with documents across the shard boundary, unpacked rows, AC on/off, bilevel on/off,
    per-token and per-document outer loss."""
    cases = [
        f"{mode}:{kind}:{ac}:{bilevel}"
        for mode, kind, ac, bilevel in itertools.product(
            ("bidir_context", "causal"), ("packed", "unpacked"), "01", "01"
        )
    ]
    cases.append("bidir_context:short:0:1")  # the second shard holds only padding
    cases.append("bidir_context:packed:0:1:sample")  # per-document outer loss, documents across the boundary
    check(launch(tmp_path, 2, "1x2", cases), len(cases))


def test_dp2_sp2_and_sp4_on_four_processes_take_the_one_process_step(tmp_path):
    """dp=2 × sp=2, and sp=4 > the tiny model's 2 key/value heads (they are repeated per query head)."""
    cases = [
        "bidir_context:packed:1:1",
        "causal:unpacked:0:1",
        "bidir_context:unpacked:0:0",
        "causal:packed:0:1:sample",
    ]
    check(launch(tmp_path, 4, "2x2,1x4", cases), 2 * len(cases))


def test_degrees_are_checked_with_one_line_errors():
    with pytest.raises(ConfigError, match=r"sequence_parallel_size=3 does not divide the 4 processes"):
        ParallelDims.build(3, 4, 0, "cpu")
    with pytest.raises(ConfigError, match=r"must be an integer >= 1, got 0"):
        ParallelDims.build(0, 4, 0, "cpu")
    whole = ParallelDims.build(1, 4, 3, "cpu")
    assert (whole.data_size, whole.data_rank, whole.leads_sequence, whole.sequence.size) == (4, 3, True, 1)
    with pytest.raises(ConfigError, match=r"sequence_parallel_size=8 does not divide the model's 4 attention heads"):
        check_heads(tiny_qwen2_5(), 8)
    check_heads(tiny_qwen2_5(), 4)


def test_data_and_shard_roles_of_a_2x2_mesh():
    ranks = [ParallelDims(dp=2, sp=2, rank=r) for r in range(4)]
    assert [p.data_rank for p in ranks] == [0, 0, 1, 1]  # an SP group loads the same rows
    assert [p.leads_sequence for p in ranks] == [True, False, True, False]
    assert [SequenceShard(r % 2, 2).columns(10) for r in range(2)] == [slice(0, 5), slice(5, 10)]


@pytest.mark.parametrize(
    "sp, rows",
    [(2, [[10, 20, 9], [13, 27]]), (3, [[10, 20, 9], [13, 27]]), (4, [[10, 20, 9], [13, 27]]), (4, [[9, 6], [14]])],
)
def test_shards_of_a_prepared_batch_put_together_are_the_whole_padded_batch(sp, rows):
    """Tokens, labels, positions and each token's document of the shards, concatenated, equal the whole rows'.

    The last case leaves the last two shards without a valid token.
    """
    generator = torch.Generator().manual_seed(sp)
    layout = documents_layout(rows, 41, generator)
    tokens = torch.randint(0, 500, layout.shape, generator=generator)
    batch = {
        "tokens": tokens,
        "labels": torch.where(~layout.context & layout.valid, tokens, IGNORE_INDEX),
        "context": layout.context,
        "doc": layout.doc,
        "valid": layout.valid,
    }
    whole = prepare_batch(batch, "cpu")
    shards = [prepare_batch(batch, "cpu", shard=SequenceShard(r, sp)) for r in range(sp)]
    padded = -41 % sp
    for name in ("tokens", "labels", "input_pos"):
        joined = torch.cat([getattr(s, name) for s in shards], dim=1)
        assert joined.shape[1] == 41 + padded
        torch.testing.assert_close(joined[:, :41], getattr(whole, name), rtol=0, atol=0)
    assert bool((torch.cat([s.labels for s in shards], dim=1)[:, 41:] == IGNORE_INDEX).all())
    joined = torch.cat([s.documents.token_document for s in shards], dim=1)
    torch.testing.assert_close(joined[:, :41], brute_force_documents(layout), rtol=0, atol=0)
    assert bool((joined[:, 41:] == -1).all())
    for shard in shards:
        assert shard.layout.shape == (2, 41 + padded)  # the mask is built from the whole (padded) rows
        assert shard.documents.count == whole.documents.count == sum(map(len, rows))
        # Chunk routing of the shard: every valid token of the shard once, with its own document.
        used = shard.documents.chunk_tokens[shard.documents.chunk_tokens < shard.tokens.numel()]
        flat = shard.documents.token_document.flatten()
        assert sorted(used.tolist()) == (flat >= 0).nonzero().squeeze(1).tolist()
        owners = shard.documents.chunk_document[:, None].expand_as(shard.documents.chunk_tokens)
        kept = shard.documents.chunk_tokens < shard.tokens.numel()
        assert bool((flat[shard.documents.chunk_tokens[kept]] == owners[kept]).all())


def test_recipe_with_sp2_resumes_and_logs_and_saves_what_one_process_does(runs, config, base_dir, tmp_path):
    """``tune run`` with sequence_parallel_size=2, stopped after step 3 and resumed, against one process.

    Same global batch (batch 1 × GA 4, one data-parallel rank): the same metrics (losses, inner
    losses, counts, attention probe), and the same final checkpoint. The one-process run is
    tests/test_recipe.py's run focusft_1x1x4 (shared through tests/conftest.py).
    """
    from tests.test_recipe import BASE, PROBE, RUNS, read_metrics, tune_run

    one_process = ["batch_size=1", "gradient_accumulation_steps=4", *PROBE]
    assert RUNS["focusft_1x1x4"] == (1, one_process)
    one, _ = runs("focusft_1x1x4")
    sp2 = tmp_path / "sp2"
    sp_args = [f"base_dir={base_dir}", *BASE, *one_process, f"output_dir={sp2}", "sequence_parallel_size=2"]
    tune_run(config, 2, [*sp_args, "stop_after_step=3"])
    tune_run(config, 2, [*sp_args, "resume_from_checkpoint=True"])

    timing = {"tokens_per_second_per_gpu", "step_seconds", "peak_rss_gib"}
    expected, got = read_metrics(one), read_metrics(sp2)
    assert [row["step"] for row in got] == [row["step"] for row in expected] == [0, 1, 2, 2, 3, 4, 4, 5, 6, 6]
    for want, have in zip(expected, got):
        assert set(want) == set(have)
        for key in set(want) - timing:
            assert have[key] == pytest.approx(want[key], abs=TOLERANCE), (want["step"], key)
    assert any("attention/sink_mass" in row for row in got) and any("inner_loss_after_1" in row for row in got)

    from safetensors.torch import load_file

    saved = {path.name: load_file(path) for path in (sp2 / "epoch_2").glob("*.safetensors")}
    reference = {path.name: load_file(path) for path in (one / "epoch_2").glob("*.safetensors")}
    assert sorted(saved) == sorted(reference) and saved
    for name, weights in reference.items():
        assert sorted(saved[name]) == sorted(weights)
        for key, value in weights.items():
            torch.testing.assert_close(saved[name][key], value, atol=TOLERANCE, rtol=0, msg=key)


def test_rank_shapes_for_memory_estimates():
    from focusft.sequence_parallel import RankShapes, rank_shapes

    assert rank_shapes(4097, 28, 4) == RankShapes(tokens=1025, attention_length=4100, heads=7)
    assert rank_shapes(4096, 28, 1) == RankShapes(tokens=4096, attention_length=4096, heads=28)
    with pytest.raises(ValueError, match="divide the 28 attention heads"):
        rank_shapes(4096, 28, 3)
