"""Checks of the base model directory before training: readable, self-consistent, fitting the model, finite.

Each would otherwise show up late or not at all: a truncated weight file as a traceback
from deep inside torchtune's loader; a ``config.json`` that contradicts the weights as a
run that ends with rc 0 and a checkpoint transformers refuses (the checkpointer copies
``config.json`` unchanged); a NaN in the base as ten skipped steps and advice to lower
the learning rate. Names in the messages are the file's own (Hugging Face) tensor names.

:func:`check_base_checkpoint` runs them all (rank 0, before the dataset is built);
:func:`check_tokenizer_files` checks the tokenizer files every rank is about to read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors import safe_open
from torchtune import config, utils
from torchtune.modules.peft import get_adapter_params

from focusft.checkpointing import CheckpointError
from focusft.components import build_meta_model, first_line
from focusft.config import checkpoint_files
from focusft.errors import ConfigError
from focusft.hf_files import TOKENIZER_CONFIG
from focusft.models import family_for_special_tokens

log = utils.get_logger("INFO")

Shapes = dict[str, tuple[str, tuple[int, ...]]]  # HF tensor name -> (file name, shape)
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def read_shapes(checkpoint_dir: Path, files: list[str]) -> Shapes:
    """Every tensor's name and shape from the safetensors headers; a file that cannot be read is named.

    safetensors checks the header and that the file is long enough for every tensor it lists,
    so a truncated download or a file of random bytes fails here, before any weight is read.
    """
    shapes: Shapes = {}
    for name in files:
        path = checkpoint_dir / name
        try:
            with safe_open(path, framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                    shapes[key] = (name, tuple(weights.get_slice(key).get_shape()))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(
                f"base weight file {path} is not a readable safetensors file ({reason}). It is truncated or "
                "damaged: download or export it again."
            ) from None
    return shapes


def read_hf_config(checkpoint_dir: Path) -> dict[str, Any]:
    path = checkpoint_dir / "config.json"
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); restore the model's config.json.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def check_config_matches_weights(hf_config: Mapping[str, Any], shapes: Shapes, checkpoint_dir: Path) -> None:
    """The sizes ``config.json`` states agree with the Qwen2/Llama-style weights they describe."""
    found: dict[str, int] = {}

    def dim(key: str, axis: int) -> int | None:
        return shapes[key][1][axis] if key in shapes and len(shapes[key][1]) > axis else None

    embed = "model.embed_tokens.weight"
    found["vocab_size"], found["hidden_size"] = dim(embed, 0), dim(embed, 1)
    found["intermediate_size"] = dim("model.layers.0.mlp.gate_proj.weight", 0)
    layers = {int(m[1]) for key in shapes if (m := _LAYER.match(key))}
    found["num_hidden_layers"] = max(layers) + 1 if layers else None
    heads, hidden = hf_config.get("num_attention_heads"), hf_config.get("hidden_size")
    head_dim = hf_config.get("head_dim") or (hidden // heads if isinstance(hidden, int) and heads else None)
    q_rows, k_rows = dim("model.layers.0.self_attn.q_proj.weight", 0), dim("model.layers.0.self_attn.k_proj.weight", 0)
    if head_dim:
        found["num_attention_heads"] = q_rows // head_dim if q_rows else None
        found["num_key_value_heads"] = k_rows // head_dim if k_rows else None
    wrong = [
        f"{key} {hf_config.get(key)!r} (the weights have {value})"
        for key, value in found.items()
        if value is not None and hf_config.get(key) != value
    ]
    if hf_config.get("tie_word_embeddings") is False and "lm_head.weight" not in shapes and embed in shapes:
        wrong.append("tie_word_embeddings false (the weights have no lm_head.weight: tied)")
    if wrong:
        raise CheckpointError(
            f"{checkpoint_dir / 'config.json'} contradicts the weights next to it: {'; '.join(wrong)}. A checkpoint "
            "saved with it could not be loaded; restore the config.json that belongs to these weights."
        )


def check_weights_fit_model(
    model: torch.nn.Module, cfg_model: DictConfig, hf_config: Mapping[str, Any], shapes: Shapes
) -> None:
    """Every tensor the model needs is in the files, with its shape, and nothing else is (Qwen2 names).

    An outer LoRA's adapter weights (:mod:`focusft.lora`) are not expected: they start from scratch.
    """
    from torchtune.models.qwen2 import qwen2_hf_to_tune

    tie = bool(hf_config.get("tie_word_embeddings", False))
    adapter = set(get_adapter_params(model))  # an outer LoRA's weights are not in the base files
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items() if key not in adapter}
    where = f"the model ({cfg_model.get('_component_')})"
    seen = set()
    for hf_name, (file, shape) in shapes.items():
        try:
            converted = qwen2_hf_to_tune({hf_name: torch.empty(0)}, tie_word_embeddings=tie)
        except Exception:  # noqa: BLE001 - torchtune raises a bare Exception for an unknown key
            raise CheckpointError(
                f"base weight {hf_name} in {file} has no place in {where}; the checkpoint is not a Qwen2.5 model "
                "of this architecture."
            ) from None
        for tune_name in converted:
            seen.add(tune_name)
            if tune_name not in expected:
                raise CheckpointError(f"base weight {hf_name} in {file} has no place in {where}.")
            if expected[tune_name] != shape:
                raise CheckpointError(
                    f"base weight {hf_name} in {file} has shape {list(shape)}, but {where} expects "
                    f"{list(expected[tune_name])}: the checkpoint and `model` are different sizes. Choose the model "
                    "builder that matches the checkpoint's config.json."
                )
    missing = sorted(set(expected) - seen)
    if missing:
        raise CheckpointError(
            f"{where} needs weight(s) {missing[:3]}{' …' if len(missing) > 3 else ''} (torchtune names) that no "
            "file in checkpointer.checkpoint_files holds; list every weight file of the checkpoint."
        )


def check_finite(checkpoint_dir: Path, shapes: Shapes) -> None:
    """Every floating-point base weight is finite; reads one tensor at a time."""
    by_file: dict[str, list[str]] = {}
    for name, (file, _) in shapes.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(checkpoint_dir / file, framework="pt") as weights:
            for name in names:
                tensor = weights.get_tensor(name)
                if tensor.is_floating_point():
                    bad = int((~torch.isfinite(tensor)).sum())
                    if bad:
                        raise CheckpointError(
                            f"base weight {name} in {checkpoint_dir / file} holds {bad} NaN or infinite value(s) "
                            f"of {tensor.numel()}: the base checkpoint is damaged, training from it cannot work. "
                            "Download or export it again."
                        )


def check_base_checkpoint(cfg: DictConfig) -> None:
    """All checks of the base checkpoint directory (the one ``checkpointer.checkpoint_dir`` names)."""
    checkpoint_dir = Path(str(cfg.checkpointer.checkpoint_dir))
    shapes = read_shapes(checkpoint_dir, checkpoint_files(cfg.checkpointer))
    hf_config = read_hf_config(checkpoint_dir)
    check_config_matches_weights(hf_config, shapes, checkpoint_dir)
    if str(cfg.checkpointer.get("model_type", "")).upper() == "QWEN2":
        check_weights_fit_model(build_meta_model(cfg.model), cfg.model, hf_config, shapes)
    check_finite(checkpoint_dir, shapes)
    if not (checkpoint_dir / TOKENIZER_CONFIG).is_file():
        log.warning(
            f"{checkpoint_dir} has no {TOKENIZER_CONFIG}; each saved checkpoint of a Qwen model gets the Instruct "
            "model's (its chat template, end-of-turn eos), so that it loads and generates like an Instruct model."
        )


def check_tokenizer_files(cfg_tokenizer: DictConfig) -> None:
    """Qwen tokenizer files parse, and the special tokens (tokenizer.json) are a family's, with ``<|im_end|>``."""
    for key in ("path", "special_tokens_path"):
        value = cfg_tokenizer.get(key)
        if value is None or not str(value).endswith(".json"):
            continue
        try:
            data = json.loads(Path(str(value)).read_bytes())
        except (OSError, ValueError) as error:
            raise ConfigError(f"tokenizer.{key} {value} is not valid JSON ({first_line(error)}).") from None
        if key == "special_tokens_path":
            tokens = data.get("added_tokens") if isinstance(data, dict) else None
            contents = {t.get("content") for t in tokens or [] if isinstance(t, dict)}
            try:
                family = family_for_special_tokens(contents)
            except ValueError:
                family = None
            if family is None or family.turn_end not in contents:
                raise ConfigError(
                    f"tokenizer.special_tokens_path {value} has no <|im_end|> among its added_tokens, which ends "
                    "every chat turn in training; use the tokenizer.json of a Qwen2.5 or Qwen3 model."
                )
    merges = cfg_tokenizer.get("merges_file")
    if merges is not None:
        try:
            Path(str(merges)).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"tokenizer.merges_file {merges} cannot be read as text ({error}).") from None


def build_tokenizer(cfg_tokenizer: DictConfig) -> Any:
    """The configured tokenizer; a file it cannot parse or a bad argument is one ConfigError."""
    try:
        return config.instantiate(cfg_tokenizer)
    except Exception as error:  # noqa: BLE001 - tokenizers raise many types
        raise ConfigError(
            f"tokenizer ({cfg_tokenizer.get('_component_')}) cannot be built: {first_line(error)}"
        ) from None
