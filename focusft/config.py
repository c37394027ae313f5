"""The ``focusft:`` section of a recipe config, and the checks run before any model is built.

One section selects the paper's four variants (docs/DESIGN.md section 3)::

    Standard SFT     focusft.bilevel=false focusft.attention=causal
    SFT + Bidir      focusft.bilevel=false focusft.attention=bidir_context
    Causal Bilevel   focusft.bilevel=true  focusft.attention=causal
    FocuSFT          focusft.bilevel=true  focusft.attention=bidir_context
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from focusft.bilevel import InnerLoopConfig
from focusft.documents import FAST_WEIGHT_SCOPES, FastWeightScope
from focusft.errors import ConfigError
from focusft.fast_weights import FastWeightConfig
from focusft.masks import MASK_KINDS as _KINDS
from focusft.masks import MASK_MODES, MaskKind, MaskMode
from focusft.normalization import LOSS_NORMALIZATIONS, LossNormalization
from focusft.row_block_attention import unavailable_reason
from focusft.run_guard import unwritable_reason

MASK_KINDS = ("auto", *_KINDS)

# Key of the focusft section -> (field of the config it feeds, name of that field).
_INNER_KEYS = {"inner_steps": "steps", "inner_lr": "lr", "inner_grad_clip": "grad_clip"}
_FAST_KEYS = {"rank": "rank", "alpha": "alpha", "layer_fraction": "layer_fraction", "target_modules": "target_modules"}
FOCUSFT_KEYS = ("bilevel", "attention", "mask", "fast_weight_scope", "loss_normalization", *_INNER_KEYS, *_FAST_KEYS)

# Every top-level key the recipe reads. Any other key is a typo unless it was added on
# purpose with `+key=value` or is referenced by an interpolation (`base_dir: …` used as
# `${base_dir}/vocab.json`). Extend this tuple when the recipe reads a new key.
RECIPE_KEYS: tuple[str, ...] = (
    # components
    "model",
    "tokenizer",
    "checkpointer",
    "dataset",
    "optimizer",
    "lr_scheduler",
    "metric_logger",
    "focusft",
    "attention_probe",
    # data
    "seed",
    "shuffle",
    "length_grouped",
    "collate_fn",
    "batch_size",
    "gradient_accumulation_steps",
    # schedule
    "epochs",
    "max_steps_per_epoch",
    "warmup_ratio",
    "clip_grad_norm",
    # hardware
    "device",
    "dtype",
    "enable_activation_checkpointing",
    "enable_inner_activation_checkpointing",
    "enable_activation_offloading",
    "ffn_tile_tokens",
    "compile",
    "fsdp_reshard_after_forward",
    "sequence_parallel_size",
    # checkpoints and logging
    "output_dir",
    "save_every_n_steps",
    "stop_after_step",
    "resume_from_checkpoint",
    "keep_recipe_states",
    "save_adapter_weights_only",  # LoRA models: no merged model at the end
    "log_every_n_steps",
    # numerics
    "max_consecutive_skipped_steps",
)
ADDITION_PREFIX = "+"  # `+key=value` on the command line: a key added on purpose

VARIANTS = {
    (False, "causal"): "Standard SFT",
    (False, "bidir_context"): "SFT + Bidir",
    (True, "causal"): "Causal Bilevel",
    (True, "bidir_context"): "FocuSFT",
}


@dataclass(frozen=True)
class FocusConfig:
    """The parsed ``focusft`` section (paper Table 5 defaults)."""

    bilevel: bool = True
    attention: MaskMode = "bidir_context"
    mask: str = "auto"
    fast_weight_scope: FastWeightScope = "document"
    loss_normalization: LossNormalization = "token"
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
        normalization = values.get("loss_normalization", "token")
        if normalization not in LOSS_NORMALIZATIONS:
            raise ConfigError(
                f"focusft.loss_normalization must be one of {list(LOSS_NORMALIZATIONS)}, got {normalization!r}."
            )
        inner = _build(InnerLoopConfig, values, _INNER_KEYS)
        fast_weights = _build(FastWeightConfig, values, _FAST_KEYS)
        return cls(
            bilevel=bilevel,
            attention=attention,
            mask=mask,
            fast_weight_scope=scope,
            loss_normalization=normalization,
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

    def mask_kind(self, device: torch.device, training: bool = True) -> MaskKind:
        """``auto``: a FlexAttention BlockMask where torchtune runs FlexAttention (CUDA sm75+); on a CPU the
        row-block mask for training (:mod:`focusft.row_block_attention`: no ``[b, s, s]`` tensor) and the
        dense mask for a plain decoder's forward (``training=False``: analysis); dense elsewhere.
        """
        flex = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 5)
        if self.mask == "block" and not flex:
            raise ConfigError(
                "focusft.mask=block needs a CUDA GPU with FlexAttention (compute capability 7.5+); "
                f"this run is on {device}. Use focusft.mask=dense or auto."
            )
        if self.mask == "rows":
            reason = unavailable_reason() if device.type == "cpu" else f"this run is on {device}"
            if reason:
                raise ConfigError(f"focusft.mask=rows runs the CPU flash-attention kernel; {reason}. Use auto.")
        if self.mask == "auto":
            if flex:
                return "block"
            rows = training and device.type == "cpu" and unavailable_reason() is None
            return "rows" if rows else "dense"
        return self.mask  # type: ignore[return-value]


def accept_additions(cfg: DictConfig) -> tuple[DictConfig, set[str]]:
    """Merge `+key=value` overrides into the config as `key`, returning the dotted keys added that way.

    torchtune's parser stores ``+dataset.foo=1`` as a key ``+dataset``; here it becomes
    ``dataset.foo`` and is exempt from the unknown-key check.
    """
    added: set[str] = set()
    additions = {}
    for key in [k for k in cfg if str(k).startswith(ADDITION_PREFIX)]:
        name = str(key)[len(ADDITION_PREFIX) :]
        value = cfg[key]
        additions[name] = value
        if isinstance(value, DictConfig):
            added |= {f"{name}.{sub}" for sub in value}
        else:
            added.add(name)
        del cfg[key]
    return OmegaConf.merge(cfg, additions), added


def _interpolated_names(cfg: DictConfig) -> set[str]:
    """Top-level names that some value refers to as ``${name…}``."""
    return set(re.findall(r"\$\{\s*([A-Za-z_]\w*)", OmegaConf.to_yaml(cfg, resolve=False)))


def _unknown(keys: list[str], known: tuple[str, ...] | list[str], where: str) -> str:
    parts = []
    for key in keys:
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"`{where}{key}`" + (f" (did you mean `{where}{close[0]}`?)" if close else ""))
    return ", ".join(parts)


def check_known_keys(cfg: DictConfig, added: Collection[str] = ()) -> None:
    """Unknown top-level keys and unknown ``dataset`` arguments are errors, with a did-you-mean."""
    allowed = set(RECIPE_KEYS) | _interpolated_names(cfg) | set(added)
    unknown = [str(k) for k in cfg if str(k) not in allowed]
    require(
        not unknown,
        f"Unknown config key(s) {_unknown(unknown, RECIPE_KEYS, '')}. "
        "To add a key on purpose, write it as `+key=value`.",
    )
    dataset = cfg.get("dataset")
    if isinstance(dataset, DictConfig) and "_component_" in dataset:
        builder = import_object(dataset._component_, "dataset._component_")
        check_component_arguments(builder, dataset, "dataset.", {k.removeprefix("dataset.") for k in added})


def import_object(path: Any, key: str) -> Any:
    """``package.module.name`` -> the object, or a ConfigError naming the key."""
    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"`{key}` {path!r} cannot be imported: {error}") from None


def check_component_arguments(builder: Any, section: DictConfig, where: str, added: Collection[str] = ()) -> None:
    """Keys of a component section that its builder does not take (or, if it takes ``**kwargs``, misspells)."""
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return
    named = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in parameters)
    keys = [str(k) for k in section if k != "_component_" and str(k) not in named and str(k) not in added]
    if takes_kwargs:  # other keys are passed on (e.g. to datasets.load_dataset); a near-miss is a typo
        keys = [k for k in keys if difflib.get_close_matches(k, named, n=1, cutoff=0.8)]
    require(
        not keys,
        f"Unknown key(s) {_unknown(keys, named, where)} for {section._component_}. "
        "To pass one on purpose, write it as `+key=value`.",
    )


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# Top-level switches a YAML or `key=value` override can set to any value: anything but true/false
# (or unset) would otherwise be read as truthy or falsy without a word.
BOOLEAN_SWITCHES = (
    "enable_activation_checkpointing",
    "enable_inner_activation_checkpointing",
    "enable_activation_offloading",
    "compile",
    "fsdp_reshard_after_forward",
    "save_adapter_weights_only",
    "shuffle",
    "length_grouped",
)


def check_training_values(cfg: DictConfig) -> None:
    """Ranges and types of the recipe's own top-level keys."""
    for key in ("output_dir", "model", "tokenizer", "checkpointer", "dataset", "optimizer", "metric_logger"):
        require(key in cfg and cfg[key] is not None, f"Config key `{key}` is required.")
    for key, minimum in (("batch_size", 1), ("gradient_accumulation_steps", 1), ("epochs", 1)):
        require(_is_int(cfg.get(key), minimum), f"`{key}` must be an integer >= {minimum}, got {cfg.get(key)!r}.")
    for key in ("max_steps_per_epoch", "save_every_n_steps", "stop_after_step", "ffn_tile_tokens"):
        value = cfg.get(key)
        require(value is None or _is_int(value, 1), f"`{key}` must be null or an integer >= 1, got {value!r}.")
    for key in BOOLEAN_SWITCHES:
        value = cfg.get(key)
        require(value is None or isinstance(value, bool), f"`{key}` must be true or false, got {value!r}.")
    for key, default in (("log_every_n_steps", 1), ("keep_recipe_states", 2), ("max_consecutive_skipped_steps", 10)):
        value = cfg.get(key, default)
        require(_is_int(value, 1), f"`{key}` must be an integer >= 1, got {value!r}.")
    clip = cfg.get("clip_grad_norm")
    require(
        clip is None or (isinstance(clip, (int, float)) and clip > 0),
        f"`clip_grad_norm` must be null or a number > 0, got {clip!r}.",
    )
    warmup = cfg.get("warmup_ratio")
    require(
        warmup is None or (_is_number(warmup) and 0 <= warmup < 1),
        f"`warmup_ratio` must be null or in [0, 1), got {warmup!r}.",
    )
    scheduler = cfg.get("lr_scheduler")
    if scheduler is not None and "num_warmup_steps" in scheduler:
        require(
            warmup is None,
            "Set either `warmup_ratio` or `lr_scheduler.num_warmup_steps`, not both "
            "(to use num_warmup_steps, also pass warmup_ratio=null).",
        )
        steps = scheduler.num_warmup_steps
        require(_is_int(steps, 0), f"`lr_scheduler.num_warmup_steps` must be an integer >= 0, got {steps!r}.")
    lr = cfg.optimizer.get("lr")
    require(
        lr is None or (_is_number(lr) and lr > 0),
        f"`optimizer.lr` must be a finite number > 0, got {lr!r}.",
    )
    require(cfg.get("dtype") in ("fp32", "bf16"), f"`dtype` must be fp32 or bf16, got {cfg.get('dtype')!r}.")
    require(cfg.get("device") in ("cpu", "cuda"), f"`device` must be cpu or cuda, got {cfg.get('device')!r}.")
    require(isinstance(cfg.get("seed"), int), f"`seed` must be an integer, got {cfg.get('seed')!r}.")


def check_device(cfg: DictConfig) -> None:
    """``device: cuda`` needs a visible GPU for this process (torchrun's LOCAL_RANK)."""
    if cfg.device != "cuda":
        return
    require(
        torch.cuda.is_available(),
        f"device=cuda, but this process sees no CUDA GPU (torch {torch.__version__}, "
        f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU-only build'}). "
        "Use device=cpu dtype=fp32, or run where a GPU is visible.",
    )
    local_rank, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    require(
        local_rank < count,
        f"Process with LOCAL_RANK {local_rank} has no GPU: only {count} visible. "
        "Set --nproc_per_node to at most the number of GPUs.",
    )


def check_output_dir(output_dir: Any) -> Path:
    """Create ``output_dir`` if needed and check that files can be written there."""
    path = Path(str(output_dir)).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"output_dir {path} cannot be created: {error.strerror or error}.") from None
    reason = unwritable_reason(path)
    require(reason is None, f"output_dir {reason}; choose another output_dir.")
    return path


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
    dataset = cfg.dataset
    if dataset.get("source") in ("json", "parquet"):
        require(
            dataset.get("data_files") is not None,
            f"dataset.source={dataset.source} needs dataset.data_files: a path or a list of paths.",
        )
        files = _plain(dataset.data_files)
        for name in [files] if isinstance(files, str) else files:
            require(Path(str(name)).is_file(), f"dataset.data_files file not found: {name}")


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {k: v for key, sub in value.items() for k, v in _flatten(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], keys: Collection[str]) -> list[str]:
    """``"key saved -> current"`` for each setting under ``keys`` that differs between two plain configs."""
    missing = object()
    before = {k: v for key in keys for k, v in _flatten(saved.get(key, missing), key).items()}
    after = {k: v for key in keys for k, v in _flatten(current.get(key, missing), key).items()}
    changed = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, missing), after.get(key, missing)
        if old != new:
            show = lambda v: "(unset)" if v is missing else repr(v)  # noqa: E731
            changed.append(f"{key} {show(old)} -> {show(new)}")
    return changed
