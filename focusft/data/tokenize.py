"""Messages -> tokens with a per-token context flag, exactly as Qwen2.5-Instruct's chat template.

The tokens equal ``AutoTokenizer.apply_chat_template(conversation, tools=...)`` with
Qwen2.5-Instruct's template (tests/fixtures/qwen2_5_instruct_chat_template.jinja; the
test renders it with transformers), minus the template's final ``\\n`` after the last
``<|im_end|>``, which nothing learns from. The one deliberate difference: an assistant
message is tokenized after its header ``<|im_start|>assistant\\n`` as the model generates
it, so content that starts with a line break (possibly after spaces) is not merged with
the header's ``\\n`` as the template's text would be.

torchtune's ``Qwen2_5Tokenizer.tokenize_messages`` is not used: it encodes each message's
header, content and footer as separate strings, and byte-level BPE merges across those
joints in the template's single string (for example ``>`` + ``\\n`` between two
``</tool_response>``/``<tool_response>`` pieces, or ``}`` + ``\\n`` after a tool-call's
JSON), so its tokens can differ from what the template gives at inference. Here each
turn's text between ``<|im_start|>`` and ``<|im_end|>`` is encoded as one string; these
special tokens split the text the same way in the HF tokenizer.

What is trained on (``context == False``): an assistant message's content (tool-call JSON
and its ``<tool_call>`` tokens included) and the ``<|im_end|>`` that closes it, so the model
learns to stop (Qwen's own SFT practice; for the final message this is the eos). Context:
everything else, i.e. system, user and tool turns with their template tokens, the newline
after an assistant's ``<|im_end|>`` (template glue the model never generates) and, unless
``train_on_assistant_header``, ``<|im_start|>assistant\\n``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchtune.data import Message
from torchtune.models.qwen2_5._tokenizer import Qwen2_5Tokenizer

from focusft.split_decoder import IGNORE_INDEX


@dataclass(frozen=True)
class TokenizedConversation:
    """Tokens and context flags of one conversation, with each turn's token span.

    A turn is one message, except that consecutive tool outputs (``ipython``) share one
    user turn, as in the template.
    """

    tokens: list[int]
    context: list[bool]
    spans: list[tuple[int, int]]  # [start, end) of each turn, the final eos in the last one
    roles: list[str]  # torchtune role of each turn (tool outputs are "ipython")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_trained(self) -> int:
        return len(self.context) - sum(self.context)

    def as_sample(self) -> dict[str, list]:
        """The sample ``collate_focus_batch`` takes: unshifted labels, ``IGNORE_INDEX`` on context."""
        labels = [IGNORE_INDEX if c else t for t, c in zip(self.tokens, self.context)]
        return {"tokens": list(self.tokens), "labels": labels, "context": list(self.context)}


def tokenize_conversation(
    messages: list[Message], tokenizer: Qwen2_5Tokenizer, *, train_on_assistant_header: bool = False
) -> TokenizedConversation:
    """Tokenize a whole conversation (never truncated here) and flag its context tokens."""

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_bos=False, add_eos=False)

    turns: list[list[Message]] = []
    for message in messages:
        if message.role == "ipython" and turns and turns[-1][0].role == "ipython":
            turns[-1].append(message)
        else:
            turns.append([message])

    tokens: list[int] = []
    context: list[bool] = []
    spans: list[tuple[int, int]] = []
    for index, turn in enumerate(turns):
        start, role = len(tokens), turn[0].role
        if role == "assistant":
            header = [tokenizer.im_start_id, *encode("assistant\n")]
            tokens += header
            context += [not train_on_assistant_header] * len(header)
            body = [*encode(turn[0].text_content), tokenizer.im_end_id]
            tokens += body
            context += [False] * len(body)
        else:
            if role == "ipython":
                text = "user" + "".join(f"\n<tool_response>\n{m.text_content}\n</tool_response>" for m in turn)
            else:
                text = f"{role}\n{turn[0].text_content}"
            tokens += [tokenizer.im_start_id, *encode(text), tokenizer.im_end_id]
        if index < len(turns) - 1:
            tokens += encode("\n")
        context += [True] * (len(tokens) - len(context))
        spans.append((start, len(tokens)))
    return TokenizedConversation(tokens=tokens, context=context, spans=spans, roles=[t[0].role for t in turns])
