"""Make a saved checkpoint directory behave like the family's Instruct download.

Training ends every assistant turn with the family's end-of-turn token (``<|im_end|>`` for
Qwen2.5 and Qwen3, ``<|eot_id|>`` for Llama 3; see :mod:`focusft.models`), but torchtune's
checkpointer copies the base model's ``config.json``, ``generation_config.json`` and
tokenizer files unchanged. For a *base* model those name the end of text as eos, so
transformers, vLLM and lm-eval would keep generating past the end of the answer.
:func:`set_chat_eos` writes the eos ids the model was trained to stop at, as the Instruct
models ship them: ``generation_config.json`` stops at the family's stop tokens (Qwen:
``[<|im_end|>, <|endoftext|>]``; Llama 3.1: ``[<|eot_id|>, <|end_of_text|>, <|eom_id|>]``),
``config.json`` and ``tokenizer_config.json`` name the end-of-turn token; a Qwen base without
``tokenizer_config.json`` gets the Instruct model's (chat template included), which
transformers would otherwise replace with defaults that have neither. :func:`make_readable`
gives the files the 0644 mode of an HF download (safetensors writes weights 0600).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

FILE_MODE = 0o644
TOKENIZER_CONFIG = "tokenizer_config.json"
_NOT_STRIPPED = ("lstrip", "rstrip", "normalized")


class MissingTokenizerError(FileNotFoundError):
    """The checkpoint directory has no tokenizer.json to read the eos token ids from."""


def special_token_ids(directory: Path) -> dict[str, int]:
    """``{token: id}`` of the added tokens in ``directory/tokenizer.json``."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise MissingTokenizerError(
            f"{directory} has no tokenizer.json, so its eos token ids are unknown; keep the tokenizer files "
            "in checkpointer.checkpoint_dir so that every saved checkpoint is a complete model directory."
        )
    return {token["content"]: token["id"] for token in json.loads(path.read_text())["added_tokens"]}


def set_chat_eos(directory: Path) -> tuple[int, ...]:
    """Point every eos field of ``directory`` at its family's end-of-turn token; returns the stop ids."""
    from focusft.models import family_for_special_tokens  # focusft.models imports the data package

    ids = special_token_ids(directory)
    try:
        family = family_for_special_tokens(ids)
    except ValueError as error:
        raise ValueError(f"{directory / 'tokenizer.json'}: {error}") from None
    missing = [token for token in family.stop_tokens if token not in ids]
    if missing:
        raise ValueError(f"{directory / 'tokenizer.json'} lacks the {family.name} special token(s) {missing}.")
    stops = tuple(ids[token] for token in family.stop_tokens)

    generation = _read(directory / "generation_config.json")
    generation["eos_token_id"] = list(stops)
    generation.setdefault("pad_token_id", stops[1])  # the end-of-text token
    _write(directory / "generation_config.json", generation)

    config = _read(directory / "config.json")
    config["eos_token_id"] = stops[0]
    _write(directory / "config.json", config)

    if not (directory / TOKENIZER_CONFIG).is_file() and family.name in ("qwen2_5", "qwen3"):
        max_length = config.get("max_position_embeddings", 32768)
        _write(directory / TOKENIZER_CONFIG, instruct_tokenizer_config(family.name, ids, max_length))
    for name in (TOKENIZER_CONFIG, "special_tokens_map.json"):
        path = directory / name
        if path.is_file():
            data = _read(path)
            eos = data.get("eos_token")
            data["eos_token"] = {**eos, "content": family.turn_end} if isinstance(eos, dict) else family.turn_end
            _write(path, data)
    return stops


def qwen_tokenizer_config(
    special_ids: dict[str, int], model_max_length: int, chat_template: str, non_special: Collection[str] = ()
) -> dict[str, Any]:
    """A Qwen-Instruct ``tokenizer_config.json``: ``<|im_end|>`` eos, the chat template, the added tokens.

    ``special_ids``: ``{token: id}`` of the added tokens; ``non_special``: added tokens that are
    not special (Qwen3's ``<think>``, ``<tool_call>``, ...), kept in decoded text.
    """
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": model_max_length,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": chat_template,
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "special": t not in non_special,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
            }
            for t, i in special_ids.items()
        },
    }


def instruct_tokenizer_config(family: str, special_ids: dict[str, int], model_max_length: int) -> dict[str, Any]:
    """The ``tokenizer_config.json`` of family ``qwen2_5`` or ``qwen3``'s Instruct models (their chat template)."""
    from focusft.models import qwen3  # focusft.models imports the data package
    from focusft.tiny import CHAT_TEMPLATE, chat_template  # the templates as the Instruct models ship them

    if family == "qwen3":
        return qwen_tokenizer_config(special_ids, model_max_length, chat_template("qwen3"), qwen3.NON_SPECIAL_TOKENS)
    return qwen_tokenizer_config(special_ids, model_max_length, CHAT_TEMPLATE)


def make_readable(directory: Path) -> None:
    """Mode 0644 for every file in ``directory`` (recursively), as in a Hugging Face download."""
    for root, _, files in os.walk(directory):
        for name in files:
            os.chmod(os.path.join(root, name), FILE_MODE)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
