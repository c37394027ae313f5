"""Model presets for the benchmarks: a small CPU model and Qwen2.5 architectures with random weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torchtune import training
from torchtune.models.qwen2 import qwen2_tune_to_hf
from torchtune.models.qwen2_5 import (
    qwen2_5_0_5b,
    qwen2_5_1_5b_base,
    qwen2_5_3b,
    qwen2_5_7b_base,
    qwen2_5_14b_base,
    qwen2_5_32b_base,
    qwen2_5_72b_base,
)
from torchtune.modules import TransformerDecoder

from focusft.tiny import TinyQwenConfig, hf_config, tiny_qwen2_5, write_tiny_tokenizer

# The CPU setting: 8 layers of width 256, so that layers (not Python overhead) dominate a step.
CPU_MODEL = TinyQwenConfig(num_layers=8, embed_dim=256, num_heads=4, num_kv_heads=2, intermediate_dim=704)


@dataclass(frozen=True)
class Preset:
    """What one benchmark setting runs: a model, sequence lengths, precision and repetitions."""

    name: str
    build: Callable[[], TransformerDecoder]
    vocab_size: int
    seq_lens: tuple[int, ...]
    dtype: str  # "fp32" | "bf16"
    device: str  # "cpu" | "cuda"
    repeats: int
    warmup: int


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        "cpu", lambda: tiny_qwen2_5(**asdict(CPU_MODEL)), CPU_MODEL.vocab_size, (1024, 2048), "fp32", "cpu", 5, 1
    ),
    "qwen2.5-1.5b": Preset(
        "qwen2.5-1.5b", qwen2_5_1_5b_base, 151936, (4096, 16384, 32768, 65536), "bf16", "cuda", 3, 1
    ),
    "qwen2.5-7b": Preset("qwen2.5-7b", qwen2_5_7b_base, 152064, (4096, 16384, 32768, 65536), "bf16", "cuda", 3, 1),
}
# The other sizes, for the memory estimate (benchmarks/max_seq_len.py --estimate) and GPU runs.
for _name, _build, _vocab in (
    ("qwen2.5-0.5b", qwen2_5_0_5b, 151936),
    ("qwen2.5-3b", qwen2_5_3b, 151936),
    ("qwen2.5-14b", qwen2_5_14b_base, 152064),
    ("qwen2.5-32b", qwen2_5_32b_base, 152064),
    ("qwen2.5-72b", qwen2_5_72b_base, 152064),
):
    PRESETS[_name] = Preset(_name, _build, _vocab, (4096, 16384), "bf16", "cuda", 3, 1)


def build_model(preset: Preset, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> TransformerDecoder:
    """The preset's decoder with random weights, built directly on ``device`` (``"meta"`` to check shapes)."""
    torch.manual_seed(seed)
    with training.set_default_dtype(dtype), torch.device(device):
        model = preset.build()
    if str(device) != "meta":
        with torch.no_grad():  # embeddings and projections at the scale of a trained model's
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.02)
    return model


def write_checkpoint(config: TinyQwenConfig, out_dir: str | Path, seed: int = 0) -> Path:
    """An HF-format checkpoint directory (tiny tokenizer + random weights) of a ``qwen2`` config, for the recipes."""
    out = write_tiny_tokenizer(out_dir, vocab_size=1024, seed=seed)
    torch.manual_seed(seed)
    model = tiny_qwen2_5(**asdict(config))
    state = qwen2_tune_to_hf(
        model.state_dict(),
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        dim=config.embed_dim,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(config), indent=2))
    return out
