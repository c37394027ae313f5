"""The LoRA / QLoRA outer loop against references with LoRA as ordinary modules, and its checkpoints in PEFT."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torchao.dtypes.nf4tensor import NF4Tensor

from focusft.bilevel import InnerLoopConfig
from focusft.checkpointing import CheckpointManager
from focusft.errors import ConfigError
from focusft.eval.checkpoint import load_model, read_checkpoint
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.lora import LoRASettings, adapter_state, freeze_base, merged_state
from focusft.outer_weights import FullWeights, outer_weights, trainable_parameters
from focusft.split_decoder import SplitDecoder
from focusft.tiny import seeded_tiny_qwen2_5, tiny_lora_qwen2_5
from tests.layouts import IGNORE_INDEX
from tests.test_bilevel import (
    ReferenceLoRALinear,
    alone,
    assert_document_matches_reference,
    document,
    nonzero_fast_weights,
    packed_inputs,
    packed_step,
    reference_bilevel,
)

ATTN = ("q_proj", "k_proj", "v_proj", "output_proj")
RANK, ALPHA = 4, 8.0
FAST = FastWeightConfig(rank=4, alpha=8.0, layer_fraction=0.5)


def lora_model(quantize_base: bool = False, seed: int = 0) -> nn.Module:
    """The tiny LoRA model on the seeded tiny base, with random A and B ≠ 0 so every adapter acts."""
    model = tiny_lora_qwen2_5(list(ATTN), True, lora_rank=RANK, lora_alpha=ALPHA, quantize_base=quantize_base)
    model.load_state_dict(seeded_tiny_qwen2_5(seed).state_dict(), strict=False)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def reference_model(lora: nn.Module) -> nn.Module:
    """A plain decoder whose adapted projections are base + LoRA as ordinary modules; only the LoRA trains.

    Base weights come from ``lora``'s state dict, so an NF4 base enters dequantised.
    """
    plain = seeded_tiny_qwen2_5(0)
    state = lora.state_dict()
    plain.load_state_dict({k: v for k, v in state.items() if ".lora_" not in k})
    plain.requires_grad_(False)
    for index, layer in enumerate(plain.layers):
        for parent, names in ((layer.attn, ATTN), (layer.mlp, ("w1", "w2", "w3"))):
            for name in names:
                prefix = f"layers.{index}.{'attn' if parent is layer.attn else 'mlp'}.{name}"
                a, b = state[f"{prefix}.lora_a.weight"], state[f"{prefix}.lora_b.weight"]
                setattr(parent, name, ReferenceLoRALinear(getattr(parent, name), a, b, ALPHA / RANK))
    return plain


def lora_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n.removeprefix("decoder.").replace(".base.", "."): p.grad
        for n, p in model.named_parameters()
        if p.grad is not None
    }


def run_packed(model_lora: nn.Module, rows, inner, mode="bidir_context"):
    """The optimised LoRA micro-batch on packed documents; returns the result, inputs and fast weights."""
    slots = attach_fast_weight_slots(model_lora, FAST)
    model = SplitDecoder(model_lora, slots)
    tokens, labels, layout = packed_inputs(rows, 56)
    count = sum(len(r) for r in rows)
    fast = nonzero_fast_weights(slots, list(range(20, 20 + count)))
    result = packed_step(model, slots, tokens, labels, layout, mode, inner, fast)
    (result.loss / result.num_tokens).backward()
    return model, result, (tokens, labels, layout), fast, count


def expected_from_reference(reference, result, batch, fast, count, inner, mode="bidir_context"):
    """Each document alone through the reference; returns the token-weighted outer loss and LoRA gradients."""
    tokens, labels, layout = batch
    total = result.num_tokens.item()
    expected_loss, expected_grads = 0.0, {}
    for d in range(count):
        t, lab, m, p = alone(tokens, labels, layout, d, mode)
        n = (lab != IGNORE_INDEX).sum().item()
        ref_loss, ref_losses, ref_grads, _, _, adapted = reference_bilevel(
            reference, document(fast, d), FAST, inner, t, lab, m, p
        )
        assert_document_matches_reference(result, d, ref_losses, adapted)
        expected_loss += n * ref_loss / total
        for name, grad in ref_grads.items():
            expected_grads[name] = expected_grads.get(name, 0) + grad * n / total
    return expected_loss, expected_grads


@pytest.mark.parametrize("mode", ["bidir_context", "causal"])
def test_lora_micro_batch_equals_reference_document_by_document(mode):
    """Inner losses, φ_K, outer loss and LoRA gradients; the base gets no gradient and stays bit-identical."""
    inner = InnerLoopConfig(steps=2, lr=1.0, grad_clip=0.05)
    lora = lora_model()
    reference = reference_model(lora)
    freeze_base(lora)
    base_before = {n: p.detach().clone() for n, p in lora.named_parameters() if ".lora_" not in n}
    model, result, batch, fast, count = run_packed(lora, [[30, 12, 9]], inner, mode)

    expected_loss, expected_grads = expected_from_reference(reference, result, batch, fast, count, inner, mode)
    torch.testing.assert_close(result.loss.item() / result.num_tokens.item(), expected_loss, atol=1e-5, rtol=1e-5)
    grads = lora_grads(model)
    assert grads.keys() == expected_grads.keys() and all(".lora_" in name for name in grads)
    assert len(grads) == 4 * 7 * 2  # every A and B of q, k, v, o, gate, up, down in 4 layers
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)

    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2, weight_decay=0.01)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for n, p in model.named_parameters() if ".lora_" in n
    )
    optimizer.step()
    for name, p in lora.named_parameters():
        if name in base_before:
            assert p.grad is None and not p.requires_grad and torch.equal(p, base_before[name]), name


def test_qlora_step_runs_on_nf4_and_matches_a_dequantised_reference():
    inner = InnerLoopConfig(steps=2, lr=1.0, grad_clip=0.05)
    qlora = lora_model(quantize_base=True)
    nf4 = {n: p for n, p in qlora.named_parameters() if isinstance(p, NF4Tensor)}
    assert len(nf4) == 4 * 7  # every adapted projection's base weight is NF4
    frozen = {n: p.get_original_weight().clone() for n, p in nf4.items()}
    reference = reference_model(qlora)  # its state_dict dequantises the NF4 weights
    freeze_base(qlora)
    model, result, batch, fast, count = run_packed(qlora, [[24, 20]], inner)

    expected_loss, expected_grads = expected_from_reference(reference, result, batch, fast, count, inner)
    torch.testing.assert_close(result.loss.item() / result.num_tokens.item(), expected_loss, atol=1e-5, rtol=1e-5)
    grads = lora_grads(model)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)
    for name, p in nf4.items():
        assert p.grad is None and torch.equal(p.get_original_weight(), frozen[name]), name


def test_peft_loaded_adapter_equals_merged_checkpoint(base_dir, tmp_path):
    """The checkpoint a LoRA run writes: PEFT loads the adapter onto the base; merged/ is that model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = lora_model()
    settings = LoRASettings(RANK, ALPHA, ATTN, mlp=True, output=False)
    cfg = OmegaConf.create(
        {
            "_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(base_dir),
            "checkpoint_files": ["model.safetensors"],
            "model_type": "QWEN2",
            "output_dir": str(tmp_path),
        }
    )
    manager = CheckpointManager(cfg, tmp_path, resume=False, adapter=True)
    manager.load_model_state()  # as the recipe does: the checkpointer learns the weight files
    state = {k: v.clone() for k, v in lora.state_dict().items()}
    adapter = adapter_state(state)
    path = manager.save("epoch_0", merged_state(state, settings), {}, adapter=(adapter, settings.peft_config()))

    assert {p.name for p in path.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json", "merged"}
    assert not (path / "merged" / "adapter_config.json").exists()
    tokens = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        base_logits = base(tokens).logits
        peft_logits = PeftModel.from_pretrained(base, path).eval()(tokens).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(path / "merged", dtype=torch.float32)(tokens).logits
        ours = lora.eval()(tokens)
        evaluated = load_model(read_checkpoint(path), dtype=torch.float32, device=torch.device("cpu"))(tokens)
    assert (peft_logits - base_logits).abs().max() > 1e-2  # the adapter changes the model
    torch.testing.assert_close(peft_logits, merged_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(peft_logits, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(evaluated, merged_logits, atol=1e-5, rtol=1e-5)  # focusft-eval on the adapter dir


def cfg_with_model(model: dict, **top) -> OmegaConf:
    return OmegaConf.create({"model": model, **top})


def test_the_model_component_selects_the_outer_loop():
    lora_cfg = {"_component_": "x.lora_builder", "lora_attn_modules": ["q_proj"], "lora_rank": 8, "lora_alpha": 16}
    assert isinstance(outer_weights(cfg_with_model({"_component_": "focusft.tiny.tiny_qwen2_5"})), FullWeights)
    weights = outer_weights(cfg_with_model(lora_cfg, save_adapter_weights_only=True))
    assert weights.adapter and weights.adapter_only and weights.settings.module_names == ["q_proj"]
    with pytest.raises(ConfigError, match="needs a LoRA model"):
        outer_weights(cfg_with_model({"_component_": "focusft.tiny.tiny_qwen2_5"}, save_adapter_weights_only=True))
    with pytest.raises(ConfigError, match=r"missing \['lora_rank', 'lora_alpha'\]"):
        outer_weights(cfg_with_model({"_component_": "x", "lora_attn_modules": ["q_proj"]}))
    with pytest.raises(ConfigError, match="DoRA"):
        outer_weights(cfg_with_model({**lora_cfg, "use_dora": True}))


def test_adapter_directory_without_local_base_is_a_named_error(tmp_path: Path):
    from focusft.eval.errors import CheckpointError

    (tmp_path / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "base_model_name_or_path": "Qwen/x"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="base_model_name_or_path"):
        read_checkpoint(tmp_path)


def test_fast_weights_add_to_the_outer_lora_projection():
    """φ's slot on a LoRALinear adds (alpha_φ/r_φ)(x A_φᵀ)B_φᵀ to base + outer LoRA, written out by hand."""
    lora = lora_model()
    w1 = copy.deepcopy(lora.layers[3].mlp.w1)
    attach_fast_weight_slots(lora, FAST)
    module = lora.layers[3].mlp.w1
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, 64, generator=g)
    a, b = torch.randn(4, 64, generator=g), torch.randn(128, 4, generator=g)
    module.fast_a, module.fast_b = a, b
    outer = x @ w1.weight.T + (ALPHA / RANK) * (x @ w1.lora_a.weight.T) @ w1.lora_b.weight.T
    torch.testing.assert_close(module(x), outer + FAST.scale * (x @ a.T) @ b.T, atol=1e-5, rtol=1e-5)
    assert [n for n, _ in module.named_parameters()] == ["weight", "lora_a.weight", "lora_b.weight"]
