"""The model families this project trains, and what the data, checkpoint and eval code asks of each.

One :class:`ModelFamily` per family (Qwen2.5, Qwen3, Llama 3.1/3.2): its chat format (messages
and tokens exactly as its official chat template renders them), the end-of-turn token that
saved checkpoints stop generation at, and the ``config.json`` model type of its checkpoints.
Code that depends on the family asks :func:`family_for_tokenizer` or :func:`get_family`
instead of branching on it. The fast weights need nothing per family: every builder here
uses torchtune's ``FeedForward`` (``w1`` gate, ``w3`` up, ``w2`` down), the one mapping in
:data:`focusft.fast_weights.FFN_PROJECTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchtune.data import Message
from torchtune.models.llama3_2._component_builders import llama3_2
from torchtune.models.qwen2 import qwen2
from torchtune.models.qwen2_5 import qwen2_5_tokenizer
from torchtune.models.qwen2_5._tokenizer import Qwen2_5Tokenizer
from torchtune.modules import TransformerDecoder
from torchtune.training import FullModelHFCheckpointer

from focusft.data.messages import (
    CHAT_CONTROL_TOKENS,
    FAMILY_DEFAULT_SYSTEM,
    QWEN_DEFAULT_SYSTEM,
    openai_to_messages,
    sharegpt_to_messages,
    to_torchtune_messages,
)
from focusft.data.tokenize import TokenizedConversation, tokenize_conversation
from focusft.models.llama3 import encode_text as llama3_encode_text
from focusft.models.llama3 import (
    llama3_messages,
    llama3_tokenizer,
    llama3_turn_headers,
    tokenize_llama3_conversation,
    tokenizer_files,
)
from focusft.models.qwen3 import Qwen3HFCheckpointer, qwen3_messages
from focusft.models.qwen3 import qwen3 as qwen3_decoder  # the name qwen3 is the submodule's


@dataclass(frozen=True)
class ModelFamily:
    """What differs between model families; see the module docstring."""

    name: str
    hf_model_type: str  # config.json "model_type" of its checkpoints
    marker_tokens: tuple[str, ...]  # special tokens whose presence identifies the family's tokenizer
    to_messages: Callable[..., list[Message]]  # (turns, tools, forbidden_tokens, default_system_prompt)
    tokenize: Callable[..., TokenizedConversation]  # (messages, tokenizer, *, train_on_assistant_header)
    default_system_prompt: str | None  # system text of a conversation without one, as the template adds it
    turn_end: str  # closes every assistant turn: the eos of a fine-tuned checkpoint
    stop_tokens: tuple[str, ...]  # generation_config.json eos ids: turn_end, end of text, others
    # tokenizer -> (token that opens every turn, [(header tokens, "prompt" | "tool" | "response")], longest first)
    turn_headers: Callable[[Any], tuple[int, list[tuple[list[int], str]]]]
    encode_text: Callable[[Any, str], list[int]]  # (tokenizer, text with special tokens written out) -> ids
    # Reading its HF checkpoints (focusft.eval.checkpoint): tokenizer files, checkpointer, builder, tokenizer.
    tokenizer_files: tuple[str, ...]
    checkpointer: tuple[type, str]  # torchtune HF checkpointer class and its model_type
    build: Callable[..., TransformerDecoder]  # HF config dimensions (see ModelDims) -> decoder, random init
    load_tokenizer: Callable[[Path, str], Any]  # (tokenizer directory, eos token) -> torchtune tokenizer
    any_head_dim: bool = False  # head_dim may differ from hidden_size / num_heads (Qwen3)

    def render_messages(
        self, row: Mapping[str, Any], tokenizer: object, conversation_format: str = "openai"
    ) -> TokenizedConversation:
        """A training row (``openai`` messages or ``sharegpt`` conversations) tokenized as training does."""
        to_messages = openai_to_messages if conversation_format == "openai" else sharegpt_to_messages
        messages = to_messages(row, default_system_prompt=self.default_system_prompt, convert=self.to_messages)
        return self.tokenize(messages, tokenizer)

    def render(
        self,
        turns: list,
        tokenizer: object,
        *,
        tools: list | None = None,
        forbidden_tokens: Collection[str] = CHAT_CONTROL_TOKENS,
        default_system_prompt: str | None | object = FAMILY_DEFAULT_SYSTEM,
        train_on_assistant_header: bool = False,
    ) -> TokenizedConversation:
        """OpenAI-style turns -> tokens and context flags, as the family's chat template renders them."""
        system = self.default_system_prompt if default_system_prompt is FAMILY_DEFAULT_SYSTEM else default_system_prompt
        messages = self.to_messages(turns, tools, forbidden_tokens, system)
        return self.tokenize(messages, tokenizer, train_on_assistant_header=train_on_assistant_header)


@dataclass(frozen=True)
class ModelDims:
    """The dimensions a family's builder takes, read from an HF ``config.json``."""

    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_seq_len: int
    head_dim: int
    norm_eps: float
    rope_base: float
    rope_factor: float  # Llama 3's RoPE scale factor (1.0 elsewhere)
    tie_word_embeddings: bool


def _shared(d: ModelDims) -> dict[str, Any]:
    """The arguments every family's builder takes."""
    names = ("vocab_size", "num_layers", "num_heads", "num_kv_heads", "embed_dim", "intermediate_dim")
    names += ("max_seq_len", "norm_eps", "rope_base", "tie_word_embeddings")
    return {name: getattr(d, name) for name in names}


def _qwen2_5_build(d: ModelDims) -> TransformerDecoder:
    return qwen2(**_shared(d))


def _qwen3_build(d: ModelDims) -> TransformerDecoder:
    return qwen3_decoder(**_shared(d), head_dim=d.head_dim)


def _llama3_build(d: ModelDims) -> TransformerDecoder:
    """torchtune's Llama 3.2 component builder: Llama 3.1 too (same layers, RoPE scale factor 8, untied)."""
    return llama3_2(**_shared(d), scale_factor=d.rope_factor)


def _qwen_tokenizer(directory: Path, eos_token: str) -> Qwen2_5Tokenizer:
    return qwen2_5_tokenizer(
        path=str(directory / "vocab.json"),
        merges_file=str(directory / "merges.txt"),
        special_tokens_path=str(directory / "tokenizer.json"),
        eos_token=eos_token,
    )


def _llama3_tokenizer(directory: Path, eos_token: str) -> Any:
    return llama3_tokenizer(**tokenizer_files(directory))


QWEN_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json")


def qwen_encode_text(tokenizer: Any, text: str) -> list[int]:
    """torchtune's Qwen2.5 tokenizer already splits text at the special tokens written in it."""
    return tokenizer.encode(text, add_bos=False, add_eos=False)


def qwen_turn_headers(tokenizer: Any) -> tuple[int, list[tuple[list[int], str]]]:
    """Qwen2.5 and Qwen3: ``<|im_start|>ROLE\\n``; a tool output is a user turn opening with ``<tool_response>``."""

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_bos=False, add_eos=False)

    start = tokenizer.im_start_id
    return start, [
        ([start, *encode("user\n"), *encode("<tool_response>\n")], "tool"),
        ([start, *encode("assistant\n")], "response"),
        ([start, *encode("user\n")], "prompt"),
        ([start, *encode("system\n")], "prompt"),
    ]


FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        # Checked in this order: the first whose markers the tokenizer has.
        ModelFamily(
            name="llama3",
            hf_model_type="llama",
            marker_tokens=("<|start_header_id|>", "<|eot_id|>"),
            to_messages=llama3_messages,
            tokenize=tokenize_llama3_conversation,
            default_system_prompt=None,
            turn_end="<|eot_id|>",
            stop_tokens=("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"),
            turn_headers=llama3_turn_headers,
            encode_text=llama3_encode_text,
            tokenizer_files=("tokenizer.model", "tokenizer.json"),
            checkpointer=(FullModelHFCheckpointer, "LLAMA3"),
            build=_llama3_build,
            load_tokenizer=_llama3_tokenizer,
        ),
        ModelFamily(
            name="qwen3",
            hf_model_type="qwen3",
            marker_tokens=("<|im_start|>", "<|im_end|>", "<think>"),
            to_messages=qwen3_messages,
            tokenize=tokenize_conversation,
            default_system_prompt=None,
            turn_end="<|im_end|>",
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            turn_headers=qwen_turn_headers,
            encode_text=qwen_encode_text,
            tokenizer_files=QWEN_TOKENIZER_FILES,
            checkpointer=(Qwen3HFCheckpointer, "QWEN3"),
            build=_qwen3_build,
            load_tokenizer=_qwen_tokenizer,
            any_head_dim=True,
        ),
        ModelFamily(
            name="qwen2_5",
            hf_model_type="qwen2",
            marker_tokens=("<|im_start|>", "<|im_end|>"),
            to_messages=to_torchtune_messages,
            tokenize=tokenize_conversation,
            default_system_prompt=QWEN_DEFAULT_SYSTEM,
            turn_end="<|im_end|>",
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            turn_headers=qwen_turn_headers,
            encode_text=qwen_encode_text,
            tokenizer_files=QWEN_TOKENIZER_FILES,
            checkpointer=(FullModelHFCheckpointer, "QWEN2"),
            build=_qwen2_5_build,
            load_tokenizer=_qwen_tokenizer,
        ),
    )
}


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; raises ``ValueError`` naming the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"Unknown model family {name!r}; expected one of {sorted(FAMILIES)}.")
    return FAMILIES[name]


def family_for_special_tokens(tokens: Collection[str]) -> ModelFamily:
    """The family whose marker tokens are all in ``tokens`` (a tokenizer's special tokens)."""
    for family in FAMILIES.values():
        if all(token in tokens for token in family.marker_tokens):
            return family
    raise ValueError(
        "The tokenizer's special tokens match no model family: "
        + "; ".join(f"{family.name} needs {list(family.marker_tokens)}" for family in FAMILIES.values())
        + "."
    )


def family_for_model_type(model_type: object) -> ModelFamily:
    """The family of a checkpoint's ``config.json`` ``model_type``; raises ``ValueError`` naming the known ones."""
    for family in FAMILIES.values():
        if family.hf_model_type == model_type:
            return family
    raise ValueError(f"model_type {model_type!r} is none of {sorted(f.hf_model_type for f in FAMILIES.values())}")


def family_for_tokenizer(tokenizer: object) -> ModelFamily:
    """The family of a torchtune tokenizer, from its ``special_tokens``."""
    return family_for_special_tokens(getattr(tokenizer, "special_tokens", {}) or {})
