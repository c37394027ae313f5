"""Qwen3 and Llama 3 models equal transformers' own: logits, checkpoint in and out (fp32, tiny random models).

The reference models are built by transformers (``Qwen3Config``/``Qwen3ForCausalLM``,
``LlamaConfig``/``LlamaForCausalLM``, with Llama 3's scaled RoPE), saved with
``save_pretrained`` and read by the project's checkpointer and builder; the project's
checkpoint written from them is read back by transformers. The tiny checkpoints of
``python -m focusft.tiny --family`` are checked the same way.
"""

from __future__ import annotations

import pytest
import torch
from torchtune.models.qwen2 import _convert_weights as qwen2_convert
from torchtune.training import FullModelHFCheckpointer
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from focusft.fast_weights import FFN_PROJECTIONS
from focusft.models.qwen3 import Qwen3HFCheckpointer
from focusft.tiny import TINY_LLAMA3, TINY_QWEN3, _seeded, tiny_llama3, tiny_qwen3, write_tiny_checkpoint

TOLERANCE = 1e-5  # fp32, relative to the largest logit


def hf_qwen3() -> Qwen3ForCausalLM:
    c = TINY_QWEN3
    config = Qwen3Config(
        vocab_size=c["vocab_size"],
        hidden_size=c["embed_dim"],
        intermediate_size=c["intermediate_dim"],
        num_hidden_layers=c["num_layers"],
        num_attention_heads=c["num_heads"],
        num_key_value_heads=c["num_kv_heads"],
        head_dim=c["head_dim"],
        max_position_embeddings=c["max_seq_len"],
        rms_norm_eps=c["norm_eps"],
        rope_theta=c["rope_base"],
        tie_word_embeddings=c["tie_word_embeddings"],
    )
    return Qwen3ForCausalLM(config)


def hf_llama3() -> LlamaForCausalLM:
    c = TINY_LLAMA3
    rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    config = LlamaConfig(
        vocab_size=c["vocab_size"],
        hidden_size=c["embed_dim"],
        intermediate_size=c["intermediate_dim"],
        num_hidden_layers=c["num_layers"],
        num_attention_heads=c["num_heads"],
        num_key_value_heads=c["num_kv_heads"],
        max_position_embeddings=c["max_seq_len"],
        rms_norm_eps=c["norm_eps"],
        rope_parameters={**rope, "original_max_position_embeddings": 8192, "rope_theta": float(c["rope_base"])},
        tie_word_embeddings=c["tie_word_embeddings"],
    )
    return LlamaForCausalLM(config)


FAMILIES = {
    "qwen3": (hf_qwen3, tiny_qwen3, lambda d, out: Qwen3HFCheckpointer(d, ["model.safetensors"], output_dir=out)),
    "llama3": (
        hf_llama3,
        tiny_llama3,
        lambda d, out: FullModelHFCheckpointer(d, ["model.safetensors"], model_type="LLAMA3_2", output_dir=out),
    ),
}


def assert_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    scale = reference.abs().max().item()
    assert (ours - reference).abs().max().item() <= TOLERANCE * scale


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_and_checkpoints_equal_transformers(family, tmp_path):
    build_hf, build_ours, checkpointer = FAMILIES[family]
    torch.manual_seed(0)
    reference = build_hf().float().eval()
    with torch.no_grad():  # norms at 1 would hide a dropped or misplaced norm (Qwen3's per-head q/k norms)
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    reference.save_pretrained(tmp_path / "hf")
    # 300 positions: past Llama 3's low-frequency RoPE band edge at this head size
    tokens = torch.randint(0, reference.config.vocab_size, (2, 300))
    with torch.no_grad():
        expected = reference(tokens).logits

    model = build_ours()
    loader = checkpointer(str(tmp_path / "hf"), str(tmp_path / "out"))
    model.load_state_dict(loader.load_checkpoint()["model"], strict=True)
    model.eval()
    assert qwen2_convert.qwen2_hf_to_tune.__module__ == qwen2_convert.__name__  # Qwen3's converters were swapped back
    with torch.no_grad():
        assert_close(model(tokens), expected)
    for layer in model.layers:  # the FFN names the fast weights adapt (one mapping for every family)
        assert all(isinstance(getattr(layer.mlp, proj), torch.nn.Linear) for proj in FFN_PROJECTIONS.values())

    loader.save_checkpoint({"model": model.state_dict()}, epoch=0)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "epoch_0").float().eval()
    assert type(reloaded) is type(reference)
    with torch.no_grad():
        assert_close(reloaded(tokens).logits, expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_tiny_checkpoint_loads_in_transformers(family, tmp_path):
    directory = write_tiny_checkpoint(tmp_path / "tiny", family=family)
    _, build_ours, _ = FAMILIES[family]
    ours = _seeded(build_ours, 0).eval()
    hf = AutoModelForCausalLM.from_pretrained(directory).float().eval()
    tokens = torch.randint(0, hf.config.vocab_size, (1, 64))
    with torch.no_grad():
        assert_close(ours(tokens), hf(tokens).logits)
