"""Row-block attention (focusft/row_block_attention.py) against SDPA with the brute-force dense mask."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.memory import peak_memory_growth
from focusft import documents as documents_module
from focusft.bilevel import InnerLoopConfig
from focusft.documents import Documents
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import RowBlockMask, TokenLayout, additive_mask, build_mask
from focusft.row_block_attention import RowBlockAttentionCall, install_row_block_attention, row_block_attention
from focusft.sequence_parallel import SequenceShard, UlyssesAttention, apply_sequence_parallel
from focusft.split_decoder import SplitDecoder
from focusft.tiny import seeded_tiny_qwen2_5
from tests.layouts import documents_layout, random_layout, shifted_labels
from tests.test_activation_memory import assert_same_step, nonzero_fast_weights
from tests.test_bilevel import packed_step
from tests.test_masks import brute_force_mask

MODES = ["bidir_context", "causal"]


def close(got: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Equal to ``rel`` of the expected tensor's largest magnitude (fp32 reassociation only)."""
    torch.testing.assert_close(got, expected, rtol=rel, atol=rel * expected.abs().max().item())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("block", [1, 7, 64])
def test_rows_are_the_brute_force_mask(mode, block):
    layout = random_layout(2, 40, torch.Generator().manual_seed(3))
    """Blocks put together, keys outside each block's key range masked: the whole mask."""
    mask = RowBlockMask(layout, mode, block=block)
    whole = torch.full((2, 1, 40, 40), float("-inf"))
    for queries, keys in mask.blocks():
        whole[:, :, queries, keys] = mask.additive(queries, keys, torch.float32)
    assert torch.equal(whole[:, 0] == 0, brute_force_mask(layout, mode))
    assert torch.isneginf(whole[whole != 0]).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("block", [7, 16, 128])  # not dividing the 45 positions; one block for all
def test_attention_and_its_gradients_equal_sdpa_with_the_dense_mask(mode, block):
    """Batch 2 of packed, padded rows; grouped key/value heads repeated as torchtune repeats them."""
    generator = torch.Generator().manual_seed(0)
    b, heads, kv_heads, s, d = 2, 4, 2, 45, 16
    layout = random_layout(b, s, generator)
    q = torch.randn(b, heads, s, d, generator=generator, requires_grad=True)
    k = torch.randn(b, kv_heads, s, d, generator=generator, requires_grad=True)
    v = torch.randn(b, kv_heads, s, d, generator=generator, requires_grad=True)
    grad_out = torch.randn(b, heads, s, d, generator=generator)

    def repeat(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(2).expand(b, kv_heads, heads // kv_heads, s, d).flatten(1, 2)

    dense = additive_mask(brute_force_mask(layout, mode), torch.float32)[:, None]
    expected = F.scaled_dot_product_attention(q, repeat(k), repeat(v), attn_mask=dense)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    got = row_block_attention(q, repeat(k), repeat(v), RowBlockMask(layout, mode, block=block))
    grads = torch.autograd.grad(got, (q, k, v), grad_out)
    close(got, expected, 1e-6)
    for g, e in zip(grads, expected_grads):
        close(g, e, 1e-6)


FAST = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5)
INNER = InnerLoopConfig(steps=2, lr=1.0, grad_clip=0.05)


def focus_step(mask_for, activation_checkpointing: bool, inner_checkpointing: str, mode: str = "bidir_context"):
    """One FocuSFT micro-batch (two rows: three packed documents, then two with padding) and its outer backward."""
    decoder = seeded_tiny_qwen2_5(0)
    slots = attach_fast_weight_slots(decoder, FAST)
    model = SplitDecoder(decoder, slots, activation_checkpointing, inner_checkpointing)
    generator = torch.Generator().manual_seed(0)
    layout = documents_layout([[21, 12, 9], [30, 10]], 45, generator)
    tokens = torch.randint(0, 500, layout.shape, generator=generator)
    fast = nonzero_fast_weights(slots, Documents.from_layout(layout).count)
    mask = mask_for(layout, mode)
    result = packed_step(model, slots, tokens, shifted_labels(tokens, layout), layout, mode, INNER, fast, mask)
    (result.loss / result.num_tokens).backward()
    return result, {n: p.grad for n, p in model.named_parameters()}


def brute_force_additive(layout, mode):
    return additive_mask(brute_force_mask(layout, mode), torch.float32)


@pytest.fixture
def short_chunks(monkeypatch):
    monkeypatch.setattr(documents_module, "CHUNK_TOKENS", 8)  # documents span several chunks


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("checkpointing", [(True, "selective"), (True, "full"), (False, "none")])
def test_bilevel_step_equals_the_dense_mask_step(mode, checkpointing, short_chunks):
    """Inner losses, φ_K, outer loss and θ-gradients of the step with row blocks of 16 (not dividing 45)."""
    expected = focus_step(brute_force_additive, *checkpointing, mode=mode)
    got = focus_step(lambda layout, m: RowBlockMask(layout, m, block=16), *checkpointing, mode=mode)
    assert_same_step(got, expected, 1e-5)


class KernelCalls(TorchDispatchMode):
    """Counts the CPU flash kernel's forward and backward calls that actually run."""

    def __init__(self) -> None:
        super().__init__()
        self.forward = self.backward = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default:
            self.forward += 1
        elif func is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default:
            self.backward += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("inner_checkpointing", ["selective", "full", "none"])
def test_selective_checkpointing_keeps_the_blocks_attention_outputs(inner_checkpointing, short_chunks):
    """Kernel calls of one step (4 layers, 2 adapted, K=2, 3 blocks of 16 rows): the inner passes'
    selective checkpoint replays no attention kernel; full recomputes it once per attending layer and pass.
    The first adapted layer's attention is in the trunk: inner passes attend in the other adapted layers.
    """
    blocks, trunk, adapted, k = 3, 2, 2, INNER.steps
    calls = KernelCalls()
    with calls:
        focus_step(lambda layout, m: RowBlockMask(layout, m, block=16), True, inner_checkpointing)
    replayed = k * (adapted - 1) if inner_checkpointing == "full" else 0
    # trunk and outer head: forward, recomputed forward (full checkpoint); each inner pass: forward.
    assert calls.forward == blocks * (2 * trunk + 2 * adapted + k * (adapted - 1) + replayed)
    # The inner backward needs no attention gradient in the lowest adapted layer (fast weights are in its FFN).
    assert calls.backward == blocks * (trunk + adapted + k * (adapted - 1))


def test_other_masks_go_to_the_wrapped_call_unchanged():
    seen = []

    def attend(q, k, v, mask, dropout_p, is_causal):
        seen.append((mask, dropout_p, is_causal))
        return q

    call = RowBlockAttentionCall(attend)
    q = torch.zeros(1, 1, 4, 2)
    dense = torch.ones(1, 4, 4, dtype=torch.bool)
    for mask in (None, dense):
        assert call(q, q, q, mask=mask, dropout_p=0.0, is_causal=mask is None) is q
    assert seen == [(None, 0.0, True), (dense, 0.0, False)]
    layout = random_layout(1, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="FocuSFT mask error: the rows mask has no attention dropout"):
        call(q, q, q, mask=RowBlockMask(layout, "causal"), dropout_p=0.1, is_causal=False)
    with pytest.raises(RuntimeError, match="FocuSFT mask error: attention over 4 queries and 4 keys, but the rows"):
        row_block_attention(q, q, q, RowBlockMask(random_layout(1, 6, torch.Generator()), "causal"))


def test_installed_once_and_inside_ulysses_all_to_alls():
    decoder = seeded_tiny_qwen2_5(0)
    apply_sequence_parallel(decoder, SequenceShard(rank=0, size=2))  # no collective until attention runs
    install_row_block_attention(decoder)
    install_row_block_attention(decoder)
    for layer in decoder.layers:
        outer = layer.attn._attention_call
        assert isinstance(outer, UlyssesAttention)
        assert isinstance(outer.attend, RowBlockAttentionCall)
        assert not isinstance(outer.attend.attend, RowBlockAttentionCall)


def test_build_mask_rows_kind():
    layout = random_layout(2, 20, torch.Generator().manual_seed(0))
    assert isinstance(build_mask(layout, "bidir_context", "rows"), RowBlockMask)
    single = random_layout(1, 20, torch.Generator().manual_seed(0), max_docs=1)
    single = type(single)(single.context, torch.zeros_like(single.doc), torch.ones_like(single.valid))
    assert build_mask(single, "causal", "rows") is None  # the kernel's own causal mask
    with pytest.raises(ValueError, match="block must be a positive number"):
        RowBlockMask(layout, "causal", block=0)


def test_key_ranges_are_each_blocks_documents_and_context_turns():
    """Three packed documents of 10 tokens: causal blocks of 10 see only their own document; in the
    bidir_context mode a block ending inside a context turn also sees the rest of that turn."""
    context = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0] * 3], dtype=torch.bool)
    doc = torch.arange(3).repeat_interleave(10)[None]
    layout = TokenLayout(context=context, doc=doc, valid=torch.ones_like(context))
    causal = [(q.start, q.stop, k.start, k.stop) for q, k in RowBlockMask(layout, "causal", block=10).blocks()]
    assert causal == [(0, 10, 0, 10), (10, 20, 10, 20), (20, 30, 20, 30)]
    bidir = [(q.start, q.stop, k.start, k.stop) for q, k in RowBlockMask(layout, "bidir_context", block=11).blocks()]
    assert bidir == [(0, 11, 0, 12), (11, 22, 10, 22), (22, 30, 20, 30)]


def test_key_ranges_with_more_document_ids_than_positions():
    """Ids need not be small: two rows of four one-token documents, ids 0-3 and 10-13."""
    doc = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13]])
    context = torch.zeros(2, 4, dtype=torch.bool)
    layout = TokenLayout(context=context, doc=doc, valid=torch.ones_like(context))
    blocks = [(q.start, q.stop, k.start, k.stop) for q, k in RowBlockMask(layout, "causal", block=2).blocks()]
    assert blocks == [(0, 2, 0, 2), (2, 4, 2, 4)]


def test_a_step_keeps_no_whole_mask():
    """SFT+Bidir step on a 512-token row (two documents) with activation checkpointing: the dense fp32
    mask (1 MiB) is alive for the whole step; with row blocks of 128 the peak is lower by most of it."""
    decoder = seeded_tiny_qwen2_5(0)
    slots = attach_fast_weight_slots(decoder, FAST)
    model = SplitDecoder(decoder, slots, activation_checkpointing=True)
    generator = torch.Generator().manual_seed(0)
    layout = documents_layout([[300, 212]], 512, generator)
    tokens = torch.randint(0, 500, layout.shape, generator=generator)
    labels = shifted_labels(tokens, layout)

    def step(make_mask):
        def run():
            mask = make_mask()
            result = packed_step(model, slots, tokens, labels, layout, "bidir_context", None, None, mask)
            result.loss.backward()

        return run

    whole = lambda: build_mask(layout, "bidir_context", "dense", dtype=torch.float32)  # noqa: E731
    dense = peak_memory_growth(step(whole), torch.device("cpu"))
    rows = peak_memory_growth(step(lambda: RowBlockMask(layout, "bidir_context", block=128)), torch.device("cpu"))
    assert rows < dense - 0.75 * 2**20, (rows, dense)
