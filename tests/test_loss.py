"""Chunked per-token cross-entropy against the plain full-logits computation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchtune.modules import RMSNorm

from benchmarks.memory import TensorMemoryTracker
from focusft.loss import token_cross_entropy


def head(dim: int, vocab: int, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    norm = RMSNorm(dim)
    with torch.no_grad():
        norm.scale.add_(0.1 * torch.randn(dim))
    return norm, nn.Linear(dim, vocab, bias=False)


def plain_losses(norm, output, hidden, targets):
    return F.cross_entropy(output(norm(hidden)).float(), targets, reduction="none")


@pytest.mark.parametrize("n, chunk_size", [(100, 16), (96, 32), (10, 64), (1, 1)])
def test_values_and_gradients_equal_the_plain_computation(n, chunk_size):
    norm, output = head(24, 300)
    hidden = torch.randn(n, 24, requires_grad=True)
    targets = torch.randint(0, 300, (n,))
    weights = torch.rand(n)  # a non-uniform reduction, as a per-document mean would be
    params = [hidden, norm.scale, output.weight]

    ours = token_cross_entropy(norm, output, hidden, targets, chunk_size)
    ours_grads = torch.autograd.grad((ours * weights).sum(), params)
    ref = plain_losses(norm, output, hidden, targets)
    ref_grads = torch.autograd.grad((ref * weights).sum(), params)

    assert ours.shape == (n,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(ours_grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_bf16_activations_give_fp32_losses():
    norm, output = head(24, 300)
    norm, output = norm.bfloat16(), output.bfloat16()
    hidden = torch.randn(70, 24, dtype=torch.bfloat16)
    targets = torch.randint(0, 300, (70,))
    ours = token_cross_entropy(norm, output, hidden, targets, 16)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, plain_losses(norm, output, hidden, targets), atol=1e-5, rtol=1e-5)


def test_no_grad_runs_without_checkpointing():
    norm, output = head(8, 50)
    hidden, targets = torch.randn(40, 8), torch.randint(0, 50, (40,))
    with torch.no_grad():
        torch.testing.assert_close(
            token_cross_entropy(norm, output, hidden, targets, 7), plain_losses(norm, output, hidden, targets)
        )


def peak_bytes(losses_fn, n: int, dim: int, vocab: int) -> int:
    norm, output = head(dim, vocab)
    hidden = torch.randn(n, dim, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    with TensorMemoryTracker() as tracker:
        losses_fn(norm, output, hidden, targets).sum().backward()
    return tracker.peak


def test_full_logits_never_exist_at_once_in_forward_or_backward():
    n, dim, vocab, chunk = 4096, 32, 2000, 256
    full_logits = n * vocab * 4
    chunk_logits = chunk * vocab * 4
    plain = peak_bytes(plain_losses, n, dim, vocab)
    chunked = peak_bytes(lambda *a: token_cross_entropy(*a, chunk_size=chunk), n, dim, vocab)
    assert plain > full_logits  # the plain computation holds all logits (and their gradient)
    # Chunked: a few chunk-sized logit buffers (logits, softmax, gradient) plus [n, dim] activations
    # and the weight gradient; nowhere near one full [n, vocab] buffer.
    assert chunked < 4 * chunk_logits + 8 * n * dim * 4 + 2 * dim * vocab * 4 < full_logits / 2


def test_bad_arguments_are_rejected():
    norm, output = head(8, 50)
    with pytest.raises(ValueError, match="chunk_size"):
        token_cross_entropy(norm, output, torch.randn(4, 8), torch.zeros(4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="rows"):
        token_cross_entropy(norm, output, torch.randn(4, 8), torch.zeros(3, dtype=torch.long))
