"""The offline suite: lm-eval tasks over this project's synthetic long-context data (no network).

Each task is one synthetic task (BABILong-style ``qa1`` .. ``qa5``, agentic ``tool``)
at one length, generated on load from a fixed seed with the data issue's generator
(``split="eval"``: entities never seen in training). Nothing is shipped or cached:
generation is fast and deterministic, so the YAMLs stay small and the data cannot
drift from the generator. Lengths are the generator's approximate Qwen2.5 token
counts (4 characters per token), the same for every model compared.

The prompt is the conversation up to the final answer in the exact Qwen2.5 chat
format training uses (:func:`focusft.data.tokenize.tokenize_conversation`, tool turns
included), ending with the assistant header, so run these tasks *without*
``--apply_chat_template``. Generation stops at ``<|im_end|>``, the end of an assistant turn.
"""

from __future__ import annotations

import string
import tempfile
from functools import cache
from typing import Any

import datasets
from torchtune.models.qwen2_5._tokenizer import Qwen2_5Tokenizer

from focusft.data.messages import to_torchtune_messages
from focusft.data.synthetic import SYNTHETIC_TASKS, generate_samples
from focusft.data.tokenize import tokenize_conversation
from focusft.tiny import load_tiny_tokenizer, write_tiny_tokenizer

# Length label -> generator target_tokens. 512..2k keep CPU tests and CI fast; 4k..16k are for real models.
OFFLINE_LENGTHS: dict[str, int] = {"512": 512, "1k": 1024, "2k": 2048, "4k": 4096, "8k": 8192, "16k": 16384}
OFFLINE_TASKS: tuple[str, ...] = SYNTHETIC_TASKS
DEFAULT_NUM_SAMPLES = 100
DEFAULT_SEED = 0
_STRIP = string.whitespace + string.punctuation


def offline_task_name(task: str, length: str) -> str:
    return f"focusft_{task}_{length}"


@cache
def _renderer() -> Qwen2_5Tokenizer:
    """A byte-level Qwen2.5 tokenizer used only to spell out the chat format: its decode is lossless."""
    return load_tiny_tokenizer(write_tiny_tokenizer(tempfile.mkdtemp(prefix="focusft-renderer-")))


def render_prompt(messages: list[dict[str, Any]]) -> str:
    """Text of ``messages`` minus the final assistant answer, ending with ``<|im_start|>assistant\\n``.

    Built from the training tokenization of the conversation, so the prompt is the
    training format token for token (no second copy of the chat template).
    """
    tokenizer = _renderer()
    conversation = tokenize_conversation(to_torchtune_messages(messages), tokenizer)
    header = [tokenizer.im_start_id, *tokenizer.encode("assistant\n", add_bos=False, add_eos=False)]
    answer_start = conversation.spans[-1][0] + len(header)
    return tokenizer.decode(conversation.tokens[:answer_start], skip_special_tokens=False)


def build_dataset(
    synthetic_task: str,
    target_tokens: int,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = DEFAULT_SEED,
    **_: Any,
) -> dict[str, datasets.Dataset]:
    """lm-eval ``custom_dataset`` hook; lm-eval also passes the run's metadata and model args (ignored).

    ``num_samples`` and ``seed`` can be set with ``--metadata '{"num_samples": 20}'``.
    """
    rows = [
        {
            "prompt": render_prompt(sample["messages"]),
            "answer": sample["answer"],
            "task": synthetic_task,
            "target_tokens": target_tokens,
        }
        for sample in generate_samples(
            synthetic_task, num_samples=int(num_samples), target_tokens=int(target_tokens), split="eval", seed=int(seed)
        )
    ]
    return {"test": datasets.Dataset.from_list(rows)}


def normalize_answer(text: str) -> str:
    """Case, surrounding whitespace and punctuation do not count ("Porch." matches "porch")."""
    return text.strip(_STRIP).lower()


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the generated answer (cut at the stop sequence by the model) against the answer."""
    return {"exact_match": float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))}
