"""The ``focusft:`` section of a recipe config, and the checks run before any model is built.

One section selects the paper's four variants (docs/DESIGN.md section 3)::

    Standard SFT     focusft.bilevel=false focusft.attention=causal
    SFT + Bidir      focusft.bilevel=false focusft.attention=bidir_context
    Causal Bilevel   focusft.bilevel=true  focusft.attention=causal
    FocuSFT          focusft.bilevel=true  focusft.attention=bidir_context
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from focusft.bilevel import InnerLoopConfig
from focusft.documents import FAST_WEIGHT_SCOPES, FastWeightScope
from focusft.fast_weights import FastWeightConfig
from focusft.masks import MASK_MODES, MaskMode

MaskKind = Literal["dense", "block"]
MASK_KINDS = ("auto", "dense", "block")

# Key of the focusft section -> (field of the config it feeds, name of that field).
_INNER_KEYS = {"inner_steps": "steps", "inner_lr": "lr", "inner_grad_clip": "grad_clip"}
_FAST_KEYS = {"rank": "rank", "alpha": "alpha", "layer_fraction": "layer_fraction", "target_modules": "target_modules"}
FOCUSFT_KEYS = ("bilevel", "attention", "mask", "fast_weight_scope", *_INNER_KEYS, *_FAST_KEYS)

VARIANTS = {
    (False, "causal"): "Standard SFT",
    (False, "bidir_context"): "SFT + Bidir",
    (True, "causal"): "Causal Bilevel",
    (True, "bidir_context"): "FocuSFT",
}


class ConfigError(ValueError):
    """A config value, path or batch setting that cannot work, named in the message."""


@dataclass(frozen=True)
class FocusConfig:
    """The parsed ``focusft`` section (paper Table 5 defaults)."""

    bilevel: bool = True
    attention: MaskMode = "bidir_context"
    mask: str = "auto"
    fast_weight_scope: FastWeightScope = "document"
    inner: InnerLoopConfig = field(default_factory=InnerLoopConfig)
    fast_weights: FastWeightConfig = field(default_factory=FastWeightConfig)

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> FocusConfig:
        values = _plain(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"focusft must be a mapping of settings, got {values!r}.")
        unknown = sorted(set(values) - set(FOCUSFT_KEYS))
        if unknown:
            raise ConfigError(f"Unknown key(s) in focusft: {unknown}. Valid keys: {list(FOCUSFT_KEYS)}.")
        bilevel = values.get("bilevel", True)
        if not isinstance(bilevel, bool):
            raise ConfigError(f"focusft.bilevel must be true or false, got {bilevel!r}.")
        attention = values.get("attention", "bidir_context")
        if attention not in MASK_MODES:
            raise ConfigError(f"focusft.attention must be one of {list(MASK_MODES)}, got {attention!r}.")
        mask = values.get("mask", "auto")
        if mask not in MASK_KINDS:
            raise ConfigError(f"focusft.mask must be one of {list(MASK_KINDS)}, got {mask!r}.")
        scope = values.get("fast_weight_scope", "document")
        if scope not in FAST_WEIGHT_SCOPES:
            raise ConfigError(f"focusft.fast_weight_scope must be one of {list(FAST_WEIGHT_SCOPES)}, got {scope!r}.")
        inner = _build(InnerLoopConfig, values, _INNER_KEYS)
        fast_weights = _build(FastWeightConfig, values, _FAST_KEYS)
        return cls(
            bilevel=bilevel,
            attention=attention,
            mask=mask,
            fast_weight_scope=scope,
            inner=inner,
            fast_weights=fast_weights,
        )

    @property
    def variant(self) -> str:
        return VARIANTS[(self.bilevel, self.attention)]

    @property
    def inner_loop(self) -> InnerLoopConfig | None:
        """The inner loop to run, or None for the non-bilevel variants."""
        return self.inner if self.bilevel else None

    def mask_kind(self, device: torch.device) -> MaskKind:
        """``auto``: a FlexAttention BlockMask where torchtune runs FlexAttention (CUDA sm75+), else dense."""
        flex = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 5)
        if self.mask == "block" and not flex:
            raise ConfigError(
                "focusft.mask=block needs a CUDA GPU with FlexAttention (compute capability 7.5+); "
                f"this run is on {device}. Use focusft.mask=dense or auto."
            )
        if self.mask == "auto":
            return "block" if flex else "dense"
        return self.mask  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _build(kind: type, values: Mapping[str, Any], keys: Mapping[str, str]):
    """Build ``kind`` from the section's keys, re-raising its errors with the key name."""
    kwargs = {name: values[key] for key, name in keys.items() if key in values}
    try:
        return kind(**kwargs)
    except (TypeError, ValueError) as error:
        given = {key: values[key] for key in keys if key in values}
        raise ConfigError(f"Invalid focusft setting(s) {given}: {error}") from error


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_training_values(cfg: DictConfig) -> None:
    """Ranges and types of the recipe's own top-level keys."""
    for key in ("output_dir", "model", "tokenizer", "checkpointer", "dataset", "optimizer", "metric_logger"):
        require(key in cfg and cfg[key] is not None, f"Config key `{key}` is required.")
    for key, minimum in (("batch_size", 1), ("gradient_accumulation_steps", 1), ("epochs", 1)):
        require(_is_int(cfg.get(key), minimum), f"`{key}` must be an integer >= {minimum}, got {cfg.get(key)!r}.")
    for key in ("max_steps_per_epoch", "save_every_n_steps", "stop_after_step"):
        value = cfg.get(key)
        require(value is None or _is_int(value, 1), f"`{key}` must be null or an integer >= 1, got {value!r}.")
    require(_is_int(cfg.get("log_every_n_steps", 1), 1), "`log_every_n_steps` must be an integer >= 1.")
    clip = cfg.get("clip_grad_norm")
    require(
        clip is None or (isinstance(clip, (int, float)) and clip > 0),
        f"`clip_grad_norm` must be null or a number > 0, got {clip!r}.",
    )
    warmup = cfg.get("warmup_ratio", 0.0)
    require(
        isinstance(warmup, (int, float)) and 0 <= warmup < 1 and math.isfinite(warmup),
        f"`warmup_ratio` must be in [0, 1), got {warmup!r}.",
    )
    require(cfg.get("dtype") in ("fp32", "bf16"), f"`dtype` must be fp32 or bf16, got {cfg.get('dtype')!r}.")
    require(cfg.get("device") in ("cpu", "cuda"), f"`device` must be cpu or cuda, got {cfg.get('device')!r}.")
    require(isinstance(cfg.get("seed"), int), f"`seed` must be an integer, got {cfg.get('seed')!r}.")


def checkpoint_files(checkpointer: DictConfig) -> list[str]:
    """File names of ``checkpointer.checkpoint_files``, a list or torchtune's ``{filename_format, max_filename}``."""
    files = _plain(checkpointer.get("checkpoint_files"))
    if isinstance(files, dict):
        require(
            {"filename_format", "max_filename"} <= set(files),
            "checkpointer.checkpoint_files as a mapping needs filename_format and max_filename.",
        )
        width, last = len(files["max_filename"]), int(files["max_filename"])
        return [files["filename_format"].format(str(i).zfill(width), files["max_filename"]) for i in range(1, last + 1)]
    require(
        isinstance(files, list) and files and all(isinstance(f, str) for f in files),
        f"checkpointer.checkpoint_files must be a non-empty list of file names, got {files!r}.",
    )
    return files


def check_input_files(cfg: DictConfig, base_checkpoint: bool = True) -> None:
    """The tokenizer files and (unless resuming from output_dir) the base checkpoint exist."""
    if base_checkpoint:
        ckpt_dir = Path(str(cfg.checkpointer.get("checkpoint_dir")))
        require(ckpt_dir.is_dir(), f"checkpointer.checkpoint_dir does not exist: {ckpt_dir}")
        for name in ["config.json", *checkpoint_files(cfg.checkpointer)]:
            require((ckpt_dir / name).is_file(), f"Checkpoint file not found: {ckpt_dir / name} (checkpointer).")
    for key in ("path", "merges_file", "special_tokens_path"):
        value = cfg.tokenizer.get(key)
        if value is not None:
            require(Path(str(value)).is_file(), f"tokenizer.{key} file not found: {value}")
