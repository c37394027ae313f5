"""Training-time attention probe: sink mass and context engagement of a fixed sample, every N steps.

The recipe's top-level ``attention_probe`` section (off unless ``every_n_steps`` is set)::

    attention_probe:
      every_n_steps: 50     # also measured once before the first step
      sample_index: 0       # dataset item to probe (a packed row: its first document)
      mask: training        # training (= focusft.attention) | causal | bidir_context

The probe measures θ alone (no fast weights: the model that is saved) in a no-grad
forward through the sharded model, which every rank runs (FSDP2 gathers each layer's
weights on all ranks); between probe steps it costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchtune.models.qwen2_5._tokenizer import Qwen2_5Tokenizer

from focusft.analysis.measure import measure_attention
from focusft.analysis.sample import SampleError, item_sample
from focusft.config import ConfigError
from focusft.masks import MASK_MODES, MaskMode
from focusft.split_decoder import IGNORE_INDEX, SplitDecoder

PROBE_KEYS = ("every_n_steps", "sample_index", "mask")
PROBE_MASKS = ("training", *MASK_MODES)


@dataclass(frozen=True)
class AttentionProbeConfig:
    """The parsed ``attention_probe`` section."""

    every_n_steps: int | None = None
    sample_index: int = 0
    mask: str = "training"

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> AttentionProbeConfig:
        values = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ConfigError(f"attention_probe must be a mapping of settings, got {values!r}.")
        unknown = sorted(set(values) - set(PROBE_KEYS))
        if unknown:
            raise ConfigError(f"Unknown key(s) in attention_probe: {unknown}. Valid keys: {list(PROBE_KEYS)}.")
        config = cls(**values)
        if config.every_n_steps is not None and not _is_int(config.every_n_steps, 1):
            raise ConfigError(
                f"attention_probe.every_n_steps must be null or an integer >= 1, got {config.every_n_steps!r}."
            )
        if not _is_int(config.sample_index, 0):
            raise ConfigError(f"attention_probe.sample_index must be an integer >= 0, got {config.sample_index!r}.")
        if config.mask not in PROBE_MASKS:
            raise ConfigError(f"attention_probe.mask must be one of {list(PROBE_MASKS)}, got {config.mask!r}.")
        return config


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


class AttentionProbe:
    """Measures the probe sample on the recipe's model and returns the metrics to log."""

    def __init__(
        self,
        config: AttentionProbeConfig,
        dataset: Sequence[Mapping[str, list]],
        tokenizer: Qwen2_5Tokenizer,
        training_mask: MaskMode,
        mask_kind: str,
        device: torch.device,
    ) -> None:
        if config.every_n_steps is None:
            raise ValueError("AttentionProbe needs attention_probe.every_n_steps.")
        if config.sample_index >= len(dataset):
            raise ConfigError(
                f"attention_probe.sample_index is {config.sample_index}, but the dataset has {len(dataset)} items."
            )
        try:
            self.sample = item_sample(dataset[config.sample_index], tokenizer, f"dataset item {config.sample_index}")
        except SampleError as err:
            raise ConfigError(f"attention_probe.sample_index: {err}") from None
        self.every_n_steps = config.every_n_steps
        self.mode: MaskMode = training_mask if config.mask == "training" else config.mask  # type: ignore[assignment]
        self.mask_kind = mask_kind
        self.device = device

    def due(self, step: int) -> bool:
        return step % self.every_n_steps == 0

    def measure(self, model: SplitDecoder) -> dict[str, float]:
        """``attention/*`` metrics of the probe sample; a collective call under FSDP2 (every rank must call it)."""

        def forward(tokens: torch.Tensor, mask, input_pos: torch.Tensor) -> None:
            hidden = model("trunk", tokens, mask=mask, input_pos=input_pos)
            model("head", hidden, mask=mask, input_pos=input_pos, labels=torch.full_like(tokens, IGNORE_INDEX))

        metrics = measure_attention(
            model.decoder.layers,
            forward,
            self.sample,
            self.mode,
            device=self.device,
            mask_kind=self.mask_kind,
            with_heatmap=False,
        )
        budget = metrics.budget()
        return {
            "attention/sink_mass": budget["sink"],
            "attention/context_engagement": metrics.context_engagement,
            "attention/prompt": budget["prompt"],
            "attention/tool": budget["tool"],
            "attention/response": budget["response"],
        }
