"""A tiny checkpoint, the focusft model over it, and the reference computations the tests compare against.

The references run torchtune's own ``TransformerDecoder.forward`` on the full
sequence (no KV cache, no padding, no masks) and decode with the HF tokenizer,
so they share no code with the backend under test.
"""

import pytest
import torch
from transformers import AutoTokenizer

from focusft.eval import FocusftLM
from focusft.tiny import load_tiny_tokenizer, seeded_tiny_qwen2_5, write_tiny_checkpoint

EOS = "<|im_end|>"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture(scope="session")
def reference_model():
    """The same weights as the checkpoint, built directly (not through the checkpoint loader)."""
    return seeded_tiny_qwen2_5(0).eval()


@pytest.fixture(scope="session")
def tt_tokenizer(tiny_dir):
    return load_tiny_tokenizer(tiny_dir)


@pytest.fixture(scope="session")
def hf_tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.fixture(scope="session")
def focusft_lm(tiny_dir):
    return FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", batch_size=3)


def encode(tokenizer, text):
    return tokenizer.encode(text, add_bos=False, add_eos=False)


@torch.no_grad()
def direct_logprob(model, tokens, n):
    """Sum of log p(token) over the last ``n`` tokens of ``tokens``, and whether each is the argmax."""
    logits = model(torch.tensor([tokens[:-1]]))[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    total, greedy = 0.0, True
    for position in range(len(tokens) - 1 - n, len(tokens) - 1):
        target = tokens[position + 1]
        total += float(logp[position, target])
        greedy &= int(logp[position].argmax()) == target
    return total, greedy


@torch.no_grad()
def direct_greedy(model, prompt, max_new_tokens, stop_ids):
    """Token-by-token argmax over the whole sequence each step."""
    tokens, out = list(prompt), []
    for _ in range(max_new_tokens):
        token = int(model(torch.tensor([tokens]))[0, -1].argmax())
        if token in stop_ids:
            break
        out.append(token)
        tokens.append(token)
    return out


def cut(text, stops):
    for stop in stops:
        text = text.split(stop)[0]
    return text
