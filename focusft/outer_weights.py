"""What the outer loop trains: the whole model, or the LoRA adapters of a frozen base.

The recipe holds one of these objects and calls it at four points (after building the
decoder, to load weights, to pick the optimizer's parameters, to gather a checkpoint's
weights), so full fine-tuning and LoRA / QLoRA share every other line of the recipe. The
model component decides: a torchtune LoRA builder (``lora_qwen2_5_*``, with ``lora_rank``)
selects :class:`focusft.lora.LoRAWeights` (docs/DESIGN.md section 3b).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torchtune import training

from focusft.errors import ConfigError
from focusft.lora import LORA_MODEL_ARGS, LoRASettings, LoRAWeights

ADAPTER_ONLY_KEY = "save_adapter_weights_only"  # torchtune's LoRA-recipe key, same meaning for the end of training


class FullWeights:
    """Full fine-tuning: every weight trains, and every checkpoint holds the whole model."""

    adapter = False

    def prepare(self, decoder: nn.Module) -> None:
        """Nothing to freeze."""

    def describe(self) -> str:
        return "full fine-tuning"

    def load(self, model: nn.Module, checkpoints, device: torch.device, prefix: str = "decoder.") -> None:
        """The base weights, or those of the checkpoint resumed from, into the sharded model."""
        state = {f"{prefix}{k}": v for k, v in checkpoints.load_model_state().items()}
        training.load_from_full_model_state_dict(model, state, device, strict=True)

    def checkpoint(
        self, model: nn.Module, is_rank_zero: bool, device: torch.device, final: bool, prefix: str = "decoder."
    ) -> tuple[dict[str, torch.Tensor], None]:
        """(full model state, no adapter); collective, filled on rank 0 only."""
        state = training.gather_cpu_state_dict(model, is_rank_zero, device=device)
        return {k.removeprefix(prefix): v for k, v in state.items()}, None


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the optimizer gets: the parameters that require grad (all of them in full fine-tuning)."""
    return [p for p in model.parameters() if p.requires_grad]


def outer_weights(cfg: DictConfig) -> FullWeights | LoRAWeights:
    """The outer loop the config's ``model`` component asks for; checked before any model is built."""
    model: Any = cfg.model
    adapter_only = cfg.get(ADAPTER_ONLY_KEY, False)
    if not isinstance(adapter_only, bool):
        raise ConfigError(f"`{ADAPTER_ONLY_KEY}` must be true or false, got {adapter_only!r}.")
    if not any(key in model for key in LORA_MODEL_ARGS):
        if adapter_only:
            raise ConfigError(
                f"`{ADAPTER_ONLY_KEY}: true` needs a LoRA model (model._component_ a torchtune lora_* builder); "
                f"{model.get('_component_')} trains the full model."
            )
        return FullWeights()
    return LoRAWeights(LoRASettings.from_model_config(model), adapter_only=adapter_only)
