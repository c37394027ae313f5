"""Make a saved checkpoint directory behave like a Qwen2.5-Instruct download.

Training ends every assistant turn with ``<|im_end|>`` (see :mod:`focusft.data.tokenize`),
but torchtune's checkpointer copies the base model's ``config.json``,
``generation_config.json`` and tokenizer files unchanged. For a Qwen2.5 *base* model
those name ``<|endoftext|>`` as eos, so transformers, vLLM and lm-eval would keep
generating past the end of the answer. :func:`set_chat_eos` writes the eos ids the
model was trained to stop at, as Qwen2.5-Instruct ships them: ``generation_config.json``
stops at ``[<|im_end|>, <|endoftext|>]``, ``config.json`` and ``tokenizer_config.json``
name ``<|im_end|>``; a base without ``tokenizer_config.json`` gets Qwen2.5-Instruct's (chat
template included), which transformers would otherwise replace with defaults that have
neither. :func:`make_readable` gives the files the 0644 mode of an HF download
(safetensors writes weights 0600).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TURN_END = "<|im_end|>"
TOKENIZER_CONFIG = "tokenizer_config.json"
_ADDED_TOKEN_FLAGS = ("content", "lstrip", "normalized", "rstrip", "special")
END_OF_TEXT = "<|endoftext|>"
FILE_MODE = 0o644


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


def set_chat_eos(directory: Path) -> tuple[int, int]:
    """Point every eos field of ``directory`` at ``<|im_end|>`` (generation also stops at ``<|endoftext|>``)."""
    ids = special_token_ids(directory)
    missing = [token for token in (TURN_END, END_OF_TEXT) if token not in ids]
    if missing:
        raise ValueError(f"{directory / 'tokenizer.json'} lacks the Qwen2.5 special token(s) {missing}.")
    turn_end, end_of_text = ids[TURN_END], ids[END_OF_TEXT]

    generation = _read(directory / "generation_config.json")
    generation["eos_token_id"] = [turn_end, end_of_text]
    generation.setdefault("pad_token_id", end_of_text)
    _write(directory / "generation_config.json", generation)

    config = _read(directory / "config.json")
    config["eos_token_id"] = turn_end
    _write(directory / "config.json", config)

    if not (directory / TOKENIZER_CONFIG).is_file():
        model_max_length = config.get("max_position_embeddings", 32768)
        added = json.loads((directory / "tokenizer.json").read_text())["added_tokens"]
        _write(directory / TOKENIZER_CONFIG, tokenizer_config(added, model_max_length))
    for name in (TOKENIZER_CONFIG, "special_tokens_map.json"):
        path = directory / name
        if path.is_file():
            data = _read(path)
            eos = data.get("eos_token")
            data["eos_token"] = {**eos, "content": TURN_END} if isinstance(eos, dict) else TURN_END
            _write(path, data)
    return turn_end, end_of_text


def tokenizer_config(added_tokens: list[dict[str, Any]], model_max_length: int) -> dict[str, Any]:
    """A Qwen2.5-Instruct ``tokenizer_config.json``: its chat template, ``<|im_end|>`` eos, the added tokens.

    ``added_tokens``: the ``added_tokens`` entries of ``tokenizer.json`` (id, content, flags).
    """
    from focusft.tiny import CHAT_TEMPLATE  # the template as Qwen2.5-Instruct ships it

    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": model_max_length,
        "eos_token": TURN_END,
        "pad_token": END_OF_TEXT,
        "bos_token": None,
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(token["id"]): {key: token.get(key, False) for key in _ADDED_TOKEN_FLAGS} for token in added_tokens
        },
    }


def make_readable(directory: Path) -> None:
    """Mode 0644 for every file in ``directory`` (recursively), as in a Hugging Face download."""
    for root, _, files in os.walk(directory):
        for name in files:
            os.chmod(os.path.join(root, name), FILE_MODE)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
