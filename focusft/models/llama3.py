"""Llama 3.1 / 3.2 (text): torchtune's own builders and checkpointer; tokenizer and chat format here.

Models: ``torchtune.models.llama3_1.llama3_1_8b`` / ``llama3_1_70b`` (checkpointer model type
``LLAMA3``) and ``torchtune.models.llama3_2.llama3_2_1b`` / ``llama3_2_3b`` (``LLAMA3_2``,
tied embeddings); their logits equal transformers' ``LlamaForCausalLM`` (tests/test_models.py).

Chat format: Llama 3.1-Instruct's template (tests/fixtures/llama3_1_instruct_chat_template.jinja),
with its defaults (``tools_in_user_message``, ``date_string`` "26 Jul 2024", no builtin tools):

- ``<|begin_of_text|>``, then every turn ``<|start_header_id|>ROLE<|end_header_id|>\\n\\nBODY<|eot_id|>``
  with no separator between turns;
- the system turn always exists: ``Environment: ipython\\n`` (with tools), ``Cutting Knowledge
  Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n``, then the system message, trimmed;
- tools go into the first user turn: the template's instruction, each schema as
  ``json.dumps(schema, indent=4)`` followed by a blank line, then the user's text, trimmed;
- user, system and assistant text is trimmed (Jinja's ``trim``);
- an assistant tool call is ``{"name": NAME, "parameters": ARGS}`` (its content is dropped),
  one call per message (the template raises on more: a :class:`ConversationError` here);
- a tool output is an ``ipython`` turn holding the output *as a JSON string* (the template's
  ``content is iterable`` holds for strings, so ``tojson`` quotes them).

Trained (``context == False``): an assistant body and its ``<|eot_id|>``. The assistant header
``<|start_header_id|>assistant<|end_header_id|>\\n\\n`` is context unless
``train_on_assistant_header``; it is encoded on its own, as a prompt ends before generation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from torchtune.data import Message
from torchtune.models.llama3._tokenizer import CL100K_PATTERN, Llama3Tokenizer
from torchtune.modules.transforms.tokenizers import parse_hf_tokenizer_json

from focusft.data.messages import CHAT_CONTROL_TOKENS, ConversationError, check_text, to_torchtune_messages
from focusft.data.tokenize import TokenizedConversation

# The added tokens of Llama 3.1's tokenizer.json, in id order (128000.. in the real models).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(3, 248)),
)
PRETOKENIZE_REGEX = CL100K_PATTERN
# torchtune's Llama3Tokenizer looks these up; Llama 3.1's tokenizer.json does not name them.
_TORCHTUNE_ONLY = ("<|step_id|>", "<|image|>")

KNOWLEDGE_DATE = "Cutting Knowledge Date: December 2023\n"
TODAY = "Today Date: 26 Jul 2024\n\n"
_TOOLS_PROMPT = (
    "Given the following functions, please respond with a JSON for a function call "
    "with its proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)


def llama3_tokenizer(
    path: str, special_tokens_path: str | None = None, max_seq_len: int | None = None
) -> Llama3Tokenizer:
    """torchtune's Llama 3 tokenizer over ``tokenizer.model`` (tiktoken ranks).

    ``special_tokens_path`` (a ``tokenizer.json``) gives the special-token ids, for a tokenizer
    whose base vocabulary is not Llama 3's 128000 ranks (the tiny model's); torchtune's
    ``<|step_id|>`` and ``<|image|>``, absent from Llama 3.1's file, get ids past the vocabulary.
    Without it, torchtune's defaults apply (right for the released models).
    """
    special_tokens = None
    if special_tokens_path is not None:
        special_tokens = parse_hf_tokenizer_json(special_tokens_path)
        next_id = max(special_tokens.values()) + 1
        for token in _TORCHTUNE_ONLY:
            if token not in special_tokens:
                special_tokens[token], next_id = next_id, next_id + 1
    return Llama3Tokenizer(path, special_tokens=special_tokens, max_seq_len=max_seq_len)


def llama3_messages(
    turns: Sequence[Any],
    tools: list[Any] | None = None,
    forbidden_tokens: Collection[str] = CHAT_CONTROL_TOKENS,
    default_system_prompt: str | None = None,
) -> list[Message]:
    """Validated OpenAI-style turns -> one :class:`Message` per Llama 3.1 turn, bodies as the template writes them.

    ``default_system_prompt`` is the system text of a conversation without a system message
    (after the template's date lines; ``None``: none).
    """
    # The shared checks (roles, text, tool-call structure, ends with an assistant turn).
    to_torchtune_messages(turns, None, forbidden_tokens, None)
    if tools:
        for number, tool in enumerate(tools):
            check_text(json.dumps(tool, ensure_ascii=False), f"tools schema {number}", forbidden_tokens)
    rest = list(turns)
    system_text = (default_system_prompt or "").strip()
    if rest[0]["role"] == "system":
        system_text, rest = rest[0]["content"].strip(), rest[1:]
    header = ("Environment: ipython\n" if tools else "") + KNOWLEDGE_DATE + TODAY
    messages = [Message(role="system", content=header + system_text, masked=True)]
    if tools:
        if rest[0]["role"] != "user":
            raise ConversationError(
                "with tools, Llama 3.1's template puts them into the first user message, but message "
                f"{len(turns) - len(rest)} is a {rest[0]['role']} message"
            )
        schemas = "".join(json.dumps(tool, ensure_ascii=False, indent=4) + "\n\n" for tool in tools)
        messages.append(Message(role="user", content=_TOOLS_PROMPT + schemas + rest[0]["content"].strip(), masked=True))
        rest = rest[1:]
    for offset, turn in enumerate(rest):
        index = len(turns) - len(rest) + offset
        role, calls = turn["role"], turn.get("tool_calls") if turn["role"] == "assistant" else None
        if role == "tool":
            output = json.dumps(turn["content"], ensure_ascii=False)
            messages.append(Message(role="ipython", content=output, masked=True))
        elif calls:
            if len(calls) != 1:
                raise ConversationError(
                    f"message {index} (assistant) makes {len(calls)} tool calls; "
                    "Llama 3.1's template allows one per message"
                )
            name, arguments = _call(calls[0])
            body = f'{{"name": "{name}", "parameters": {json.dumps(arguments, ensure_ascii=False)}}}'
            messages.append(Message(role="assistant", content=body, masked=False))
        else:
            messages.append(Message(role=role, content=turn["content"].strip(), masked=role != "assistant"))
    return messages


def _call(call: Mapping[str, Any]) -> tuple[str, Any]:
    """Name and arguments (an OpenAI arguments string parsed) of a call the shared checks accepted."""
    function = call.get("function") if call.get("function") is not None else call
    arguments = function["arguments"]
    return function["name"], json.loads(arguments) if isinstance(arguments, str) else arguments


def tokenize_llama3_conversation(
    messages: list[Message], tokenizer: Llama3Tokenizer, *, train_on_assistant_header: bool = False
) -> TokenizedConversation:
    """Tokens and context flags of :func:`llama3_messages`' output (``<|begin_of_text|>`` in the first turn)."""

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_bos=False, add_eos=False)

    tokens: list[int] = [tokenizer.bos_id]
    context: list[bool] = [True]
    spans: list[tuple[int, int]] = []
    for message in messages:
        start = 0 if not spans else len(tokens)
        header = [tokenizer.start_header_id, *encode(message.role), tokenizer.end_header_id]
        if message.role == "assistant":
            header += encode("\n\n")
            body = [*encode(message.text_content), tokenizer.eot_id]
            tokens += header + body
            context += [not train_on_assistant_header] * len(header) + [False] * len(body)
        else:
            tokens += [*header, *encode("\n\n" + message.text_content), tokenizer.eot_id]
            context += [True] * (len(tokens) - len(context))
        spans.append((start, len(tokens)))
    return TokenizedConversation(tokens=tokens, context=context, spans=spans, roles=[m.role for m in messages])


def encode_text(tokenizer: Llama3Tokenizer, text: str) -> list[int]:
    """Ids of ``text`` in which special tokens are written out (a rendered chat template), specials as themselves.

    torchtune's tiktoken ``encode`` reads ``<|eot_id|>`` in text as plain characters; HF's
    tokenizer splits the text at its added tokens first and encodes the pieces: done here too.
    """
    specials = tokenizer.special_tokens
    pattern = "(" + "|".join(re.escape(token) for token in sorted(specials, key=len, reverse=True)) + ")"
    ids: list[int] = []
    for piece in re.split(pattern, text):
        if piece in specials:
            ids.append(specials[piece])
        elif piece:
            ids += tokenizer.encode(piece, add_bos=False, add_eos=False)
    return ids


def llama3_turn_headers(tokenizer: Llama3Tokenizer) -> tuple[int, list[tuple[list[int], str]]]:
    """``<|start_header_id|>ROLE<|end_header_id|>``: ``ipython`` turns are tool outputs."""

    def header(role: str) -> list[int]:
        return [
            tokenizer.start_header_id,
            *tokenizer.encode(role, add_bos=False, add_eos=False),
            tokenizer.end_header_id,
        ]

    kinds = {"ipython": "tool", "assistant": "response", "user": "prompt", "system": "prompt"}
    return tokenizer.start_header_id, [(header(role), kind) for role, kind in kinds.items()]


def tokenizer_files(directory: Path) -> dict[str, str]:
    """``llama3_tokenizer`` arguments for a checkpoint directory (tiktoken ranks in ``tokenizer.model``)."""
    return {"path": str(directory / "tokenizer.model"), "special_tokens_path": str(directory / "tokenizer.json")}
