"""Qwen3 dense models (0.6B to 32B) on torchtune 0.6.1's modules, and their HF checkpoints.

torchtune 0.6.1 has no Qwen3. The architecture is Qwen2's (GQA, SwiGLU, RMSNorm, RoPE
with rotated halves, base 1e6) with three changes: no bias on q/k/v, a head dim of 128
whatever the width (so ``num_heads * head_dim`` need not equal ``embed_dim``), and an
RMSNorm over each head of q and of k *before* RoPE. torchtune 0.6.1's
``MultiHeadAttention`` applies its own ``q_norm``/``k_norm`` *after* RoPE, which differs
(RoPE mixes pairs of dimensions that the norm scales differently), so here the per-head
norm sits inside the q and k projections (:class:`HeadNormLinear`): the projection's
output is normalised per head before ``MultiHeadAttention`` reshapes it and rotates it.

Parameter names: ``attn.q_proj.weight`` (a plain linear weight) and
``attn.q_proj.norm.scale`` for HF's ``self_attn.q_norm.weight``; likewise for k.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torchtune.data import Message
from torchtune.models.convert_weights import get_mapped_key
from torchtune.models.qwen2._component_builders import qwen2_mlp
from torchtune.models.qwen2._positional_embeddings import Qwen2RotaryPositionalEmbeddings
from torchtune.modules import MultiHeadAttention, RMSNorm, TiedLinear, TransformerDecoder, TransformerSelfAttentionLayer
from torchtune.training import FullModelHFCheckpointer

from focusft.data.messages import CHAT_CONTROL_TOKENS, ConversationError, check_text, to_torchtune_messages

# Qwen3's added tokens in id order (ids follow the BPE vocabulary: 151643.. in the real models).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
# Added tokens that Qwen3's tokenizer.json marks "special": false (kept by decode(skip_special_tokens=True)).
NON_SPECIAL_TOKENS = frozenset(SPECIAL_TOKENS[14:])


class HeadNormLinear(nn.Linear):
    """A bias-free projection, RMS-normalised per head: ``norm(x Wᵀ)`` over ``[..., heads, head_dim]``."""

    def __init__(self, in_features: int, num_heads: int, head_dim: int, eps: float):
        super().__init__(in_features, num_heads * head_dim, bias=False)
        self.head_dim = head_dim
        self.norm = RMSNorm(dim=head_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return self.norm(y.unflatten(-1, (-1, self.head_dim))).flatten(-2)


def qwen3(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int = 128,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-6,
    rope_base: float = 1_000_000.0,
    tie_word_embeddings: bool = False,
) -> TransformerDecoder:
    """A Qwen3 dense decoder (random init) with the dimensions of HF's ``Qwen3Config``."""
    rope = Qwen2RotaryPositionalEmbeddings(dim=head_dim, max_seq_len=max_seq_len, base=rope_base)
    layers = nn.ModuleList()
    for _ in range(num_layers):
        attn = MultiHeadAttention(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            q_proj=HeadNormLinear(embed_dim, num_heads, head_dim, norm_eps),
            k_proj=HeadNormLinear(embed_dim, num_kv_heads, head_dim, norm_eps),
            v_proj=nn.Linear(embed_dim, num_kv_heads * head_dim, bias=False),
            output_proj=nn.Linear(num_heads * head_dim, embed_dim, bias=False),
            pos_embeddings=rope,
            max_seq_len=max_seq_len,
            attn_dropout=attn_dropout,
        )
        layers.append(
            TransformerSelfAttentionLayer(
                attn=attn,
                mlp=qwen2_mlp(dim=embed_dim, hidden_dim=intermediate_dim),
                sa_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
                mlp_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
            )
        )
    tok_embeddings = nn.Embedding(vocab_size, embed_dim)
    output = TiedLinear(tok_embeddings) if tie_word_embeddings else nn.Linear(embed_dim, vocab_size, bias=False)
    return TransformerDecoder(
        tok_embeddings=tok_embeddings,
        layers=layers,
        max_seq_len=max_seq_len,
        num_heads=num_heads,
        head_dim=head_dim,
        norm=RMSNorm(embed_dim, eps=norm_eps),
        output=output,
    )


# Sizes of the released dense models (their config.json): layers, heads, kv heads, width, FFN width, tied.
_SIZES: dict[str, tuple[int, int, int, int, int, bool]] = {
    "0.6b": (28, 16, 8, 1024, 3072, True),
    "1.7b": (28, 16, 8, 2048, 6144, True),
    "4b": (36, 32, 8, 2560, 9728, True),
    "8b": (36, 32, 8, 4096, 12288, False),
    "14b": (40, 40, 8, 5120, 17408, False),
    "32b": (64, 64, 8, 5120, 25600, False),
}
VOCAB_SIZE = 151936
MAX_SEQ_LEN = 40960


def _released(size: str) -> TransformerDecoder:
    num_layers, num_heads, num_kv_heads, embed_dim, intermediate_dim, tied = _SIZES[size]
    return qwen3(
        vocab_size=VOCAB_SIZE,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        embed_dim=embed_dim,
        intermediate_dim=intermediate_dim,
        max_seq_len=MAX_SEQ_LEN,
        tie_word_embeddings=tied,
    )


def qwen3_0_6b() -> TransformerDecoder:
    """Qwen3-0.6B (and -Base)."""
    return _released("0.6b")


def qwen3_1_7b() -> TransformerDecoder:
    """Qwen3-1.7B (and -Base)."""
    return _released("1.7b")


def qwen3_4b() -> TransformerDecoder:
    """Qwen3-4B (and -Base)."""
    return _released("4b")


def qwen3_8b() -> TransformerDecoder:
    """Qwen3-8B (and -Base)."""
    return _released("8b")


def qwen3_14b() -> TransformerDecoder:
    """Qwen3-14B (and -Base)."""
    return _released("14b")


def qwen3_32b() -> TransformerDecoder:
    """Qwen3-32B."""
    return _released("32b")


# HF parameter names -> this module's (layer index as {}); rotary inv_freq buffers are dropped.
_FROM_HF: dict[str, str | None] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attn.q_proj.weight",
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.attn.q_proj.norm.scale",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attn.k_proj.weight",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.attn.k_proj.norm.scale",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attn.v_proj.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attn.output_proj.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.mlp.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.mlp.w2.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.sa_norm.scale",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.mlp_norm.scale",
    "model.norm.weight": "norm.scale",
    "lm_head.weight": "output.weight",
}
_TO_HF = {tune: hf for hf, tune in _FROM_HF.items() if tune is not None}


def qwen3_hf_to_tune(
    state_dict: dict[str, torch.Tensor], *, tie_word_embeddings: bool = False, **_: object
) -> dict[str, torch.Tensor]:
    """HF Qwen3 weights -> :func:`qwen3`'s names (no tensor changes: HF and torchtune rotate the same halves)."""
    converted = {}
    for key, value in state_dict.items():
        if "rotary_emb.inv_freq" in key or (tie_word_embeddings and key == "lm_head.weight"):
            continue
        converted[get_mapped_key(key, _FROM_HF)] = value
    return converted


def qwen3_tune_to_hf(state_dict: dict[str, torch.Tensor], **_: object) -> dict[str, torch.Tensor]:
    """:func:`qwen3`'s weights -> HF Qwen3 names (a tied model has no ``output.weight`` to write)."""
    return {get_mapped_key(key, _TO_HF): value for key, value in state_dict.items()}


@contextmanager
def _qwen3_conversion() -> Iterator[None]:
    """Run torchtune's QWEN2 checkpoint path with the Qwen3 converters in place of Qwen2's.

    ``FullModelHFCheckpointer`` imports ``qwen2_hf_to_tune``/``qwen2_tune_to_hf`` from their
    module when it loads or saves a QWEN2 checkpoint, so swapping them for the call reuses its
    file handling (shards, index, config and tokenizer copies) unchanged.
    """
    from torchtune.models.qwen2 import _convert_weights as qwen2_convert

    saved = qwen2_convert.qwen2_hf_to_tune, qwen2_convert.qwen2_tune_to_hf
    qwen2_convert.qwen2_hf_to_tune, qwen2_convert.qwen2_tune_to_hf = qwen3_hf_to_tune, qwen3_tune_to_hf
    try:
        yield
    finally:
        qwen2_convert.qwen2_hf_to_tune, qwen2_convert.qwen2_tune_to_hf = saved


class Qwen3HFCheckpointer(FullModelHFCheckpointer):
    """torchtune's ``FullModelHFCheckpointer`` for Qwen3 HF checkpoints (``model_type: QWEN3``)."""

    def __init__(self, checkpoint_dir: str, checkpoint_files, model_type: str = "QWEN3", **kwargs) -> None:
        if model_type != "QWEN3":
            raise ValueError(f"Qwen3HFCheckpointer reads Qwen3 checkpoints (model_type QWEN3), not {model_type!r}.")
        super().__init__(checkpoint_dir, checkpoint_files, model_type="QWEN2", **kwargs)

    def load_checkpoint(self) -> dict:
        with _qwen3_conversion():
            return super().load_checkpoint()

    def save_checkpoint(self, state_dict: dict, epoch: int, **kwargs) -> None:
        with _qwen3_conversion():
            super().save_checkpoint(state_dict, epoch, **kwargs)


_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\n</tool_call>"
)


def qwen3_messages(
    turns: Sequence[Any],
    tools: list[Any] | None = None,
    forbidden_tokens: Collection[str] = CHAT_CONTROL_TOKENS,
    default_system_prompt: str | None = None,
) -> list[Message]:
    """Validated OpenAI-style turns -> messages whose text is what Qwen3's chat template writes.

    Qwen3's template (tests/fixtures/qwen3_chat_template.jinja) renders turns, tool calls and
    tool outputs as Qwen2.5's does (:func:`focusft.data.messages.to_torchtune_messages`), except:
    no default system prompt (``default_system_prompt``, default none, is the system text of a
    conversation without one); with tools, the system turn is the system text, a blank line and
    the tools block, or the tools block alone; and an assistant turn after the last user message
    starts with ``<think>\\nREASONING\\n</think>\\n\\n`` (its ``reasoning_content`` stripped of
    line breaks, its content of leading ones) when it is the final turn or has reasoning. Earlier
    turns lose their reasoning, as the template drops it from the history.
    """
    for index, turn in enumerate(turns):
        reasoning = turn.get("reasoning_content") if isinstance(turn, Mapping) else None
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise ConversationError(f"message {index} has non-string reasoning_content {reasoning!r:.80}")
            check_text(reasoning, f"message {index} reasoning_content", forbidden_tokens)
    messages = to_torchtune_messages(turns, None, forbidden_tokens, None)
    last_query = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages) - 1)
    for index, (turn, message) in enumerate(zip(turns, messages)):
        reasoning = turn.get("reasoning_content") or ""
        if message.role != "assistant" or index <= last_query or not (reasoning or index == len(messages) - 1):
            continue
        content = turn.get("content") or ""
        calls = message.text_content[len(content) :]
        thought = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n"
        messages[index] = Message(role="assistant", content=thought + content.lstrip("\n") + calls, masked=False)
    if messages[0].role != "system" and default_system_prompt is not None:
        messages.insert(0, Message(role="system", content=default_system_prompt, masked=True))
    if tools:
        for number, tool in enumerate(tools):
            check_text(json.dumps(tool, ensure_ascii=False), f"tools schema {number}", forbidden_tokens)
        block = _TOOLS_HEADER + "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools) + TOOLS_FOOTER
        if messages[0].role == "system":
            messages[0] = Message(role="system", content=messages[0].text_content + "\n\n" + block, masked=True)
        else:
            messages.insert(0, Message(role="system", content=block, masked=True))
    return messages
