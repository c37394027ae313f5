"""Attention metrics against hand-computed values and independent full-softmax computations."""

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention
from transformers import AutoModelForCausalLM

from focusft.analysis.measure import decoder_forward, measure_attention
from focusft.analysis.probabilities import attention_probabilities, queries_and_keys
from focusft.analysis.sample import AttentionSample, synthetic_sample
from focusft.analysis.segments import Segment
from focusft.eval.checkpoint import load_model, read_checkpoint
from focusft.masks import focus_mask_mod
from focusft.tiny import seeded_tiny_qwen2_5
from tests.tolerances import attention_share_error

S, P, T, R = Segment.SINK, Segment.PROMPT, Segment.TOOL, Segment.RESPONSE
# (segment, is context) runs of a constructed 30-token conversation.
RUNS = [(S, True, 5), (P, True, 5), (R, False, 4), (T, True, 8), (R, False, 4), (P, True, 2), (R, False, 2)]


def constructed_sample() -> AttentionSample:
    segments = [int(seg) for seg, _, n in RUNS for _ in range(n)]
    context = [ctx for _, ctx, n in RUNS for _ in range(n)]
    tokens = torch.randint(0, 900, (len(segments),), generator=torch.Generator().manual_seed(0))
    return AttentionSample(
        tokens=tokens,
        context=torch.tensor(context),
        segments=torch.tensor(segments),
        turn_starts=[],
        description="constructed",
    )


def allowed(context: list[bool], mode: str, q: int, k: int) -> bool:
    """DESIGN section 2 for one unpacked, unpadded row, written out."""
    turn = [sum(context[i] != context[i - 1] for i in range(1, t + 1)) for t in range(len(context))]
    bidir = mode == "bidir_context" and context[q] and context[k] and turn[q] == turn[k]
    return q == k or k <= q or bidir


def uniform_attention_model():
    """q = k = 0 in every layer: each query spreads its attention evenly over the keys it may see."""
    model = seeded_tiny_qwen2_5(0).eval()
    with torch.no_grad():
        for layer in model.layers:
            for proj in (layer.attn.q_proj, layer.attn.k_proj):
                proj.weight.zero_()
                proj.bias.zero_()
    return model


@pytest.mark.parametrize("mode", ["causal", "bidir_context"])
def test_uniform_attention_gives_the_hand_computed_metrics(mode):
    sample = constructed_sample()
    model = uniform_attention_model()
    metrics = measure_attention(
        model.layers, decoder_forward(model), sample, mode, device="cpu", heatmap_layer=1, query_chunk=4
    )
    segments, context = sample.segments.tolist(), sample.context.tolist()
    responses = [q for q in range(len(segments)) if not context[q]]
    # A response query q is causal in both modes: 1/(q+1) on each of the keys 0..q.
    budget = {seg: sum(segments[: q + 1].count(seg) / (q + 1) for q in responses) / len(responses) for seg in Segment}
    error = attention_share_error(len(segments))
    for layer in range(metrics.num_layers):
        shares = metrics.budget_per_layer()[layer]
        for seg in Segment:
            assert shares[seg].item() == pytest.approx(budget[seg], abs=error)
    assert metrics.sink_mass == pytest.approx(budget[S], abs=error)
    assert metrics.context_engagement == pytest.approx(budget[P] + budget[T], abs=error)
    profile = [sum(1 / (q + 1) for q in responses if k <= q) / len(responses) for k in range(len(segments))]
    expected_profile = torch.tensor(profile, dtype=torch.float64)
    torch.testing.assert_close(metrics.positional_profile(), expected_profile, atol=error, rtol=0)
    heatmap = torch.tensor(
        [[float(allowed(context, mode, q, k)) for k in range(len(segments))] for q in range(len(segments))]
    )
    torch.testing.assert_close(metrics.heatmap, heatmap / heatmap.sum(dim=1, keepdim=True))


def test_bidirectional_context_takes_the_context_queries_off_the_sink():
    sample, model = constructed_sample(), uniform_attention_model()
    context = sample.context

    def context_sink_share(mode):
        metrics = measure_attention(model.layers, decoder_forward(model), sample, mode, device="cpu")
        return metrics.heatmap[context][:, :5].sum(dim=1).mean().item()

    causal, bidir = context_sink_share("causal"), context_sink_share("bidir_context")
    # Context tokens in turn [a, b) see keys 0..b-1 instead of 0..q: less weight on each sink key.
    assert bidir < causal - 0.05


@pytest.fixture(scope="module")
def tool_sample(tokenizer):
    return synthetic_sample("tool", 640, seed=1, tokenizer=tokenizer)


def test_causal_probabilities_equal_transformers_eager_attention(tiny_dir, tool_sample):
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = hf(tool_sample.tokens[None], output_attentions=True).attentions  # per layer [1, h, s, s]
    model = load_model(read_checkpoint(tiny_dir), dtype=torch.float32, device=torch.device("cpu"))
    metrics = measure_attention(
        model.layers, decoder_forward(model), tool_sample, "causal", device="cpu", query_chunk=7, heatmap_size=10_000
    )
    response = tool_sample.response
    expected = torch.stack([a[0].mean(dim=0)[response].mean(dim=0) for a in attentions]).double()
    torch.testing.assert_close(metrics.received, expected, atol=1e-6, rtol=1e-5)
    assert metrics.heatmap_layer == len(attentions) // 2
    torch.testing.assert_close(metrics.heatmap, attentions[metrics.heatmap_layer][0].mean(dim=0), atol=1e-6, rtol=1e-5)
    ones = torch.ones(metrics.num_layers, dtype=torch.float64)
    error = attention_share_error(tool_sample.seq_len)
    torch.testing.assert_close(metrics.budget_per_layer().sum(dim=1), ones, atol=error, rtol=0)


def test_bidirectional_probabilities_reproduce_each_layers_attention_output(tool_sample):
    """P @ V through the output projection equals what torchtune's attention (SDPA, dense mask) returned."""
    model = seeded_tiny_qwen2_5(3).eval()
    captured = {}
    hooks = [
        layer.attn.register_forward_hook(
            lambda module, args, kwargs, out, i=i: captured.__setitem__(i, (args[0], kwargs["input_pos"], out)),
            with_kwargs=True,
        )
        for i, layer in enumerate(model.layers)
    ]
    metrics = measure_attention(model.layers, decoder_forward(model), tool_sample, "bidir_context", device="cpu")
    for hook in hooks:
        hook.remove()
    mask_mod = focus_mask_mod(tool_sample.layout(), "bidir_context")
    seq_len = tool_sample.seq_len
    for index, layer in enumerate(model.layers):
        attn = layer.attn
        x, input_pos, out = captured[index]
        with torch.no_grad():
            q, k = queries_and_keys(attn, x, input_pos)
            [(rows, probs)] = attention_probabilities(q, k, mask_mod, torch.arange(seq_len), chunk=seq_len)
            v = attn.v_proj(x).view(1, seq_len, attn.num_kv_heads, attn.head_dim).transpose(1, 2)[0]
            v = v.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=0)
            rebuilt = attn.output_proj((probs @ v).transpose(0, 1).reshape(1, seq_len, -1))
        torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-4)
        received = probs.mean(dim=0)[tool_sample.response].mean(dim=0).double()
        # Sums of positive fp32 terms, in other orders: relative error, not absolute. The atol
        # only absorbs probabilities that underflow in one computation and not the other.
        error = attention_share_error(seq_len)
        torch.testing.assert_close(metrics.received[index], received, atol=1e-12, rtol=error)
    # The profile summed over a segment's positions is that segment's share (float64 sums of ≤ s terms).
    profile, budget = metrics.positional_profile(), metrics.budget()
    for seg in Segment:
        assert profile[metrics.segments == seg].sum().item() == pytest.approx(budget[seg.name.lower()], abs=1e-9)
    assert sum(budget.values()) == pytest.approx(1.0, abs=attention_share_error(seq_len))


def _flex_on_cpu(q, k, v, mask, dropout_p, is_causal):
    """What torchtune's attention does with a BlockMask on a GPU; on the CPU it only has SDPA."""
    return flex_attention(q, k, v, block_mask=mask)


def test_the_gpu_settings_on_cpu_block_mask_bf16_and_one_layer_at_a_time(tool_sample):
    """FlexAttention forward with a BlockMask, bf16 weights, layers offloaded: the fp32 dense metrics."""
    reference = seeded_tiny_qwen2_5(0).eval()
    expected = measure_attention(
        reference.layers, decoder_forward(reference), tool_sample, "bidir_context", device="cpu"
    )
    flex = seeded_tiny_qwen2_5(0).eval()
    for layer in flex.layers:
        layer.attn._attention_call = _flex_on_cpu
    block = measure_attention(
        flex.layers, decoder_forward(flex), tool_sample, "bidir_context", device="cpu", mask_kind="block"
    )
    torch.testing.assert_close(block.received, expected.received, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(block.heatmap, expected.heatmap, atol=1e-6, rtol=1e-4)
    bf16 = seeded_tiny_qwen2_5(0).eval().to(torch.bfloat16)
    offloaded = measure_attention(
        bf16.layers, decoder_forward(bf16, offload_to=torch.device("cpu")), tool_sample, "bidir_context", device="cpu"
    )
    torch.testing.assert_close(offloaded.budget_per_layer(), expected.budget_per_layer(), atol=2e-2, rtol=0)
    assert offloaded.received.dtype == torch.float64 and torch.isfinite(offloaded.received).all()


def test_compiled_layers_run_the_hooks_eagerly(tool_sample):
    """The recipe's ``compile: true`` compiles each layer; the probe's forward runs them uncompiled."""
    model = seeded_tiny_qwen2_5(0).eval()
    expected = measure_attention(model.layers, decoder_forward(model), tool_sample, "causal", device="cpu")
    for layer in model.layers:
        layer.compile(dynamic=True)
    compiled = measure_attention(model.layers, decoder_forward(model), tool_sample, "causal", device="cpu")
    torch.testing.assert_close(compiled.received, expected.received, atol=0, rtol=0)
