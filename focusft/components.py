"""Every ``_component_`` of a recipe config checked before any data or weights are read.

torchtune instantiates each component where the recipe first needs it, so an unknown
``_component_`` or a wrong argument of the model surfaced only after the dataset was built
(49 s for 100k rows). Here each component is imported and its keys are compared with its
builder's parameters (a did-you-mean for typos), and the cheap ones are built for real:
the model on the meta device (no memory), the optimizer and the LR scheduler on one dummy
parameter, so that a bad value fails with the builder's own message, in one line.
"""

from __future__ import annotations

import os
from collections.abc import Collection

import torch
from omegaconf import DictConfig, OmegaConf
from torchtune import config

from focusft.config import check_component_arguments, import_object
from focusft.errors import ConfigError

# Sections built from `_component_` (the dataset is checked by focusft.config.check_known_keys).
COMPONENTS = ("model", "tokenizer", "checkpointer", "optimizer", "lr_scheduler", "metric_logger")


def check_components(cfg: DictConfig, added: Collection[str] = ()) -> None:
    """Import each component and check its keys; then build the model (meta), optimizer and scheduler."""
    for key in COMPONENTS:
        section = cfg.get(key)
        if section is None:
            continue
        if not isinstance(section, DictConfig) or "_component_" not in section:
            raise ConfigError(f"`{key}` must be a mapping with a `_component_`, got {section!r}.")
        builder = import_object(section._component_, f"{key}._component_")
        check_component_arguments(builder, section, f"{key}.", {a.removeprefix(f"{key}.") for a in added})
    build_meta_model(cfg.model)
    # On the run's own device: some optimizers (fused, 8-bit) accept only parameters on the GPU.
    cuda = cfg.get("device") == "cuda" and torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    optimizer = _build("optimizer", cfg.optimizer, [torch.nn.Parameter(torch.zeros(1, device=device))])
    scheduler = cfg.get("lr_scheduler")
    if scheduler is not None:
        warmup = {} if "num_warmup_steps" in scheduler else {"num_warmup_steps": 0}
        _build("lr_scheduler", scheduler, optimizer, num_training_steps=10, **warmup)


def build_meta_model(cfg_model: DictConfig) -> torch.nn.Module:
    """The configured model on the meta device (no memory): its builder and arguments are checked.

    A QLoRA model is built with ``quantize_base: False``: the same builder, arguments, parameter
    names and shapes, without the NF4 conversion, which on the meta device takes minutes for 72B.
    """
    if cfg_model.get("quantize_base"):
        cfg_model = OmegaConf.merge(cfg_model, {"quantize_base": False})
    with torch.device("meta"):
        return _build("model", cfg_model)


def _build(key: str, section: DictConfig, *args, **kwargs):
    try:
        return config.instantiate(section, *args, **kwargs)
    except Exception as error:  # noqa: BLE001 - whatever the builder raises is a config error here
        raise ConfigError(f"{key} ({section.get('_component_')}) cannot be built: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
