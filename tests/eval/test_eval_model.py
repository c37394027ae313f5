"""The focusft lm-eval model against direct computations on the same weights."""

import math

import pytest
import torch
from lm_eval.api.instance import Instance

from focusft.eval import FocusftLM
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.tiny import seeded_tiny_qwen2_5
from tests.eval.conftest import EOS, cut, direct_greedy, direct_logprob, encode

CONTEXTS = [
    "Alice moved to the pantry. Frank went back to the porch. Where is Alice? Answer:",
    "Where is the wallet?",
    "Ellen grabbed the wallet there. Ellen travelled to the porch. Ellen dropped the wallet. The wallet is in the",
    "box",
]


def _loglik(context, continuation):
    return Instance("loglikelihood", {}, (context, continuation), 0)


def _gen(context, **kwargs):
    return Instance("generate_until", {}, (context, {"do_sample": False, **kwargs}), 0)


def _expected_loglik(model, tokenizer, context, continuation):
    """lm-eval's split: trailing spaces of the context move to the continuation; empty context -> eos prefix."""
    if not context:
        return direct_logprob(
            model, [tokenizer.eos_id, *encode(tokenizer, continuation)], len(encode(tokenizer, continuation))
        )
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    whole = encode(tokenizer, stripped + continuation)
    n = len(whole) - len(encode(tokenizer, stripped))
    return direct_logprob(model, whole, n)


def test_loglikelihood_is_the_sum_of_token_logprobs(focusft_lm, reference_model, tt_tokenizer):
    pairs = [(CONTEXTS[0], " pantry"), ("", "Frank went back"), (CONTEXTS[2], " porch."), ("Where is Bob? ", "garage")]
    got = focusft_lm.loglikelihood([_loglik(c, x) for c, x in pairs], disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        want, want_greedy = _expected_loglik(reference_model, tt_tokenizer, context, continuation)
        assert logprob == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    # A continuation that is the model's own greedy output is reported as greedy.
    prompt = encode(tt_tokenizer, CONTEXTS[1])
    own = direct_greedy(reference_model, prompt, 3, stop_ids=set())
    _, is_greedy = focusft_lm._loglikelihood_tokens([(None, prompt, own)], disable_tqdm=True)[0]
    assert is_greedy


def test_loglikelihood_left_truncates_to_max_length(tiny_dir, reference_model, tt_tokenizer):
    lm = FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", max_length=12)
    context, continuation = CONTEXTS[2], " porch"
    ((logprob, _),) = lm.loglikelihood([_loglik(context, continuation)], disable_tqdm=True)
    whole = encode(tt_tokenizer, context + continuation)
    n = len(whole) - len(encode(tt_tokenizer, context))
    want, _ = direct_logprob(reference_model, whole[-13:], n)  # max_length inputs + the last scored token
    assert len(whole) > 13 and logprob == pytest.approx(want, abs=1e-4)


def test_loglikelihood_rolling_scores_every_token_after_the_eos_prefix(focusft_lm, reference_model, tt_tokenizer):
    text = CONTEXTS[0] + " " + CONTEXTS[2]
    (got,) = focusft_lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    tokens = [tt_tokenizer.eos_id, *encode(tt_tokenizer, text)]
    want, _ = direct_logprob(reference_model, tokens, len(tokens) - 1)
    assert got == pytest.approx(want, abs=1e-3)


def test_generate_until_matches_a_direct_greedy_decode(tiny_dir, reference_model, tt_tokenizer, hf_tokenizer):
    # Different prompt lengths in one batch (left padding) and a prefill split into chunks of 5 tokens.
    lm = FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", batch_size=4, prefill_chunk_size=5)
    stops = [".", "\n"]
    got = lm.generate_until([_gen(c, until=stops, max_gen_toks=12) for c in CONTEXTS], disable_tqdm=True)
    stop_ids = {tt_tokenizer.eos_id}
    for context, text in zip(CONTEXTS, got):
        tokens = direct_greedy(reference_model, encode(tt_tokenizer, context), 12, stop_ids)
        assert text == cut(hf_tokenizer.decode(tokens, skip_special_tokens=True), [*stops, EOS])
    assert any(got), "the tiny model should produce some text"


def test_generate_until_left_truncates_the_prompt(tiny_dir, reference_model, tt_tokenizer, hf_tokenizer):
    lm = FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", max_length=20)
    (text,) = lm.generate_until([_gen(CONTEXTS[2], until=[], max_gen_toks=6)], disable_tqdm=True)
    prompt = encode(tt_tokenizer, CONTEXTS[2])
    assert len(prompt) > 14
    tokens = direct_greedy(reference_model, prompt[-14:], 6, {tt_tokenizer.eos_id})
    assert text == hf_tokenizer.decode(tokens, skip_special_tokens=True)


def test_generate_until_rejects_sampling(focusft_lm):
    with pytest.raises(ValueError, match="greedily"):
        focusft_lm.generate_until([_gen("x", do_sample=True, temperature=0.7)], disable_tqdm=True)


def test_chat_template_is_the_checkpoints_own(focusft_lm, hf_tokenizer):
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Alice?"}]
    assert focusft_lm.apply_chat_template(history) == hf_tokenizer.apply_chat_template(
        history, tokenize=False, add_generation_prompt=True
    )
    assert focusft_lm.apply_chat_template(history).endswith("<|im_start|>assistant\n")


def _adapted_reference(prompt, lr, clip):
    """One SGD step of the prompt's mean next-token loss on fast weights set directly on the model."""
    model = seeded_tiny_qwen2_5(0).eval().requires_grad_(False)
    slots = attach_fast_weight_slots(model, FastWeightConfig())
    init = slots.init([0])
    modules = {}
    for layer, weights in init.items():
        for name, tensor in weights.items():
            module_path, attr = name.rsplit(".", 1)
            module = model.layers[layer].get_submodule(module_path)
            setattr(module, attr, tensor[0].clone().requires_grad_())
            modules[(layer, name)] = (module, attr)
    x = torch.tensor([prompt])
    loss = torch.nn.functional.cross_entropy(model(x[:, :-1])[0].float(), x[0, 1:])
    leaves = [getattr(m, a) for m, a in modules.values()]
    grads = torch.autograd.grad(loss, leaves)
    for (module, attr), leaf, grad in zip(modules.values(), leaves, grads):
        norm = float(grad.norm())
        step = grad * (clip / (norm + 1e-12)) if norm > clip else grad
        setattr(module, attr, (leaf - lr * step).detach())
    return model


def test_inference_time_adaptation_matches_a_direct_inner_step(tiny_dir, tt_tokenizer, hf_tokenizer):
    lm = FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", batch_size=2, adapt=True, adapt_lr=0.5)
    contexts = CONTEXTS[:2]
    got = lm.generate_until([_gen(c, until=[], max_gen_toks=8) for c in contexts], disable_tqdm=True)
    for context, text in zip(contexts, got):
        prompt = encode(tt_tokenizer, context)
        adapted = _adapted_reference(prompt, lr=0.5, clip=1.0)
        tokens = direct_greedy(adapted, prompt, 8, {tt_tokenizer.eos_id})
        assert text == hf_tokenizer.decode(tokens, skip_special_tokens=True)
    # The fast weights were dropped: the model is the base model again.
    assert all(getattr(m, "fast_a", None) is None for m in lm.model.modules())
    base = FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(lm.model.state_dict().values(), base.model.state_dict().values()))


def test_adaptation_changes_scores_and_lr_zero_does_not(tiny_dir, focusft_lm):
    request = [_loglik(CONTEXTS[2], " porch")]
    ((base, _),) = focusft_lm.loglikelihood(request, disable_tqdm=True)
    zero = FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", adapt=True, adapt_lr=0.0)
    one = FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", adapt=True, adapt_lr=1.0)
    assert zero.loglikelihood(request, disable_tqdm=True)[0][0] == pytest.approx(base, abs=1e-5)
    assert not math.isclose(one.loglikelihood(request, disable_tqdm=True)[0][0], base, abs_tol=1e-3)
    with pytest.raises(ValueError, match="loglikelihood_rolling"):
        one.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("text",), 0)], disable_tqdm=True)
