"""Read a Qwen2.5, Qwen3 or Llama 3 checkpoint directory of this project into torchtune's model and tokenizer.

A directory written by the recipe (``FullModelHFCheckpointer``: sharded
``model-*.safetensors`` + index, ``config.json``, tokenizer files), a real
Qwen2.5 download, and :func:`focusft.tiny.write_tiny_checkpoint` all share the
HF layout. A LoRA adapter directory (PEFT's ``adapter_config.json`` +
``adapter_model.safetensors``, as the recipe writes for a LoRA model) is read as its
base model (``base_model_name_or_path``) with the adapter merged into the weights.
Everything is validated up front so a wrong directory fails with the
file and field at fault, not deep inside torchtune.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torchtune import training
from torchtune.models.qwen2_5._tokenizer import Qwen2_5Tokenizer
from torchtune.modules import TransformerDecoder

from focusft.eval.errors import CheckpointError, EvalError
from focusft.lora import merge_peft_adapter
from focusft.models import FAMILIES, ModelDims, ModelFamily, family_for_model_type

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json")  # Qwen's; each family names its own
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # PEFT's file names
# Llama 3's scaled RoPE as torchtune's Llama3ScaledRoPE computes it (only the factor is a parameter).
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class QwenCheckpoint:
    """What ``config.json`` and ``tokenizer_config.json`` say about a Qwen2-architecture checkpoint."""

    path: Path
    tokenizer_path: Path  # directory of vocab.json, merges.txt, tokenizer.json (tokenizer_config.json)
    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_position_embeddings: int
    norm_eps: float
    rope_base: float
    tie_word_embeddings: bool
    dtype: str
    weight_files: tuple[str, ...]
    eos_token: str
    stop_token_ids: tuple[int, ...]  # config.json / generation_config.json eos ids: where HF generation stops
    model_type: str = "qwen2"  # config.json model_type of a registered family (focusft.models)
    head_dim: int = 0  # 0: embed_dim // num_heads
    rope_factor: float = 1.0  # Llama 3's RoPE scale factor
    adapter: Path | None = None  # a PEFT LoRA adapter directory merged into the weights on load

    @property
    def family(self) -> ModelFamily:
        return family_for_model_type(self.model_type)

    def build_model(self, max_seq_len: int | None = None) -> TransformerDecoder:
        """The family's torchtune decoder with these dimensions (random init; see :func:`load_model`)."""
        return self.family.build(
            ModelDims(
                vocab_size=self.vocab_size,
                num_layers=self.num_layers,
                num_heads=self.num_heads,
                num_kv_heads=self.num_kv_heads,
                embed_dim=self.embed_dim,
                intermediate_dim=self.intermediate_dim,
                max_seq_len=max_seq_len or self.max_position_embeddings,
                head_dim=self.head_dim or self.embed_dim // self.num_heads,
                norm_eps=self.norm_eps,
                rope_base=self.rope_base,
                rope_factor=self.rope_factor,
                tie_word_embeddings=self.tie_word_embeddings,
            )
        )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}.")
    return data


def _field(config: dict, path: Path, name: str, kind: type | tuple[type, ...]):
    if name not in config:
        raise CheckpointError(f"{path}: field '{name}' is missing.")
    value = config[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):  # JSON true is not a number
        raise CheckpointError(f"{path}: field '{name}' should be {getattr(kind, '__name__', kind)}, got {value!r}.")
    return value


def _rope_base(config: dict, path: Path) -> float:
    """``rope_theta``, or transformers 5's ``rope_parameters.rope_theta``; plain RoPE (Llama: Llama 3's scaled one)."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or ({} if params.get("rope_type", "default") == "default" else params)
    llama3_rope = {key: scaling.get(key) for key in _LLAMA3_ROPE} == _LLAMA3_ROPE
    if config.get("model_type") == "llama" and not llama3_rope:
        raise CheckpointError(f"{path}: field 'rope_scaling' is {scaling!r}; expected Llama 3's {_LLAMA3_ROPE}.")
    if scaling and config.get("model_type") != "llama":
        raise CheckpointError(
            f"{path}: field 'rope_scaling' is {scaling!r}; torchtune's Qwen2 model has plain RoPE only, "
            "so remove the scaling entry to evaluate within the native context length."
        )
    theta = config.get("rope_theta", params.get("rope_theta"))
    if not isinstance(theta, (int, float)) or isinstance(theta, bool):
        raise CheckpointError(f"{path}: field 'rope_theta' is missing or not a number.")
    return float(theta)


def _weight_files(directory: Path) -> tuple[str, ...]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: field 'weight_map' is missing or empty.")
        files = tuple(sorted(set(weight_map.values())))
    elif (directory / "model.safetensors").is_file():
        files = ("model.safetensors",)
    else:
        raise CheckpointError(
            f"{directory} holds no weights: expected model.safetensors or model.safetensors.index.json "
            "with its model-*.safetensors shards."
        )
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory} lacks the weight file(s) {missing} named in model.safetensors.index.json.")
    return files


def _eos_ids(directory: Path, config: dict) -> list[int]:
    ids: list[int] = []
    sources = [config]
    if (directory / "generation_config.json").is_file():
        sources.append(_read_json(directory / "generation_config.json"))
    for source in sources:
        value = source.get("eos_token_id")
        for token_id in value if isinstance(value, list) else [value]:
            if isinstance(token_id, int) and token_id not in ids:
                ids.append(token_id)
    return ids


def read_checkpoint(checkpoint_dir: str | Path, tokenizer_dir: str | Path | None = None) -> QwenCheckpoint:
    """Validate ``checkpoint_dir`` and return its description; raises :class:`CheckpointError`.

    The tokenizer files are read from ``tokenizer_dir`` (default: the checkpoint directory).
    """
    directory = Path(checkpoint_dir).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"Checkpoint directory {directory} does not exist (or is not a directory).")
    if (directory / ADAPTER_CONFIG).is_file():
        return _read_adapter(directory, tokenizer_dir)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no config.json; is it a checkpoint directory (epoch_N/ or step_K/)?")
    config = _read_json(config_path)
    model_type = config.get("model_type")
    try:
        family = family_for_model_type(model_type)
    except ValueError:
        known = sorted(f.hf_model_type for f in FAMILIES.values())
        raise CheckpointError(
            f"{config_path}: field 'model_type' is {model_type!r}; the focusft model loads {known} "
            "checkpoints (Qwen2.5, Qwen3, Llama 3) only. Use lm-eval's hf backend for other architectures."
        ) from None
    if config.get("use_sliding_window"):
        raise CheckpointError(f"{config_path}: field 'use_sliding_window' is true; torchtune's Qwen2 has no such mode.")
    embed_dim = _field(config, config_path, "hidden_size", int)
    num_heads = _field(config, config_path, "num_attention_heads", int)
    head_dim = config.get("head_dim", embed_dim // num_heads)
    if head_dim * num_heads != embed_dim and not family.any_head_dim:
        raise CheckpointError(
            f"{config_path}: field 'head_dim' is {head_dim}, but torchtune's builder needs "
            f"hidden_size / num_attention_heads = {embed_dim / num_heads}."
        )
    tokenizer_path = directory if tokenizer_dir is None else Path(tokenizer_dir).expanduser()
    tokenizer_files = family.tokenizer_files
    for name in tokenizer_files:
        if not (tokenizer_path / name).is_file():
            raise CheckpointError(
                f"{tokenizer_path} lacks the tokenizer file {name} (expected {list(tokenizer_files)}); "
                "pass tokenizer=<directory with them> if the checkpoint has none."
            )
    tokenizer_config_path = tokenizer_path / "tokenizer_config.json"
    tokenizer_config = _read_json(tokenizer_config_path) if tokenizer_config_path.is_file() else {}
    eos = tokenizer_config.get("eos_token") or "<|im_end|>"
    eos_token = eos["content"] if isinstance(eos, dict) else eos
    return QwenCheckpoint(
        path=directory,
        tokenizer_path=tokenizer_path,
        vocab_size=_field(config, config_path, "vocab_size", int),
        num_layers=_field(config, config_path, "num_hidden_layers", int),
        num_heads=num_heads,
        num_kv_heads=config.get("num_key_value_heads", num_heads),
        embed_dim=embed_dim,
        intermediate_dim=_field(config, config_path, "intermediate_size", int),
        max_position_embeddings=_field(config, config_path, "max_position_embeddings", int),
        norm_eps=float(_field(config, config_path, "rms_norm_eps", (int, float))),
        rope_base=_rope_base(config, config_path),
        tie_word_embeddings=_field(config, config_path, "tie_word_embeddings", bool),
        dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32"),
        weight_files=_weight_files(directory),
        eos_token=eos_token,
        stop_token_ids=tuple(_eos_ids(directory, config)),
        model_type=model_type,
        head_dim=head_dim,
        rope_factor=float(((config.get("rope_scaling") or config.get("rope_parameters") or {}).get("factor")) or 1.0),
    )


def _read_adapter(directory: Path, tokenizer_dir: str | Path | None) -> QwenCheckpoint:
    """A PEFT LoRA adapter directory: its base checkpoint (read as usual) plus the adapter to merge."""
    config = _read_json(directory / ADAPTER_CONFIG)
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{directory} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}.")
    base = config.get("base_model_name_or_path")
    if not base or not Path(base).expanduser().is_dir():
        raise CheckpointError(
            f"{directory / ADAPTER_CONFIG}: field 'base_model_name_or_path' is {base!r}, not a local directory; "
            "set it to the base model's checkpoint directory."
        )
    if tokenizer_dir is None and all((directory / name).is_file() for name in TOKENIZER_FILES):
        tokenizer_dir = directory
    return replace(read_checkpoint(base, tokenizer_dir), adapter=directory)


def resolve_dtype(name: str, checkpoint: QwenCheckpoint) -> torch.dtype:
    """``"auto"`` is the checkpoint's own dtype (config.json ``torch_dtype``)."""
    key = checkpoint.dtype if name == "auto" else name
    if key not in DTYPES:
        raise EvalError(f"Unsupported dtype {key!r}; expected 'auto' or one of {sorted(DTYPES)}.")
    return DTYPES[key]


def load_model(
    checkpoint: QwenCheckpoint, *, dtype: torch.dtype, device: torch.device, max_seq_len: int | None = None
) -> TransformerDecoder:
    """The decoder with the checkpoint's weights, loaded by torchtune's HF checkpointer, in eval mode."""
    with tempfile.TemporaryDirectory(prefix="focusft-eval-") as scratch:
        # The checkpointer insists on an output directory; nothing is written there on load.
        checkpointer_class, checkpointer_type = checkpoint.family.checkpointer
        checkpointer = checkpointer_class(
            checkpoint_dir=str(checkpoint.path),
            checkpoint_files=list(checkpoint.weight_files),
            model_type=checkpointer_type,
            output_dir=scratch,
        )
        state = checkpointer.load_checkpoint()[training.MODEL_KEY]
    if checkpoint.adapter is not None:
        try:
            state = merge_peft_adapter(
                state, load_file(checkpoint.adapter / ADAPTER_WEIGHTS), _read_json(checkpoint.adapter / ADAPTER_CONFIG)
            )
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"The adapter in {checkpoint.adapter} cannot be merged: {err}") from None
    for name, tensor in state.items():  # a diverged run's weights would score 0 without a word
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"Weights in {checkpoint.path} are not finite: tensor {name} holds NaN or inf values "
                "(the run that wrote them diverged)."
            )
    state = {name: tensor.to(device=device, dtype=dtype) for name, tensor in state.items()}
    with torch.device("meta"):
        model = checkpoint.build_model(max_seq_len)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"Weights in {checkpoint.path} do not match its config.json: {err}") from err
    # RoPE tables are buffers outside the state dict, still on meta: build them on the device,
    # in float32 as torchtune's training does (bf16 cannot tell positions apart at long range).
    with torch.device(device):
        for module in model.modules():
            if hasattr(module, "rope_init"):
                module.rope_init()
    return model.eval().requires_grad_(False)


def load_tokenizer(checkpoint: QwenCheckpoint) -> Qwen2_5Tokenizer:
    """torchtune's tokenizer of the checkpoint's family (Qwen2.5's serves Qwen3), with its own eos token."""
    return checkpoint.family.load_tokenizer(checkpoint.tokenizer_path, checkpoint.eos_token)
