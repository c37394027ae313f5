"""One tokenized sample to measure attention on, from a dataset file, the synthetic generator or a dataset item."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchtune.models.qwen2_5._tokenizer import Qwen2_5Tokenizer

from focusft.analysis.segments import SINK_TOKENS, Segment, token_segments, turn_starts
from focusft.data.chat import CONVERSATION_FORMATS
from focusft.data.messages import ConversationError
from focusft.data.sources import BadRowError, load_rows
from focusft.data.synthetic import generate_samples
from focusft.data.truncation import fit_to_length
from focusft.masks import TokenLayout
from focusft.models import family_for_tokenizer


class SampleError(ValueError):
    """The requested sample cannot be used; the message names the file, row or option."""


@dataclass(frozen=True)
class AttentionSample:
    """Tokens of one conversation with what the metrics need per token.

    Attributes:
        tokens: ``[s]`` token ids.
        context: ``[s]`` True where the token is not trained on; the others are the response queries.
        segments: ``[s]`` :class:`Segment` of each token.
        turn_starts: position of each turn-opening token (``<|im_start|>``, ``<|start_header_id|>``).
        description: where the sample came from, for reports.
    """

    tokens: torch.Tensor
    context: torch.Tensor
    segments: torch.Tensor
    turn_starts: list[int]
    description: str

    @classmethod
    def from_tokens(
        cls,
        tokens: list[int],
        context: list[bool],
        tokenizer: Qwen2_5Tokenizer,
        description: str,
        sink_tokens: int = SINK_TOKENS,
    ) -> AttentionSample:
        if not any(not flag for flag in context):
            raise SampleError(f"{description} has no response (trained) tokens; attention is measured from them.")
        return cls(
            tokens=torch.tensor(tokens, dtype=torch.long),
            context=torch.tensor(context, dtype=torch.bool),
            segments=token_segments(tokens, tokenizer, sink_tokens),
            turn_starts=turn_starts(tokens, tokenizer),
            description=description,
        )

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[0]

    @property
    def response(self) -> torch.Tensor:
        return ~self.context

    @property
    def input_pos(self) -> torch.Tensor:
        return torch.arange(self.seq_len)

    def layout(self) -> TokenLayout:
        return TokenLayout.single_document(self.context[None])

    def segment_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.segments, minlength=len(Segment)).tolist()
        return {segment.name.lower(): counts[segment] for segment in Segment}


def sample_from_row(
    row: Mapping[str, Any],
    tokenizer: Qwen2_5Tokenizer,
    description: str,
    *,
    conversation_format: str = "openai",
    max_tokens: int | None = None,
) -> AttentionSample:
    """A chat row tokenized as training does; longer than ``max_tokens``: keep the latest whole exchanges."""
    try:
        conversation = family_for_tokenizer(tokenizer).render_messages(row, tokenizer, conversation_format)
    except ConversationError as err:
        raise SampleError(f"{description}: {err}") from None
    if max_tokens is not None:
        fitted = fit_to_length(conversation, max_tokens, "truncate_left")
        if fitted is None:
            raise SampleError(
                f"{description} has {len(conversation)} tokens and its last exchange alone exceeds "
                f"--max-tokens {max_tokens}."
            )
        if len(fitted) < len(conversation):
            description += f", left-truncated from {len(conversation)} tokens"
        conversation = fitted
    return AttentionSample.from_tokens(conversation.tokens, conversation.context, tokenizer, description)


def dataset_sample(
    path: str | Path,
    row: int,
    tokenizer: Qwen2_5Tokenizer,
    *,
    conversation_format: str = "openai",
    max_tokens: int | None = None,
) -> AttentionSample:
    """Row ``row`` (0-based) of a JSON Lines / JSON array file in the training data formats."""
    if conversation_format not in CONVERSATION_FORMATS:
        expected = sorted(CONVERSATION_FORMATS)
        raise SampleError(f"Unknown conversation format {conversation_format!r}; expected one of {expected}.")
    try:
        rows = load_rows("json", str(path))
    except (FileNotFoundError, BadRowError) as err:
        raise SampleError(str(err)) from None
    if not 0 <= row < len(rows):
        raise SampleError(f"{path} has {len(rows)} rows; row {row} does not exist (rows count from 0).")
    where, value = rows[row]
    if isinstance(value, BadRowError):
        raise SampleError(f"{where}: {value}")
    return sample_from_row(value, tokenizer, where, conversation_format=conversation_format, max_tokens=max_tokens)


def synthetic_sample(
    task: str, length: int, seed: int, tokenizer: Qwen2_5Tokenizer, *, index: int = 0, split: str = "eval"
) -> AttentionSample:
    """Sample ``index`` of :func:`focusft.data.synthetic.generate_samples` at about ``length`` tokens."""
    try:
        generated = generate_samples(
            task, num_samples=index + 1, target_tokens=length, split=split, seed=seed, tokenizer=tokenizer
        )
    except ValueError as err:
        raise SampleError(str(err)) from None
    description = f"synthetic {task} ({split}, seed {seed}, ~{length} tokens) sample {index}"
    return sample_from_row(generated[index], tokenizer, description)


def item_sample(item: Mapping[str, list], tokenizer: Qwen2_5Tokenizer, description: str) -> AttentionSample:
    """A dataset item (``tokens``, ``context``, optionally packed with ``doc``/``valid``): its first document."""
    length = len(item["tokens"])
    if "doc" in item:
        doc = item["doc"]
        valid = item.get("valid", [True] * length)
        length = next((i for i in range(length) if doc[i] != doc[0] or not valid[i]), length)
    return AttentionSample.from_tokens(
        list(item["tokens"][:length]), [bool(c) for c in item["context"][:length]], tokenizer, description
    )
