"""The mask against brute force, and its two materialisations against each other."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from focusft.masks import (
    TokenLayout,
    block_mask,
    build_mask,
    dense_mask,
    document_positions,
    focus_mask_mod,
)
from focusft.tiny import seeded_tiny_qwen2_5
from tests.layouts import random_layout
from tests.tolerances import fp32_sum_error


def brute_force_mask(layout: TokenLayout, mode: str) -> torch.Tensor:
    """docs/DESIGN.md section 2 as a double loop, turns found by walking each row."""
    b, s = layout.shape
    context, doc, valid = layout.context.tolist(), layout.doc.tolist(), layout.valid.tolist()
    mask = torch.zeros(b, s, s, dtype=torch.bool)
    for row in range(b):
        turn, current = [], 0
        for t in range(s):
            if t > 0 and (context[row][t] != context[row][t - 1] or doc[row][t] != doc[row][t - 1]):
                current += 1
            turn.append(current)
        for q in range(s):
            for k in range(s):
                if q == k:
                    mask[row, q, k] = True
                    continue
                if not (valid[row][q] and valid[row][k] and doc[row][q] == doc[row][k]):
                    continue
                causal = k <= q
                bidir = mode == "bidir_context" and context[row][q] and context[row][k] and turn[q] == turn[k]
                mask[row, q, k] = causal or bidir
    return mask


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
@pytest.mark.parametrize("seed", range(4))
def test_dense_mask_matches_brute_force(mode, seed):
    layout = random_layout(3, 40, torch.Generator().manual_seed(seed))
    assert torch.equal(dense_mask(layout, mode), brute_force_mask(layout, mode))


def test_bidir_mask_on_a_hand_written_conversation():
    # system(3) | assistant(2) | tool output(2) | assistant(1) | pad(1)
    context = torch.tensor([[1, 1, 1, 0, 0, 1, 1, 0, 1]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    layout = TokenLayout(context=context, doc=torch.zeros_like(context, dtype=torch.long), valid=valid)
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(dense_mask(layout, "bidir_context")[0], expected)


def test_causal_single_document_is_the_standard_causal_mask():
    context = torch.rand(2, 33, generator=torch.Generator().manual_seed(0)) > 0.5
    layout = TokenLayout.single_document(context)
    expected = torch.tril(torch.ones(33, 33, dtype=torch.bool)).expand(2, 33, 33)
    assert torch.equal(dense_mask(layout, "causal"), expected)


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
def test_block_mask_equals_dense_mask(mode):
    layout = random_layout(2, 100, torch.Generator().manual_seed(7))
    bm = block_mask(layout, mode, block_size=16)
    dense = dense_mask(layout, mode)
    mask_mod = focus_mask_mod(layout, mode)
    # Re-materialise the BlockMask element by element: full blocks are all True, partial
    # blocks defer to mask_mod, blocks in neither list are all False.
    b, s = layout.shape
    kv_full = _block_table(bm.full_kv_num_blocks, bm.full_kv_indices, s, 16)
    kv_partial = _block_table(bm.kv_num_blocks, bm.kv_indices, s, 16)
    q = torch.arange(s)[:, None].expand(s, s)
    k = torch.arange(s)[None, :].expand(s, s)
    for row in range(b):
        qb, kb = q // 16, k // 16
        elementwise = mask_mod(torch.tensor(row), torch.tensor(0), q, k)
        rebuilt = kv_full[row][qb, kb] | (kv_partial[row][qb, kb] & elementwise)
        assert torch.equal(rebuilt, dense[row])
        # Every block the dense mask touches is listed, and full blocks really are full.
        assert not (kv_full[row][qb, kb] & ~dense[row]).any()


def _block_table(num_blocks: torch.Tensor, indices: torch.Tensor, s: int, block: int) -> torch.Tensor:
    n = -(-s // block)
    table = torch.zeros(num_blocks.shape[0], n, n, dtype=torch.bool)
    for row in range(num_blocks.shape[0]):
        for qb in range(n):
            for i in range(int(num_blocks[row, 0, qb])):
                table[row, qb, int(indices[row, 0, qb, i])] = True
    return table


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
def test_flex_attention_forward_equals_sdpa_with_dense_mask(mode):
    layout = random_layout(2, 64, torch.Generator().manual_seed(3))
    q, k, v = torch.randn(3, 2, 4, 64, 16, generator=torch.Generator().manual_seed(4)).unbind(0)
    flex = flex_attention(q, k, v, block_mask=block_mask(layout, mode, block_size=16))
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(layout, mode)[:, None])
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


def _flex_on_cpu(q, k, v, mask, dropout_p, is_causal):
    """What torchtune's attention does with a BlockMask on a GPU; on the CPU it only has SDPA."""
    return flex_attention(q, k, v, block_mask=mask)


def test_model_forward_with_block_mask_equals_dense_and_has_no_nan():
    """The torchtune decoder with a BlockMask gives the logits it gives with the dense mask."""
    layout = random_layout(2, 128, torch.Generator().manual_seed(5))
    model = seeded_tiny_qwen2_5(0).eval()
    flex_model = seeded_tiny_qwen2_5(0).eval()
    for layer in flex_model.layers:
        layer.attn._attention_call = _flex_on_cpu
    tokens = torch.randint(0, 500, layout.shape, generator=torch.Generator().manual_seed(6))
    pos = document_positions(layout.doc)
    with torch.no_grad():
        dense_out = model(tokens, mask=dense_mask(layout, "bidir_context"), input_pos=pos)
        flex_out = flex_model(tokens, mask=block_mask(layout, "bidir_context"), input_pos=pos)
    assert torch.isfinite(dense_out).all() and torch.isfinite(flex_out).all()
    torch.testing.assert_close(flex_out, dense_out, atol=1e-4, rtol=1e-4)


def test_padding_rows_produce_no_nan():
    context = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    layout = TokenLayout(context=context, doc=torch.zeros_like(context, dtype=torch.long), valid=valid)
    model = seeded_tiny_qwen2_5(0).eval()
    with torch.no_grad():
        out = model(torch.arange(8)[None], mask=dense_mask(layout, "bidir_context"))
    assert torch.isfinite(out).all()


def test_positions_restart_per_document():
    doc = torch.tensor([[0, 0, 0, 1, 1, 2, 3, 3]])
    assert document_positions(doc).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]


def test_bad_layouts_and_modes_are_rejected():
    ok = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="one shape"):
        TokenLayout(context=ok, doc=torch.zeros(2, 4, dtype=torch.long), valid=ok)
    with pytest.raises(ValueError, match="bool"):
        TokenLayout(context=ok.long(), doc=torch.zeros(2, 5, dtype=torch.long), valid=ok)
    with pytest.raises(ValueError, match="Unknown attention mask mode 'full'"):
        dense_mask(TokenLayout.single_document(ok), "full")


def _single_document_layout(batch: int, seq_len: int, seed: int) -> TokenLayout:
    """Unpacked rows: one document each, right-padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=g)
    lengths[0] = seq_len
    valid = torch.arange(seq_len)[None, :] < lengths[:, None]
    context = torch.rand(batch, seq_len, generator=g) > 0.5
    doc = torch.where(valid, 0, 1)
    return TokenLayout(context=context, doc=doc, valid=valid)


def test_causal_mode_on_unpacked_rows_uses_the_kernels_causal_mask():
    layout = _single_document_layout(3, 20, 0)
    assert build_mask(layout, "causal", "dense") is None
    assert build_mask(layout, "causal", "block") is None
    assert build_mask(layout, "bidir_context", "dense") is not None
    packed = random_layout(3, 40, torch.Generator().manual_seed(1), max_docs=3)
    assert packed.doc[packed.valid].max() > 0
    assert build_mask(packed, "causal", "dense") is not None
    hole = TokenLayout.single_document(torch.zeros(1, 6, dtype=torch.bool))
    hole = TokenLayout(context=hole.context, doc=hole.doc, valid=torch.tensor([[1, 1, 0, 1, 0, 0]], dtype=torch.bool))
    assert build_mask(hole, "causal", "dense") is not None


@pytest.mark.parametrize("seed", range(3))
def test_causal_shortcut_gives_the_same_losses_and_gradients(seed):
    """Response-token losses and θ-gradients with ``mask=None`` equal those with the dense mask."""
    layout = _single_document_layout(3, 24, seed)
    tokens = torch.randint(0, 500, layout.shape, generator=torch.Generator().manual_seed(seed))
    labels = torch.where(layout.valid & ~layout.context, tokens, -100).roll(-1, dims=1)
    labels[:, -1] = -100
    pos = document_positions(layout.doc)
    assert_same_loss_and_gradients(
        tokens, labels, pos, build_mask(layout, "causal", "dense"), dense_mask(layout, "causal")
    )


def test_compiled_block_mask_equals_eager_block_mask():
    layout = random_layout(2, 96, torch.Generator().manual_seed(2))
    eager = block_mask(layout, "bidir_context", block_size=16, compile=False)
    compiled = block_mask(layout, "bidir_context", block_size=16, compile=True)
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(compiled, name), getattr(eager, name)), name
    assert torch.equal(compiled.to_dense(), eager.to_dense())


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
def test_additive_dense_mask_gives_the_same_losses_and_gradients_as_the_bool_mask(mode):
    layout = random_layout(2, 40, torch.Generator().manual_seed(4))
    tokens = torch.randint(0, 500, layout.shape, generator=torch.Generator().manual_seed(5))
    labels = torch.where(layout.valid & ~layout.context, tokens, -100).roll(-1, dims=1)
    pos = document_positions(layout.doc)
    additive = build_mask(layout, mode, "dense", dtype=torch.float32)
    assert additive.dtype == torch.float32 and torch.equal(additive == 0, dense_mask(layout, mode))
    assert_same_loss_and_gradients(tokens, labels, pos, additive, dense_mask(layout, mode))


def assert_same_loss_and_gradients(tokens, labels, pos, mask, reference_mask):
    """The tiny decoder trained with ``mask`` gives the loss and gradients it gives with ``reference_mask``."""
    results = []
    for m in (mask, reference_mask):
        model = seeded_tiny_qwen2_5(0)
        logits = model(tokens, mask=m, input_pos=pos)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
        results.append((loss, [p.grad for p in model.parameters()]))
    (loss, grads), (ref_loss, ref_grads) = results
    # A mean of fp32 token losses, and gradients, through attention kernels that may round differently.
    torch.testing.assert_close(loss, ref_loss, atol=0, rtol=fp32_sum_error(int((labels != -100).sum())))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
