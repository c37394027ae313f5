"""GPU-only paths: BlockMask training, FlexAttention backward, bf16, compile, NCCL.

Skipped without CUDA; benchmarks/gpu/run.sh runs them on a GPU. Each compares the GPU
path with the dense-mask SDPA path the CPU tests already check against brute force.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.data import synthetic_batch
from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.documents import Documents
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.flex import compile_flex_attention_for_all_lengths
from focusft.masks import block_mask, build_mask, dense_mask, document_positions
from focusft.split_decoder import SplitDecoder
from focusft.tiny import seeded_tiny_qwen2_5, write_tiny_checkpoint
from tests.layouts import random_batch, random_layout

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (7, 5),
    reason="needs a CUDA GPU with FlexAttention (compute capability 7.5+)",
)
REPO = Path(__file__).resolve().parents[1]
FAST = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5)


@pytest.fixture(scope="module", autouse=True)
def dynamic_flex():
    if torch.cuda.is_available():
        assert compile_flex_attention_for_all_lengths()


def bilevel_grads(kind: str, dtype: torch.dtype, seq_len: int = 256, seed: int = 0):
    """Outer loss, inner losses and θ-gradients of one FocuSFT step with a ``kind`` mask."""
    tokens, labels, layout = random_batch(2, seq_len, seed)
    tokens, labels, layout = tokens.cuda(), labels.cuda(), layout.to("cuda")
    decoder = seeded_tiny_qwen2_5(0).to(device="cuda", dtype=dtype)
    slots = attach_fast_weight_slots(decoder, FAST)
    model = SplitDecoder(decoder, slots, activation_checkpointing=True)
    documents = Documents.from_layout(layout).to("cuda")  # packed rows: per-document chunk routing
    fast = slots.init([3 + d for d in range(documents.count)], device="cuda")
    mask = build_mask(layout, "bidir_context", kind)
    result = bilevel_step(
        model,
        slots,
        tokens,
        labels,
        mask=mask,
        input_pos=document_positions(layout.doc),
        inner=InnerLoopConfig(steps=2),
        documents=documents,
        initial_fast_weights=fast,
    )
    (result.loss / result.num_tokens).backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters()}
    return (result.loss / result.num_tokens).float(), result.inner_losses.float(), grads


def test_block_mask_training_step_equals_dense_step_in_fp32():
    loss, inner, grads = bilevel_grads("block", torch.float32)
    ref_loss, ref_inner, ref_grads = bilevel_grads("dense", torch.float32)
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(inner, ref_inner, atol=1e-4, rtol=1e-4)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, atol=1e-4, rtol=1e-3, msg=name)


def test_block_mask_training_step_is_within_bf16_tolerance_of_fp32():
    loss, inner, grads = bilevel_grads("block", torch.bfloat16)
    ref_loss, ref_inner, ref_grads = bilevel_grads("dense", torch.float32)
    torch.testing.assert_close(loss, ref_loss, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(inner, ref_inner, atol=2e-2, rtol=2e-2)
    for name, ref in ref_grads.items():
        cosine = F.cosine_similarity(grads[name].flatten(), ref.flatten(), dim=0)
        assert cosine > 0.98, (name, cosine.item())


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
def test_flex_attention_forward_and_backward_equal_sdpa(mode):
    from torch.nn.attention.flex_attention import flex_attention

    layout = random_layout(2, 384, torch.Generator().manual_seed(1)).to("cuda")
    g = torch.Generator(device="cuda").manual_seed(2)
    q, k, v = (torch.randn(2, 4, 384, 64, device="cuda", generator=g, requires_grad=True) for _ in range(3))
    out = torch.compile(flex_attention)(q, k, v, block_mask=block_mask(layout, mode))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(layout, mode)[:, None])
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)
    for g_, r in zip(grads, ref_grads):
        torch.testing.assert_close(g_, r, atol=2e-2, rtol=2e-3)


def test_new_sequence_lengths_do_not_recompile_flex_attention_each_time():
    from torch._dynamo.utils import counters

    decoder = seeded_tiny_qwen2_5(0).cuda()
    slots = attach_fast_weight_slots(decoder, FAST)
    model = SplitDecoder(decoder, slots)
    graphs = []
    for seq_len in (200, 328, 456, 584):
        tokens, labels, layout = synthetic_batch(seq_len, 1000, seed=seq_len, device="cuda")
        layout = layout.to("cuda")
        result = bilevel_step(
            model,
            slots,
            tokens,
            labels,
            mask=build_mask(layout, "bidir_context", "block"),
            input_pos=document_positions(layout.doc),
            inner=InnerLoopConfig(steps=1),
            initial_fast_weights=slots.init([0], device="cuda"),
        )
        result.loss.backward()
        graphs.append(counters["stats"]["unique_graphs"])
    # The first length compiles; at most one recompile (to dynamic shapes) follows, then none.
    assert graphs[-1] == graphs[-2] == graphs[-3], graphs


def run_recipe(base: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``tune run`` of the recipe on one GPU, on the tiny config; the child imports this checkout."""
    cmd = [sys.executable, "-m", "torchtune._cli.tune", "run", "--standalone", "--nproc_per_node", "1"]
    cmd += ["recipes/focusft_distributed.py", "--config", "configs/tiny/focusft_cpu.yaml"]
    cmd += [f"base_dir={base}", f"output_dir={out}", "device=cuda", "dtype=bf16", "max_steps_per_epoch=3"]
    cmd += ["epochs=1", "metric_logger.filename=metrics.txt", *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("compile_model", [False, True])
def test_recipe_trains_on_cuda_in_bf16_through_nccl(tmp_path, compile_model):
    base = write_tiny_checkpoint(tmp_path / "base")
    proc = run_recipe(base, tmp_path / "out", f"compile={str(compile_model).lower()}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "block mask" in proc.stdout + proc.stderr
    rows = (tmp_path / "out" / "logs" / "metrics.txt").read_text().splitlines()
    assert len(rows) == 3
    losses = [float(row.split("loss:")[1].split()[0]) for row in rows]
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="sequence parallelism over GPUs needs 2 of them")
def test_sequence_parallel_block_mask_step_equals_one_gpu(tmp_path):
    """sp=2 over two GPUs (NCCL, FlexAttention BlockMask of the whole rows) = one GPU on whole rows."""
    from tests.test_sequence_parallel import check

    out = tmp_path / "result.json"
    cases = ["bidir_context:packed:1:1", "causal:packed:0:1", "causal:unpacked:0:1", "bidir_context:unpacked:1:0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["tests/distributed/sequence_parallel_worker.py", str(out), "1x2", ",".join(cases), "cuda"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check(json.loads(out.read_text()), len(cases))


def memory_option_step(inner_checkpointing: str, offload: bool, tile: int | None):
    """Outer loss, inner losses and θ-gradients of one FocuSFT BlockMask step with the memory options given."""
    from focusft.activation_memory import ActivationOffload
    from focusft.tiled_ffn import apply_tiled_ffn

    tokens, labels, layout = random_batch(2, 256, 0)
    tokens, labels, layout = tokens.cuda(), labels.cuda(), layout.to("cuda")
    decoder = seeded_tiny_qwen2_5(0).to(device="cuda")
    slots = attach_fast_weight_slots(decoder, FAST)
    apply_tiled_ffn(decoder, tile)
    offloading = ActivationOffload("cuda") if offload else None  # torchtune's OffloadActivations
    model = SplitDecoder(decoder, slots, True, inner_checkpointing, offloading)
    documents = Documents.from_layout(layout).to("cuda")
    result = bilevel_step(
        model,
        slots,
        tokens,
        labels,
        mask=build_mask(layout, "bidir_context", "block"),
        input_pos=document_positions(layout.doc),
        inner=InnerLoopConfig(steps=2),
        documents=documents,
        initial_fast_weights=slots.init([3 + d for d in range(documents.count)], device="cuda"),
    )
    (result.loss / result.num_tokens).backward()
    return result.loss, result.inner_losses, {n: p.grad for n, p in model.named_parameters()}


MEMORY_OPTIONS = [("selective", False, None), ("selective", True, None), ("selective", True, 96)]


@pytest.mark.parametrize(("inner_checkpointing", "offload", "tile"), MEMORY_OPTIONS)
def test_memory_options_give_the_plain_block_mask_step(inner_checkpointing, offload, tile):
    """Selective inner checkpointing (FlexAttention kept), OffloadActivations and the tiled FFN on the GPU path."""
    loss, inner, grads = memory_option_step(inner_checkpointing, offload, tile)
    ref_loss, ref_inner, ref_grads = memory_option_step("none", False, None)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inner, ref_inner, atol=1e-5, rtol=1e-5)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, atol=1e-5, rtol=1e-4, msg=name)
