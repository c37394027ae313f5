"""Dataset builders for the recipe config (``dataset._component_: focusft.data.chat_dataset``).

A builder reads every row, validates it and tokenizes it when the dataset is built: a bad
row stops the run (or is skipped and counted) before training starts, never in the middle
of an epoch, and the counts of what was dropped or truncated are logged once and kept in
``dataset.stats``. Items are the samples ``collate_focus_batch`` takes.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, get_args

from torch.utils.data import Dataset
from torchtune.data import Message
from torchtune.models.qwen2_5._tokenizer import Qwen2_5Tokenizer
from torchtune.utils import get_logger, log_rank_zero

from focusft import models
from focusft.data.fields import unrendered_fields
from focusft.data.messages import (
    CHAT_CONTROL_TOKENS,
    FAMILY_DEFAULT_SYSTEM,
    ConversationError,
    openai_to_messages,
    sharegpt_to_messages,
)
from focusft.data.packing import pack_samples
from focusft.data.sources import BadRowError, DataError, Row, load_rows
from focusft.data.tokenize import TokenizedConversation
from focusft.data.truncation import LongSamplePolicy, check_long_sample_policy, fit_to_length

log = get_logger("INFO")

ConversationFormat = Literal["openai", "sharegpt"]
OnBadRow = Literal["error", "skip"]
CONVERSATION_FORMATS: dict[str, Callable[..., list[Message]]] = {
    "openai": openai_to_messages,
    "sharegpt": sharegpt_to_messages,
}
ON_BAD_ROW: tuple[str, ...] = get_args(OnBadRow)
SUMMARY_EXAMPLES = 5  # bad rows quoted in the log; all are kept in stats.bad_rows


@dataclass
class DataStats:
    """What became of the rows of a dataset."""

    rows: int = 0
    bad_rows: list[str] = field(default_factory=list)  # "where: what is wrong", one per skipped row
    dropped_too_long: int = 0
    truncated: int = 0
    dropped_no_response: int = 0  # nothing left to train on after truncation
    samples: int = 0
    packed_rows: int = 0
    # Fields that carry a value but are not rendered (focusft.data.fields) -> rows that have them.
    unrendered_fields: dict[str, int] = field(default_factory=dict)

    def summary(self, name: str, max_seq_len: int) -> str:
        text = (
            f"{name}: {self.rows} rows -> {self.samples} samples (max_seq_len {max_seq_len}); "
            f"skipped {len(self.bad_rows)} bad rows, dropped {self.dropped_too_long} too long, "
            f"truncated {self.truncated}, dropped {self.dropped_no_response} left with no assistant token"
        )
        if self.packed_rows:
            text += f"; packed into {self.packed_rows} rows"
        if self.bad_rows:
            text += ". Bad rows: " + "; ".join(self.bad_rows[:SUMMARY_EXAMPLES])
            text += f" (+{len(self.bad_rows) - SUMMARY_EXAMPLES} more)" if len(self.bad_rows) > SUMMARY_EXAMPLES else ""
        return text

    def unrendered_summary(self, name: str, first_rows: dict[str, str]) -> str:
        """One line naming every field that was not rendered, with its row count and first row."""
        fields = ", ".join(
            f"{path!r} ({count} rows, first {first_rows[path]})" for path, count in self.unrendered_fields.items()
        )
        return (
            f"{name}: fields not rendered into the training tokens (Qwen2.5's chat template does not show "
            f"them to the model at inference either): {fields}"
        )


class ChatDataset(Dataset):
    """Tokenized conversations, or packed rows of them, with their build statistics.

    Items are kept as typed arrays (4 bytes a token instead of a Python int's ~36, and no
    reference counts for forked dataloader workers to copy) and handed out as lists.
    """

    _TYPECODES = {"tokens": "i", "labels": "i", "doc": "i", "sample_index": "i", "context": "b", "valid": "b"}

    def __init__(self, items: list[dict[str, list]], stats: DataStats) -> None:
        self._items = [{key: array(self._TYPECODES[key], value) for key, value in item.items()} for item in items]
        self.stats = stats

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, list]:
        return {
            key: value.tolist() if self._TYPECODES[key] == "i" else [bool(flag) for flag in value]
            for key, value in self._items[index].items()
        }

    @property
    def lengths(self) -> list[int]:
        """Tokens per item (padding excluded), for length-grouped batching."""
        return [sum(item["valid"]) if "valid" in item else len(item["tokens"]) for item in self._items]


def chat_dataset(
    tokenizer: Qwen2_5Tokenizer,
    *,
    source: str,
    max_seq_len: int,
    data_files: str | list[str] | None = None,
    split: str = "train",
    conversation_format: ConversationFormat = "openai",
    long_sample_policy: LongSamplePolicy = "drop",
    train_on_assistant_header: bool = False,
    on_bad_row: OnBadRow = "error",
    packed: bool = False,
    default_system_prompt: str | None | object = FAMILY_DEFAULT_SYSTEM,
    chat_format: str | None = None,
    **load_dataset_kwargs: Any,
) -> ChatDataset:
    """Chat/tool conversations from local ``json`` (JSON Lines or array) or ``parquet`` files, or a hub dataset.

    Args:
        tokenizer: torchtune's tokenizer of the model family (Qwen2.5's also serves Qwen3; Llama 3's).
        source: ``json``, ``parquet``, or a Hugging Face Hub dataset name (needs network).
        max_seq_len: longest sample (packed: the row length).
        data_files: path or list of paths (local sources; optional for the hub).
        split: hub split.
        conversation_format: ``openai`` (``messages`` column) or ``sharegpt`` (``conversations``).
        long_sample_policy: ``drop``, ``truncate_right`` or ``truncate_left`` (keep the last exchanges).
        train_on_assistant_header: also train on ``<|im_start|>assistant\\n``.
        on_bad_row: ``error`` (stop, naming the file and row) or ``skip`` (skip, count, summarise).
        packed: pack samples into rows of ``max_seq_len`` tokens.
        default_system_prompt: system turn of conversations without one (default: what the model
            family's chat template inserts at inference, Qwen2.5's "You are Qwen, ..."); ``None``: none.
        chat_format: model family whose chat template renders the conversations (``qwen2_5``,
            ``qwen3``, ``llama3``; default: the family of ``tokenizer``'s special tokens).
        load_dataset_kwargs: passed to ``datasets.load_dataset`` for hub sources.
    """
    if conversation_format not in CONVERSATION_FORMATS:
        raise DataError(
            f"Unknown conversation_format {conversation_format!r}; expected one of {tuple(CONVERSATION_FORMATS)}."
        )
    _check_options(max_seq_len, long_sample_policy, on_bad_row)
    if source in ("json", "parquet") and load_dataset_kwargs:
        raise DataError(
            f"Unknown chat_dataset argument(s) {sorted(load_dataset_kwargs)}: extra arguments go to "
            f"datasets.load_dataset, which source={source!r} does not use."
        )
    family = _family(tokenizer, chat_format)
    rows = load_rows(source, data_files, split, **load_dataset_kwargs)
    return build_dataset(
        rows,
        tokenizer,
        to_messages=partial(
            CONVERSATION_FORMATS[conversation_format],
            default_system_prompt=_system_prompt(family, default_system_prompt),
            convert=family.to_messages,
        ),
        tokenize=family.tokenize,
        name=f"{source} {data_files or ''}".strip(),
        unrendered=partial(unrendered_fields, conversation_format=conversation_format),
        max_seq_len=max_seq_len,
        long_sample_policy=long_sample_policy,
        train_on_assistant_header=train_on_assistant_header,
        on_bad_row=on_bad_row,
        packed=packed,
    )


def synthetic_dataset(
    tokenizer: Qwen2_5Tokenizer,
    *,
    task: str,
    num_samples: int,
    max_seq_len: int,
    target_tokens: int | None = None,
    split: str = "train",
    seed: int = 0,
    long_sample_policy: LongSamplePolicy = "drop",
    train_on_assistant_header: bool = False,
    packed: bool = False,
    default_system_prompt: str | None | object = FAMILY_DEFAULT_SYSTEM,
    chat_format: str | None = None,
) -> ChatDataset:
    """Synthetic long-context conversations (:mod:`focusft.data.synthetic`), generated in memory.

    ``target_tokens`` defaults to ``max_seq_len``; lengths are measured with ``tokenizer``.
    ``default_system_prompt`` and ``chat_format`` as in :func:`chat_dataset`.
    """
    _check_options(max_seq_len, long_sample_policy, "error")
    family = _family(tokenizer, chat_format)
    # Imported here so that importing focusft.data leaves `python -m focusft.data.synthetic` a clean run.
    from focusft.data.synthetic import generate_samples

    samples = generate_samples(
        task,
        num_samples=num_samples,
        target_tokens=target_tokens or max_seq_len,
        split=split,
        seed=seed,
        tokenizer=tokenizer,
    )
    return build_dataset(
        [(f"synthetic {task} sample {index}", sample) for index, sample in enumerate(samples)],
        tokenizer,
        to_messages=partial(
            openai_to_messages,
            default_system_prompt=_system_prompt(family, default_system_prompt),
            convert=family.to_messages,
        ),
        tokenize=family.tokenize,
        name=f"synthetic {task} ({split}, seed {seed})",
        max_seq_len=max_seq_len,
        long_sample_policy=long_sample_policy,
        train_on_assistant_header=train_on_assistant_header,
        on_bad_row="error",
        packed=packed,
    )


def build_dataset(
    rows: list[Row],
    tokenizer: Qwen2_5Tokenizer,
    *,
    to_messages: Callable[..., list[Message]],
    tokenize: Callable[..., TokenizedConversation],
    name: str,
    max_seq_len: int,
    long_sample_policy: LongSamplePolicy,
    train_on_assistant_header: bool,
    on_bad_row: OnBadRow,
    packed: bool,
    unrendered: Callable[[Any], list[str]] | None = None,
) -> ChatDataset:
    """Validate every row first (cheap), then tokenize, fit to length and optionally pack.

    No text may hold a special token of ``tokenizer`` (``<|im_end|>``, ``<tool_call>``, ...):
    the tokenizer would encode it as that token. ``unrendered`` names a row's fields that
    are not rendered; they are counted in ``stats.unrendered_fields`` and logged in one warning.
    """
    stats = DataStats(rows=len(rows))
    forbidden = tuple(dict.fromkeys([*CHAT_CONTROL_TOKENS, *getattr(tokenizer, "special_tokens", {})]))
    conversations = []
    first_rows: dict[str, str] = {}
    for where, row in rows:
        try:
            if isinstance(row, BadRowError):
                raise row
            conversations.append(to_messages(row, forbidden_tokens=forbidden))
            for path in unrendered(row) if unrendered else ():
                stats.unrendered_fields[path] = stats.unrendered_fields.get(path, 0) + 1
                first_rows.setdefault(path, where)
        except (ConversationError, BadRowError) as err:
            if on_bad_row == "error":
                raise BadRowError(f"Bad row in {where}: {err}. (on_bad_row=skip skips and counts such rows.)") from None
            stats.bad_rows.append(f"{where}: {err}")
    samples = []
    for messages in conversations:
        conversation = tokenize(messages, tokenizer, train_on_assistant_header=train_on_assistant_header)
        fitted = fit_to_length(conversation, max_seq_len, long_sample_policy)
        if fitted is None:
            stats.dropped_too_long += 1
        elif fitted.num_trained == 0:
            stats.dropped_no_response += 1
        else:
            stats.truncated += len(fitted) < len(conversation)
            samples.append(fitted.as_sample())
    stats.samples = len(samples)
    # Packed or not, a sample keeps its index: it seeds the sample's fast weights.
    if packed:
        items = pack_samples(samples, max_seq_len, padding_idx=tokenizer.pad_id)
    else:
        items = [{**sample, "sample_index": [index]} for index, sample in enumerate(samples)]
    stats.packed_rows = len(items) if packed else 0
    lost = stats.bad_rows or stats.dropped_too_long or stats.dropped_no_response
    log_rank_zero(log, stats.summary(name, max_seq_len), level=logging.WARNING if lost else logging.INFO)
    if stats.unrendered_fields:
        log_rank_zero(log, stats.unrendered_summary(name, first_rows), level=logging.WARNING)
    return ChatDataset(items, stats)


def _family(tokenizer: Any, chat_format: str | None) -> models.ModelFamily:
    """The model family named by ``chat_format``, or that of the tokenizer's special tokens."""
    try:
        return models.get_family(chat_format) if chat_format is not None else models.family_for_tokenizer(tokenizer)
    except ValueError as error:
        raise DataError(f"chat_format: {error}") from None


def _system_prompt(family: models.ModelFamily, default_system_prompt: str | None | object) -> str | None:
    return family.default_system_prompt if default_system_prompt is FAMILY_DEFAULT_SYSTEM else default_system_prompt


def _check_options(max_seq_len: int, long_sample_policy: str, on_bad_row: str) -> None:
    if not isinstance(max_seq_len, int) or max_seq_len <= 0:
        raise DataError(f"max_seq_len must be a positive integer, got {max_seq_len!r}.")
    try:
        check_long_sample_policy(long_sample_policy)
    except ValueError as error:
        raise DataError(str(error)) from None
    if on_bad_row not in ON_BAD_ROW:
        raise DataError(f"Unknown on_bad_row {on_bad_row!r}; expected one of {ON_BAD_ROW}.")
