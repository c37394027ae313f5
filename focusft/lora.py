"""The LoRA / QLoRA outer loop: what trains, how adapters start, and what a checkpoint holds.

docs/DESIGN.md section 3b: θ is the outer LoRA parameters of torchtune's LoRA builders
(``torchtune.models.qwen2_5.lora_qwen2_5_*``; NF4 base under ``quantize_base: True``), the
base stays frozen, and the per-document fast weights φ are added on top of whatever the
adapted projection computes (:func:`focusft.fast_weights.add_fast_weight_slots`). The
LoRA mechanics are torchtune's (``torchtune.modules.peft``); this module only decides
which of them the FocuSFT recipe calls, and when.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchtune import training
from torchtune.models.qwen2 import qwen2_hf_to_tune, qwen2_tune_to_hf
from torchtune.modules.peft import (
    DoRALinear,
    LoRALinear,
    get_adapter_params,
    get_adapter_state_dict,
    get_lora_module_names,
    get_merged_lora_ckpt,
    set_trainable_params,
    validate_missing_and_unexpected_for_lora,
)

from focusft.errors import ConfigError

# Arguments every torchtune LoRA model builder takes: how the recipe tells a LoRA model config.
LORA_MODEL_ARGS = ("lora_attn_modules", "lora_rank", "lora_alpha")


@dataclass(frozen=True)
class LoRASettings:
    """The outer LoRA of a ``model:`` config section (torchtune's builder arguments)."""

    rank: int
    alpha: float
    attn_modules: tuple[str, ...]
    mlp: bool
    output: bool

    @classmethod
    def from_model_config(cls, cfg_model: Mapping[str, Any]) -> LoRASettings:
        """Read the LoRA builder arguments; a full-model builder is a ConfigError naming what is missing."""
        missing = [key for key in LORA_MODEL_ARGS if key not in cfg_model]
        if missing:
            raise ConfigError(
                f"model {cfg_model.get('_component_')} is not a LoRA model: the LoRA recipe needs a torchtune LoRA "
                f"builder (e.g. torchtune.models.qwen2_5.lora_qwen2_5_7b_base) with {list(LORA_MODEL_ARGS)}; "
                f"missing {missing}. For full fine-tuning use recipes/focusft_distributed.py."
            )
        settings = cls(
            rank=cfg_model["lora_rank"],
            alpha=cfg_model["lora_alpha"],
            attn_modules=tuple(cfg_model["lora_attn_modules"]),
            mlp=bool(cfg_model.get("apply_lora_to_mlp", False)),
            output=bool(cfg_model.get("apply_lora_to_output", False)),
        )
        if not (settings.attn_modules or settings.mlp or settings.output):
            raise ConfigError("model: the LoRA builder adapts nothing (no lora_attn_modules, no MLP, no output).")
        if cfg_model.get("use_dora", False):
            raise ConfigError("model.use_dora: DoRA adapters are not supported by the FocuSFT LoRA recipe.")
        return settings

    @property
    def module_names(self) -> list[str]:
        """torchtune names of the adapted projections (``q_proj`` … ``w1``, ``w2``, ``w3``, ``output``)."""
        return get_lora_module_names(list(self.attn_modules), self.mlp, self.output)

    def peft_config(self) -> dict[str, Any]:
        """The adapter config torchtune's HF checkpointer turns into PEFT's ``adapter_config.json``."""
        return {"r": self.rank, "lora_alpha": self.alpha, "target_modules": self.module_names, "peft_type": "LORA"}


def freeze_base(model: nn.Module) -> int:
    """Make only the adapter parameters trainable; returns how many elements train."""
    adapter = get_adapter_params(model)
    if not adapter:
        raise ConfigError("The model has no LoRA adapter parameters to train (check the model builder).")
    set_trainable_params(model, adapter)
    return sum(p.numel() for p in adapter.values())


def init_adapters(model: nn.Module, device: torch.device) -> None:
    """Materialise and initialise the adapters of a model built on the meta device (A random, B = 0)."""
    for module in model.modules():
        if isinstance(module, (LoRALinear, DoRALinear)):
            module.to_empty(device=device)
            module.initialize_parameters()


def check_loaded_keys(
    settings: LoRASettings, base: tuple[list[str], list[str]], adapter: tuple[list[str], list[str]] | None
) -> None:
    """torchtune's check that the base checkpoint filled every base weight and the adapter every LoRA weight.

    ``base`` and ``adapter`` are the (missing, unexpected) keys of each load, without the
    wrapper prefix; torchtune's AssertionError becomes a one-line ConfigError.
    """
    try:
        validate_missing_and_unexpected_for_lora(
            lora_attn_modules=list(settings.attn_modules),
            apply_lora_to_mlp=settings.mlp,
            apply_lora_to_output=settings.output,
            base_missing=base[0],
            base_unexpected=base[1],
            lora_missing=adapter[0] if adapter else None,
            lora_unexpected=adapter[1] if adapter else None,
        )
    except AssertionError as error:
        raise ConfigError(f"The checkpoint does not fit the LoRA model: {error}") from None


def adapter_state(model_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a full (torchtune-named) state dict."""
    return get_adapter_state_dict(dict(model_state), device=None)


def merged_state(model_state: Mapping[str, torch.Tensor], settings: LoRASettings) -> dict[str, torch.Tensor]:
    """Base + (alpha / rank) · B A folded into each adapted weight: a plain model's state dict."""
    return get_merged_lora_ckpt(dict(model_state), rank=settings.rank, alpha=settings.alpha)


class LoRAWeights:
    """The outer loop trains the LoRA adapters of a frozen (possibly NF4) base.

    The recipe's side of :class:`focusft.outer_weights.FullWeights`' interface: freeze,
    load (base from ``checkpoint_dir``, adapter from the checkpoint resumed from),
    the parameters to optimise, and the weights of a checkpoint (the adapter at every
    save; the merged model too at the end of training unless ``adapter_only``).
    """

    adapter = True

    def __init__(self, settings: LoRASettings, adapter_only: bool = False):
        self.settings = settings
        self.adapter_only = adapter_only
        self.trainable_count = 0

    def prepare(self, decoder: nn.Module) -> None:
        """Freeze the base; call on the freshly built decoder, before sharding."""
        self.trainable_count = freeze_base(decoder)

    def describe(self) -> str:
        s = self.settings
        return (
            f"LoRA rank {s.rank} (alpha {s.alpha}) on {', '.join(s.module_names)}: "
            f"{self.trainable_count:,} trainable parameters"
        )

    def load(self, model: nn.Module, checkpoints, device: torch.device, prefix: str = "decoder.") -> None:
        """Initialise the adapters, then load the base weights and (on resume) the saved adapter."""
        init_adapters(model, device)
        base = {f"{prefix}{k}": v for k, v in checkpoints.load_model_state().items()}
        base_keys = training.load_from_full_model_state_dict(model, base, device, strict=False)
        adapter_keys = None
        saved = checkpoints.load_adapter_state()
        if saved is not None:
            adapter_keys = training.load_from_full_model_state_dict(
                model, {f"{prefix}{k}": v for k, v in saved.items()}, device, strict=False
            )
        check_loaded_keys(
            self.settings,
            _strip(base_keys, prefix),
            _strip(adapter_keys, prefix) if adapter_keys is not None else None,
        )

    def checkpoint(
        self, model: nn.Module, is_rank_zero: bool, device: torch.device, final: bool, prefix: str = "decoder."
    ) -> tuple[dict[str, torch.Tensor] | None, tuple[dict[str, torch.Tensor], dict[str, Any]] | None]:
        """(merged model state or None, (adapter state, adapter config)); collective, filled on rank 0 only."""
        merge = final and not self.adapter_only
        state = training.gather_cpu_state_dict(model, is_rank_zero, device=device, adapter_weights_only=not merge)
        state = {k.removeprefix(prefix): v for k, v in state.items()}
        adapter = adapter_state(state) if merge else state
        return (merged_state(state, self.settings) if merge else None), (adapter, self.settings.peft_config())


def _strip(keys: Any, prefix: str) -> tuple[list[str], list[str]]:
    """(missing, unexpected) of a load, names without the wrapper's prefix."""
    missing, unexpected = keys
    return [k.removeprefix(prefix) for k in missing], [k.removeprefix(prefix) for k in unexpected]


# PEFT names a LoRA tensor of HF module ``X`` ``base_model.model.X.lora_A.weight`` (and ``lora_B``).
PEFT_PREFIX = "base_model.model."
_PEFT_MATRIX = {"lora_a": "lora_A", "lora_b": "lora_B"}


def _hf_name(tune_module: str) -> str:
    """HF name of a torchtune Qwen2 module (``layers.0.attn.q_proj`` -> ``model.layers.0.self_attn.q_proj``)."""
    # The conversion only renames keys for Qwen2 (no q/k permutation); the sizes it takes are unused.
    (key,) = qwen2_tune_to_hf({f"{tune_module}.weight": None}, num_heads=1, num_kv_heads=1, dim=1)
    return key.removesuffix(".weight")


def _tune_name(hf_module: str) -> str:
    (key,) = qwen2_hf_to_tune({f"{hf_module}.weight": None}, num_heads=1, num_kv_heads=1, dim=1)
    return key.removesuffix(".weight")


def peft_adapter_weights(adapter: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchtune-named Qwen2 LoRA tensors under PEFT's names, unchanged.

    torchtune 0.6.1's generic ``tune_to_peft_adapter_weights`` permutes the q/k ``lora_B``
    rows as for Llama checkpoints; torchtune's Qwen2 keeps HF's q/k layout, so that
    permutation would load a different adapter in PEFT. Raises ValueError on a non-LoRA key.
    """
    out = {}
    for key, value in adapter.items():
        module, _, matrix = key.removesuffix(".weight").rpartition(".")
        if matrix not in _PEFT_MATRIX or not key.endswith(".weight"):
            raise ValueError(f"{key} is not a LoRA A/B weight.")
        out[f"{PEFT_PREFIX}{_hf_name(module)}.{_PEFT_MATRIX[matrix]}.weight"] = value.contiguous()
    return out


def merge_peft_adapter(
    state: dict[str, torch.Tensor], peft_weights: Mapping[str, torch.Tensor], peft_config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Fold a PEFT LoRA adapter into a torchtune-named Qwen2 state dict: ``W += (alpha / r) · B A``.

    Only plain LoRA is accepted (no DoRA, rsLoRA, per-module ranks or saved whole modules);
    raises ValueError naming what does not fit.
    """
    extras = ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern", "modules_to_save")
    unsupported = [key for key in extras if peft_config.get(key)]
    if peft_config.get("peft_type", "LORA") != "LORA" or unsupported:
        found = unsupported or peft_config["peft_type"]
        raise ValueError(f"only plain LoRA adapters can be merged; this one has {found}.")
    scale = peft_config["lora_alpha"] / peft_config["r"]
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in peft_weights.items():
        module, _, matrix = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").rpartition(".")
        if matrix not in ("lora_A", "lora_B"):
            raise ValueError(f"adapter tensor {key} is not a LoRA A/B weight.")
        pairs.setdefault(module, {})[matrix] = value
    merged = dict(state)
    for module, pair in pairs.items():
        target = f"{_tune_name(module)}.weight"
        if target not in merged or set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"adapter module {module} has no A/B pair for a weight of the base model ({target}).")
        weight = merged[target]
        delta = scale * (pair["lora_B"].to(torch.float32) @ pair["lora_A"].to(torch.float32))
        merged[target] = (weight.to(torch.float32) + delta).to(weight.dtype)
    return merged
