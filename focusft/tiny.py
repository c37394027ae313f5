"""A tiny Qwen2.5-architecture model and byte-level BPE tokenizer, made here without downloads.

Tests and the demo use them in place of a real checkpoint; :func:`write_tiny_checkpoint`
writes both as an HF-format directory (config.json, safetensors, tokenizer files) so
that the recipe, torchtune's HF checkpointer, transformers and lm-eval can load it
like a real Qwen2.5 model.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import nn
from torchao.dtypes.nf4tensor import to_nf4
from torchtune.models import convert_weights
from torchtune.models.llama3._tokenizer import Llama3Tokenizer
from torchtune.models.llama3_2._component_builders import llama3_2
from torchtune.models.qwen2 import lora_qwen2, qwen2, qwen2_tune_to_hf
from torchtune.models.qwen2._tokenizer import PRETOKENIZE_REGEX
from torchtune.models.qwen2_5 import qwen2_5_tokenizer
from torchtune.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS, Qwen2_5Tokenizer
from torchtune.modules import TransformerDecoder
from torchtune.modules.common_utils import reparametrize_as_dtype_state_dict_post_hook
from torchtune.modules.peft import LoRALinear

from focusft.hf_files import instruct_tokenizer_config, special_token_ids
from focusft.models import llama3, qwen3

# Special tokens in Qwen2.5's own order; they take the ids right after the BPE vocabulary.
SPECIAL_TOKENS: list[str] = sorted(QWEN2_5_SPECIAL_TOKENS, key=QWEN2_5_SPECIAL_TOKENS.get)

# Qwen2.5-Instruct's chat template (tools, tool calls, tool responses, default system prompt), as the
# real tokenizer_config.json carries it; transformers, vLLM and lm-eval's --apply_chat_template render it.
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501 (the template's own lines)


@dataclass(frozen=True)
class TinyQwenConfig:
    """Dimensions of the tiny model: Qwen2.5 layout (GQA, q/k/v bias, RMSNorm, RoPE)."""

    vocab_size: int = 1024
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    embed_dim: int = 64
    intermediate_dim: int = 128
    max_seq_len: int = 4096
    norm_eps: float = 1e-6
    rope_base: float = 1_000_000.0
    tie_word_embeddings: bool = False


def tiny_qwen2_5(**overrides) -> TransformerDecoder:
    """Build the tiny model from torchtune's ``qwen2`` component builder (random init)."""
    return qwen2(**asdict(TinyQwenConfig(**overrides)))


# NF4 blocks small enough for the tiny projections (the smallest, k/v, has 32 x 64 weights), also when
# FSDP splits them over 2 processes; torchtune's builders use 64 / 256, which need >= 16K weights.
TINY_NF4_BLOCK_SIZE = 32
TINY_NF4_SCALER_BLOCK_SIZE = 8


def tiny_lora_qwen2_5(
    lora_attn_modules: list[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    quantize_base: bool = False,
    **overrides,
) -> TransformerDecoder:
    """The tiny model with torchtune's LoRA layers (``lora_qwen2``), as ``lora_qwen2_5_*`` builds the real ones.

    ``quantize_base`` stores each LoRA layer's base weight in NF4, as torchtune's QLoRA
    does, with blocks sized for the tiny dimensions.
    """
    model = lora_qwen2(
        lora_attn_modules=list(lora_attn_modules),
        apply_lora_to_mlp=apply_lora_to_mlp,
        apply_lora_to_output=apply_lora_to_output,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        **asdict(TinyQwenConfig(**overrides)),
    )
    if quantize_base:
        for module in model.modules():
            if isinstance(module, LoRALinear):
                nf4 = to_nf4(
                    module.weight.detach(),
                    block_size=TINY_NF4_BLOCK_SIZE,
                    scaler_block_size=TINY_NF4_SCALER_BLOCK_SIZE,
                )
                module.weight = nn.Parameter(nf4, requires_grad=False)
                module._quantize_base = True
        # As torchtune's QLoRA builders: state_dict() yields the weights dequantised.
        dtype = model.tok_embeddings.weight.dtype
        model._register_state_dict_hook(partial(reparametrize_as_dtype_state_dict_post_hook, dtype=dtype))
    return model


def seeded_tiny_qwen2_5(seed: int = 0, **overrides) -> TransformerDecoder:
    """The tiny model with a deterministic, non-trivial initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tiny_qwen2_5(**overrides)
        # torchtune leaves RMSNorm scales at 1 and biases at 0; perturb them so tests
        # would notice a norm or bias that is dropped or applied twice.
        for name, param in model.named_parameters():
            if name.endswith(("norm.scale", "bias")):
                with torch.no_grad():
                    param.add_(0.1 * torch.randn_like(param))
    return model


_NAMES = ["Mary", "John", "Sandra", "Daniel", "Fred", "Julie", "Bill", "Emma", "Jeff", "Yann"]
_PLACES = ["kitchen", "garden", "office", "hallway", "bedroom", "bathroom", "park", "school", "cinema"]
_OBJECTS = ["apple", "football", "milk", "book", "key", "box", "ticket", "laptop", "letter"]
_VERBS = ["went to", "moved to", "travelled to", "journeyed to", "picked up", "dropped", "left", "got"]
_TOOL_WORDS = ["search", "lookup", "calculator", "weather", "query", "result", "status", "error", "value"]


def tiny_corpus(seed: int = 0, num_lines: int = 3000) -> list[str]:
    """Deterministic English-like lines (stories, questions, tool calls, JSON) to train the BPE on."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        kind = rng.randrange(4)
        name, place, obj = rng.choice(_NAMES), rng.choice(_PLACES), rng.choice(_OBJECTS)
        if kind == 0:
            lines.append(f"{name} {rng.choice(_VERBS)} the {rng.choice([place, obj])}.")
        elif kind == 1:
            lines.append(f"Where is {name}? Answer: {place}. Where is the {obj}? The {obj} is in the {place}.")
        elif kind == 2:
            args = {"name": rng.choice(_TOOL_WORDS), "arguments": {"query": obj, "limit": rng.randrange(100)}}
            lines.append(json.dumps(args))
        else:
            words = rng.choices(_NAMES + _PLACES + _OBJECTS + _TOOL_WORDS, k=rng.randrange(5, 15))
            lines.append(" ".join(words) + f" {rng.randrange(10_000)} :;,!?()[]{{}}<>/\\=+-*_'\"#@$%&|~`^\n\t")
    return lines


def train_tiny_tokenizer(
    vocab_size: int = 1024,
    seed: int = 0,
    corpus: list[str] | None = None,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """Byte-level BPE with Qwen2's normaliser and pre-tokeniser; ``special_tokens`` at the top ids.

    ``corpus`` (default :func:`tiny_corpus`) is the text the merges are learned from.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tiny_corpus(seed) if corpus is None else corpus, trainer=trainer)
    tokenizer.add_special_tokens(list(special_tokens))
    return tokenizer


def write_tiny_tokenizer(
    out_dir: str | Path,
    vocab_size: int = 1024,
    seed: int = 0,
    corpus: list[str] | None = None,
    family: str = "qwen2_5",
) -> Path:
    """Write vocab.json, merges.txt, tokenizer.json and tokenizer_config.json to ``out_dir``.

    ``family`` ``qwen3``: Qwen3's added tokens (``<think>``, ``<tool_response>``, ...) and chat template.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special_tokens = qwen3.SPECIAL_TOKENS if family == "qwen3" else SPECIAL_TOKENS
    tokenizer = train_tiny_tokenizer(vocab_size, seed, corpus, special_tokens)
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer.model.save(str(out), None)  # vocab.json + merges.txt
    special_ids = {token: tokenizer.token_to_id(token) for token in special_tokens}
    config = instruct_tokenizer_config(family, special_ids, TinyQwenConfig().max_seq_len)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def _added_tokens(special_ids: dict[str, int], non_special: Collection[str] = ()) -> dict[str, dict]:
    """``tokenizer_config.json``'s ``added_tokens_decoder``."""
    return {
        str(i): {"content": t, "special": t not in non_special, "lstrip": False, "rstrip": False, "normalized": False}
        for t, i in special_ids.items()
    }


def chat_template(name: str) -> str:
    """The official chat template ``name`` (``qwen3``, ``llama3_1``) shipped in ``focusft/models/templates``."""
    return (resources.files("focusft.models") / "templates" / f"{name}.jinja").read_text()


def load_tiny_tokenizer(tokenizer_dir: str | Path, max_seq_len: int | None = None) -> Qwen2_5Tokenizer:
    """torchtune's Qwen2.5 tokenizer over the files of :func:`write_tiny_tokenizer`."""
    d = Path(tokenizer_dir)
    return qwen2_5_tokenizer(
        path=str(d / "vocab.json"),
        merges_file=str(d / "merges.txt"),
        special_tokens_path=str(d / "tokenizer.json"),
        max_seq_len=max_seq_len,
    )


def hf_config(config: TinyQwenConfig, dtype: str = "float32", eos_token_id: int | None = None) -> dict:
    """``config.json`` of a Qwen2ForCausalLM with the tiny dimensions."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": config.vocab_size,
        "hidden_size": config.embed_dim,
        "intermediate_size": config.intermediate_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.embed_dim // config.num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,
        "tie_word_embeddings": config.tie_word_embeddings,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "torch_dtype": dtype,
        "eos_token_id": eos_token_id,
    }


def write_model_files(out_dir: str | Path, model: TransformerDecoder, config: TinyQwenConfig) -> Path:
    """``model.safetensors`` (HF names) and ``config.json`` of ``model`` beside its tokenizer files in ``out_dir``."""
    out = Path(out_dir)
    state = qwen2_tune_to_hf(
        model.state_dict(),
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        dim=config.embed_dim,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    eos = json.loads((out / "tokenizer.json").read_text())
    eos_id = next(t["id"] for t in eos["added_tokens"] if t["content"] == "<|im_end|>")
    (out / "config.json").write_text(json.dumps(hf_config(config, eos_token_id=eos_id), indent=2))
    return out


def _write_tiny_qwen2_5(out_dir: str | Path, seed: int) -> Path:
    config = TinyQwenConfig()
    out = write_tiny_tokenizer(out_dir, config.vocab_size, seed)
    return write_model_files(out, seeded_tiny_qwen2_5(seed), config)


# The tiny Qwen3: Qwen2.5's tiny dimensions with Qwen3's layout (head_dim 32 != 64 / 4 heads, tied embeddings).
TINY_QWEN3: dict = {
    "vocab_size": 1024,
    "num_layers": 4,
    "num_heads": 4,
    "num_kv_heads": 2,
    "embed_dim": 64,
    "intermediate_dim": 128,
    "head_dim": 32,
    "max_seq_len": 4096,
    "norm_eps": 1e-6,
    "rope_base": 1_000_000.0,
    "tie_word_embeddings": True,
}
# The tiny Llama 3.2: tied embeddings, Llama 3's scaled RoPE (factor 32), 768 BPE ranks + 256 special tokens.
TINY_LLAMA3: dict = {
    "vocab_size": 1024,
    "num_layers": 4,
    "num_heads": 4,
    "num_kv_heads": 2,
    "embed_dim": 64,
    "intermediate_dim": 128,
    "max_seq_len": 16384,
    "norm_eps": 1e-5,
    "rope_base": 500_000,
    "scale_factor": 32,
    "tie_word_embeddings": True,
}


def tiny_qwen3(**overrides) -> TransformerDecoder:
    """The tiny Qwen3-architecture model (:func:`focusft.models.qwen3.qwen3`, random init)."""
    return qwen3.qwen3(**{**TINY_QWEN3, **overrides})


def tiny_llama3(**overrides) -> TransformerDecoder:
    """The tiny Llama 3.2-architecture model (torchtune's ``llama3_2`` component builder, random init)."""
    return llama3_2(**{**TINY_LLAMA3, **overrides})


def _seeded(build, seed: int) -> TransformerDecoder:
    """``build()`` with a deterministic init whose RMSNorm scales are not all 1 (a dropped norm would show)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        for name, param in model.named_parameters():
            if name.endswith("scale"):
                with torch.no_grad():
                    param.add_(0.1 * torch.randn_like(param))
    return model


def _write_weights(out: Path, state: dict[str, torch.Tensor], config: dict) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))


def _hf_decoder_config(c: dict, architecture: str, model_type: str, **family_keys) -> dict:
    """``config.json`` of a tiny decoder with torchtune builder arguments ``c``: the keys every family shares."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": c["vocab_size"],
        "hidden_size": c["embed_dim"],
        "intermediate_size": c["intermediate_dim"],
        "num_hidden_layers": c["num_layers"],
        "num_attention_heads": c["num_heads"],
        "num_key_value_heads": c["num_kv_heads"],
        "hidden_act": "silu",
        "attention_bias": False,
        "max_position_embeddings": c["max_seq_len"],
        "rms_norm_eps": c["norm_eps"],
        "tie_word_embeddings": c["tie_word_embeddings"],
        "attention_dropout": 0.0,
        "torch_dtype": "float32",
        **family_keys,
    }


def _write_tiny_qwen3(out_dir: str | Path, seed: int) -> Path:
    out = write_tiny_tokenizer(out_dir, TINY_QWEN3["vocab_size"], seed, family="qwen3")
    ids = special_token_ids(out)
    c = TINY_QWEN3
    config = _hf_decoder_config(
        TINY_QWEN3,
        "Qwen3ForCausalLM",
        "qwen3",
        head_dim=c["head_dim"],
        rope_theta=c["rope_base"],
        rope_scaling=None,
        use_sliding_window=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    _write_weights(out, qwen3.qwen3_tune_to_hf(_seeded(tiny_qwen3, seed).state_dict()), config)
    return out


def write_tiny_llama3_tokenizer(out_dir: str | Path, vocab_size: int = 1024, seed: int = 0) -> Path:
    """A tiny Llama 3 tokenizer: ``tokenizer.model`` (tiktoken ranks) and the HF files made from it.

    A byte-level BPE is learned with Llama 3's pre-tokeniser; its tokens, in merge order, are the
    tiktoken ranks; transformers' ``TikTokenConverter`` (how Llama 3's own ``tokenizer.json`` was
    made) turns them into ``tokenizer.json``, so torchtune's tiktoken tokenizer and the HF one
    split text alike. Llama 3.1's 256 special tokens follow the ranks.
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(llama3.PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(llama3.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tiny_corpus(seed), trainer=trainer)
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    ranks = sorted(bpe.get_vocab().items(), key=lambda item: item[1])
    lines = [f"{base64.b64encode(bytes(to_byte[ch] for ch in token)).decode()} {rank}" for token, rank in ranks]
    (out / "tokenizer.model").write_text("\n".join(lines) + "\n")

    tokenizer = TikTokenConverter(vocab_file=str(out / "tokenizer.model"), pattern=llama3.PRETOKENIZE_REGEX).converted()
    tokenizer.add_special_tokens(list(llama3.SPECIAL_TOKENS))
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    tokenizer.save(str(out / "tokenizer.json"))
    special_ids = {token: tokenizer.token_to_id(token) for token in llama3.SPECIAL_TOKENS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": TINY_LLAMA3["max_seq_len"],
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "clean_up_tokenization_spaces": True,
        "chat_template": chat_template("llama3_1"),
        "added_tokens_decoder": _added_tokens(special_ids),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def load_tiny_llama3_tokenizer(tokenizer_dir: str | Path, max_seq_len: int | None = None) -> Llama3Tokenizer:
    """torchtune's Llama 3 tokenizer over the files of :func:`write_tiny_llama3_tokenizer`."""
    return llama3.llama3_tokenizer(**llama3.tokenizer_files(Path(tokenizer_dir)), max_seq_len=max_seq_len)


def _write_tiny_llama3(out_dir: str | Path, seed: int) -> Path:
    out = write_tiny_llama3_tokenizer(out_dir, TINY_LLAMA3["vocab_size"], seed)
    ids = special_token_ids(out)
    c = TINY_LLAMA3
    config = _hf_decoder_config(
        TINY_LLAMA3,
        "LlamaForCausalLM",
        "llama",
        head_dim=c["embed_dim"] // c["num_heads"],
        mlp_bias=False,
        rope_theta=float(c["rope_base"]),
        rope_scaling={
            "rope_type": "llama3",
            "factor": float(c["scale_factor"]),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids[t] for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")],
    )
    model = _seeded(tiny_llama3, seed)
    state = convert_weights.tune_to_hf(
        model.state_dict(), num_heads=c["num_heads"], num_kv_heads=c["num_kv_heads"], dim=c["embed_dim"]
    )
    _write_weights(out, state, config)
    return out


TINY_WRITERS = {"qwen2_5": _write_tiny_qwen2_5, "qwen3": _write_tiny_qwen3, "llama3": _write_tiny_llama3}


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0, family: str = "qwen2_5") -> Path:
    """An HF-format checkpoint directory of the tiny model and tokenizer of ``family`` (see ``TINY_WRITERS``)."""
    if family not in TINY_WRITERS:
        raise ValueError(f"Unknown model family {family!r}; expected one of {sorted(TINY_WRITERS)}.")
    return TINY_WRITERS[family](out_dir, seed)


def main() -> None:
    """``python -m focusft.tiny [--family F] OUT_DIR``: write a tiny checkpoint directory for the demo and tests."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=sorted(TINY_WRITERS), default="qwen2_5", help="model family")
    args = parser.parse_args()
    out = write_tiny_checkpoint(args.out_dir, args.seed, args.family)
    print(f"Wrote tiny {args.family}-architecture checkpoint to {out}")


if __name__ == "__main__":
    main()
