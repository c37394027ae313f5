"""Full fine-tuning vs LoRA vs QLoRA outer loops, Standard SFT vs FocuSFT, side by side on the CPU model.

    python -m benchmarks.lora_benchmark                 # a few minutes on a 2-core CPU

For each outer loop (full, LoRA, QLoRA = LoRA on an NF4 base) and each variant (Standard
SFT, FocuSFT) one training step as the recipe takes it: mask, bilevel step, backward,
AdamW step. It reports the trainable parameters, the training state (weights, gradients,
AdamW moments: what stays allocated between steps), the peak memory a step adds on top,
and the CPU time of a step (one torch thread, median over rounds in which the six
settings alternate), with ratios to full fine-tuning and to Standard SFT. The LoRA
settings are torchtune's Qwen2.5 ones (rank 8, alpha 16, q/v/o + MLP; NF4 blocks 64/256).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torchtune.models.qwen2 import lora_qwen2

from benchmarks.data import synthetic_batch
from benchmarks.memory import peak_memory_growth
from benchmarks.models import CPU_MODEL
from benchmarks.step_benchmark import machine
from focusft.bilevel import InnerLoopConfig, bilevel_step
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.lora import freeze_base
from focusft.masks import build_mask, document_positions
from focusft.outer_weights import trainable_parameters
from focusft.split_decoder import SplitDecoder
from focusft.tiny import tiny_qwen2_5

OUTER = ("full", "LoRA", "QLoRA")
VARIANTS = {"Standard SFT": ("causal", None), "FocuSFT": ("bidir_context", InnerLoopConfig())}
LORA = dict(lora_attn_modules=["q_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True, lora_rank=8, lora_alpha=16)


def build(outer: str, seed: int = 0) -> nn.Module:
    """The CPU model (random weights at a trained model's scale), full or with torchtune's LoRA layers."""
    torch.manual_seed(seed)
    if outer == "full":
        model = tiny_qwen2_5(**asdict(CPU_MODEL))
    else:
        model = lora_qwen2(**LORA, quantize_base=False, **asdict(CPU_MODEL))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and ".lora_" not in name:
                p.normal_(0.0, 0.02)
    if outer == "QLoRA":  # the same weights, NF4 under torchtune's own builder
        quantized = lora_qwen2(**LORA, quantize_base=True, **asdict(CPU_MODEL))
        quantized.load_state_dict(model.state_dict())
        model = quantized
    if outer != "full":
        freeze_base(model)
    return model


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes of a tensor, or of the inner tensors of a subclass such as torchao's NF4Tensor."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.untyped_storage().nbytes()


@dataclass
class Setting:
    outer: str
    variant: str
    step: Callable[[], None]
    trainable: int
    state_bytes: int = 0
    peak_bytes: int = 0
    times: list[float] = field(default_factory=list)


def make_setting(outer: str, variant: str, seq_len: int) -> Setting:
    decoder = build(outer)
    slots = attach_fast_weight_slots(decoder, FastWeightConfig())
    model = SplitDecoder(decoder, slots, activation_checkpointing=True)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    mode, inner = VARIANTS[variant]
    tokens, labels, layout = synthetic_batch(seq_len, CPU_MODEL.vocab_size, seed=1, device="cpu")
    pos = document_positions(layout.doc)

    def step() -> None:
        mask = build_mask(layout, mode, "dense")
        fast = slots.init([0]) if inner is not None else None
        result = bilevel_step(
            model, slots, tokens, labels, mask=mask, input_pos=pos, inner=inner, initial_fast_weights=fast
        )
        (result.loss / result.num_tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as between steps in training

    setting = Setting(outer, variant, step, sum(p.numel() for p in params))
    step()  # warm-up; creates the AdamW moments and the gradients
    moments = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    grads = [p.grad for p in params if p.grad is not None]
    setting.state_bytes = sum(tensor_bytes(t) for t in [*model.parameters(), *grads, *moments])
    return setting


def report(settings: dict[tuple[str, str], Setting], seq_len: int, rounds: int) -> str:
    mib = 2**20
    lines = [
        f"Machine: {machine(torch.device('cpu'))}; {torch.get_num_threads()} torch thread; torch {torch.__version__}; "
        f"CPU model ({CPU_MODEL.num_layers} layers, width {CPU_MODEL.embed_dim}), {seq_len} tokens, fp32, "
        f"activation checkpointing; {rounds} timed rounds.",
        "",
        "| outer loop | variant | trainable params | state MiB | step peak MiB | step s (CPU) "
        "| params vs full | state vs full | peak vs full | time vs full | time vs SFT |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (outer, variant), s in settings.items():
        full, sft = settings[("full", variant)], settings[(outer, "Standard SFT")]
        median, full_median, sft_median = (statistics.median(x.times) for x in (s, full, sft))
        lines.append(
            f"| {outer} | {variant} | {s.trainable:,} | {s.state_bytes / mib:.1f} | {s.peak_bytes / mib:.1f} | "
            f"{median:.3f} | {s.trainable / full.trainable:.4f}× | {s.state_bytes / full.state_bytes:.3f}× | "
            f"{s.peak_bytes / full.peak_bytes:.3f}× | {median / full_median:.2f}× | {median / sft_median:.2f}× |"
        )
    lines += [
        "",
        "state: parameters (NF4 at its packed size), gradients and AdamW moments, allocated between steps. "
        "step peak: tensor memory a step adds on top (activations, fast weights, the optimizer step's "
        "temporaries; benchmarks/memory.py). step s: this process's CPU time per step (one torch thread).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = {(o, v): make_setting(o, v, args.seq_len) for o in OUTER for v in VARIANTS}
    for s in settings.values():
        s.peak_bytes = peak_memory_growth(s.step, torch.device("cpu"))
    order = list(settings.values())
    for r in range(args.rounds):  # alternate, rotating the order, so slow phases of a shared machine hit all
        for s in order[r % len(order) :] + order[: r % len(order)]:
            start = time.process_time()
            s.step()
            s.times.append(time.process_time() - start)
    print(report(settings, args.seq_len, args.rounds))


if __name__ == "__main__":
    main()
