"""Inference with the training mask (``attention=bidir_context``) against a full-sequence forward with that mask."""

import pytest
import torch
from lm_eval.api.instance import Instance

from focusft.data.messages import to_torchtune_messages
from focusft.data.tokenize import tokenize_conversation
from focusft.eval import FocusftLM
from focusft.eval.errors import EvalError
from focusft.eval.offline import render_prompt
from focusft.eval.prompt_mask import prompt_context

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Mary went to the kitchen. John moved to the garden. Where is Mary?"},
        {"role": "assistant", "content": " kitchen"},
        {"role": "user", "content": "Where is John?"},
        {"role": "assistant", "content": " garden"},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Where is the box?"},
        {"role": "assistant", "content": " office"},
    ],
]


def _training_layout(messages, tokenizer):
    """Tokens and context flags of the prompt as training tokenizes the conversation (answer removed)."""
    conversation = tokenize_conversation(to_torchtune_messages(messages), tokenizer)
    header = len([tokenizer.im_start_id, *tokenizer.encode("assistant\n", add_bos=False, add_eos=False)])
    end = conversation.spans[-1][0] + header
    return conversation.tokens[:end], conversation.context[:end]


def _brute_force_mask(context):
    """docs/DESIGN.md section 2, written out: causal, plus both-context tokens of one maximal context run."""
    run, runs = 0, []
    for index, flag in enumerate(context):
        run += index > 0 and flag != context[index - 1]
        runs.append(run)
    s = len(context)
    return torch.tensor(
        [[k <= q or (context[q] and context[k] and runs[q] == runs[k]) for k in range(s)] for q in range(s)]
    )


def test_prompt_flags_are_the_training_flags(tt_tokenizer):
    for messages in CONVERSATIONS:
        tokens, context = _training_layout(messages, tt_tokenizer)
        header = [tt_tokenizer.im_start_id, *tt_tokenizer.encode("assistant\n", add_bos=False, add_eos=False)]
        assert prompt_context(tokens, header, tt_tokenizer.im_end_id) == context
        assert not all(context) or len(messages) == 3  # the two-exchange prompt has a response inside it


@torch.no_grad()
def test_bidir_generation_matches_a_full_forward_with_the_training_mask(tiny_dir, reference_model, tt_tokenizer):
    lm = FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", batch_size=2, attention="bidir_context")
    logits = []
    hook = lm.model.output.register_forward_hook(lambda module, args, out: logits.append(out.detach().clone()))
    try:
        prompts = [render_prompt(messages) for messages in CONVERSATIONS]
        requests = [
            Instance("generate_until", {}, (p, {"do_sample": False, "until": [], "max_gen_toks": 5}), 0)
            for p in prompts
        ]
        lm.generate_until(requests, disable_tqdm=True)
    finally:
        hook.remove()
    # One batch, the longer prompt first (left padding on the other); one output call per step.
    layouts = [_training_layout(messages, tt_tokenizer) for messages in CONVERSATIONS]
    order = sorted(range(len(layouts)), key=lambda i: -len(layouts[i][0]))
    steps = torch.stack(logits)  # [steps, batch, vocab]
    for row, index in enumerate(order):
        tokens, context = layouts[index]
        assert lm.tok_encode(prompts[index]) == tokens  # the rendered prompt is the training tokenization
        generated = steps[:, row].argmax(-1).tolist()
        sequence = tokens + generated[:-1]
        flags = context + [False] * (len(generated) - 1)
        full = reference_model(torch.tensor([sequence]), mask=_brute_force_mask(flags)[None])[0]
        want = full[len(tokens) - 1 :]
        torch.testing.assert_close(steps[: len(want), row], want, rtol=1e-4, atol=1e-4)
        causal = reference_model(torch.tensor([tokens]))[0, -1]
        assert (causal - want[0]).abs().max() > 1e-2  # the mask changes the prefill: the check can fail


def test_attention_mode_is_checked(tiny_dir):
    with pytest.raises(EvalError, match="attention='sideways'"):
        FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", attention="sideways")
    with pytest.raises(EvalError, match="adapt=true"):
        FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", attention="bidir_context", adapt=True)
