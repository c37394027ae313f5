"""The base directory and components are checked before training: each broken input is one named error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from focusft.base_checks import check_base_checkpoint, check_tokenizer_files
from focusft.checkpointing import CheckpointError
from focusft.components import check_components
from focusft.errors import ConfigError
from focusft.tiny import write_tiny_checkpoint
from tests.conftest import SHIPPED_CONFIG

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture
def base(pristine, tmp_path) -> Path:
    """A fresh copy of the tiny base directory, for a test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "base"))


def recipe_cfg(base: Path, **updates):
    cfg = OmegaConf.load(SHIPPED_CONFIG)
    cfg.base_dir = str(base)
    for key, value in updates.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def rewrite(base: Path, change) -> None:
    state = load_file(base / WEIGHTS)
    change(state)
    save_file(state, base / WEIGHTS, metadata={"format": "pt"})


def edit_json(path: Path, **fields) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def test_the_tiny_base_passes(base):
    check_base_checkpoint(recipe_cfg(base))


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_an_unreadable_weight_file_is_named(base, damage):
    path = base / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000] if damage == "truncated" else bytes(range(256)) * 64)
    with pytest.raises(CheckpointError, match=rf"base weight file {path} is not a readable safetensors file"):
        check_base_checkpoint(recipe_cfg(base))


@pytest.mark.parametrize(
    ("field", "value", "found"),
    [
        ("hidden_size", 128, 64),
        ("num_hidden_layers", 2, 4),
        ("intermediate_size", 256, 128),
        ("vocab_size", 2048, 1024),
    ],
)
def test_a_config_json_that_contradicts_the_weights_stops_before_training(base, field, value, found):
    edit_json(base / "config.json", **{field: value})
    with pytest.raises(
        CheckpointError, match=rf"contradicts the weights next to it: {field} {value} \(the weights have {found}\)"
    ):
        check_base_checkpoint(recipe_cfg(base))


def test_a_weight_of_the_wrong_shape_names_the_tensor_and_both_shapes(base):
    cfg = recipe_cfg(base, **{"model.intermediate_dim": 96})
    with pytest.raises(
        CheckpointError,
        match=r"base weight model\.layers\.\d\.mlp\.\w+_proj\.weight in model\.safetensors has shape "
        r"\[(128, 64|64, 128)\], but the model \(focusft\.tiny\.tiny_qwen2_5\) expects \[(96, 64|64, 96)\]",
    ):
        check_base_checkpoint(cfg)


def test_missing_and_foreign_weights_are_named(base):
    rewrite(base, lambda state: state.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match=r"needs weight\(s\) \['norm.scale'\]"):
        check_base_checkpoint(recipe_cfg(base))
    rewrite(base, lambda state: state.update({"model.norm.weight": torch.ones(64), "vision.proj": torch.ones(2)}))
    with pytest.raises(
        CheckpointError, match=r"base weight vision\.proj in model\.safetensors has no place in the model"
    ):
        check_base_checkpoint(recipe_cfg(base))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_base_weights_are_named_as_in_the_file(base, bad):
    def poison(state):
        state["model.layers.2.self_attn.v_proj.bias"][3] = bad

    rewrite(base, poison)
    name = "model.layers.2.self_attn.v_proj.bias"
    with pytest.raises(CheckpointError, match=rf"base weight {name} in {base / WEIGHTS} holds 1 NaN or infinite value"):
        check_base_checkpoint(recipe_cfg(base))


def test_tokenizer_files_that_do_not_parse_or_lack_im_end(base, pristine):
    tokenizer = recipe_cfg(base).tokenizer
    check_tokenizer_files(tokenizer)
    (base / "vocab.json").write_text('{"a": 1,')
    with pytest.raises(ConfigError, match=rf"tokenizer.path {base / 'vocab.json'} is not valid JSON"):
        check_tokenizer_files(tokenizer)
    shutil.copy(pristine / "vocab.json", base / "vocab.json")
    spec = json.loads((base / "tokenizer.json").read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<|im_end|>"]
    (base / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(
        ConfigError, match=r"tokenizer.special_tokens_path .* has no <\|im_end\|> among its added_tokens"
    ):
        check_tokenizer_files(tokenizer)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "model._component_",
            "focusft.tiny.no_such_model",
            "`model._component_` 'focusft.tiny.no_such_model' cannot be imported",
        ),
        (
            "model.num_layer",
            2,
            "model (focusft.tiny.tiny_qwen2_5) cannot be built: TinyQwenConfig.__init__() got an unexpected keyword "
            "argument 'num_layer'",
        ),
        ("tokenizer.max_seq_le", 8, "`tokenizer.max_seq_le` (did you mean `tokenizer.max_seq_len`?)"),
        (
            "optimizer._component_",
            "torch.optim.AdamX",
            "`optimizer._component_` 'torch.optim.AdamX' cannot be imported",
        ),
        (
            "optimizer.betas",
            [0.9, 2.0],
            "optimizer (torch.optim.AdamW) cannot be built: Invalid beta parameter at index 1: 2.0",
        ),
        (
            "lr_scheduler.num_cycles",
            "x",
            "lr_scheduler (torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup) cannot be built",
        ),
        ("metric_logger._component_", "torchtune.training.metric_logging.NoLogger", "`metric_logger._component_`"),
        ("checkpointer.model_typ", "QWEN2", "`checkpointer.model_typ` (did you mean `checkpointer.model_type`?)"),
    ],
)
def test_every_component_and_its_arguments_are_checked_up_front(base, key, value, message):
    with pytest.raises(ConfigError) as error:
        check_components(recipe_cfg(base, **{key: value}))
    assert message in str(error.value)
