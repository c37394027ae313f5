"""A tiny Qwen2.5-architecture model and byte-level BPE tokenizer, made here without downloads.

Tests and the demo use them in place of a real checkpoint; :func:`write_tiny_checkpoint`
writes both as an HF-format directory (config.json, safetensors, tokenizer files) so
that the recipe, torchtune's HF checkpointer, transformers and lm-eval can load it
like a real Qwen2.5 model.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torchtune.models.qwen2 import qwen2, qwen2_tune_to_hf
from torchtune.models.qwen2._tokenizer import PRETOKENIZE_REGEX
from torchtune.models.qwen2_5 import qwen2_5_tokenizer
from torchtune.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS, Qwen2_5Tokenizer
from torchtune.modules import TransformerDecoder

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


def train_tiny_tokenizer(vocab_size: int = 1024, seed: int = 0, corpus: list[str] | None = None) -> Tokenizer:
    """Byte-level BPE with Qwen2's normaliser and pre-tokeniser; specials at the top ids.

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
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tiny_corpus(seed) if corpus is None else corpus, trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def write_tiny_tokenizer(
    out_dir: str | Path, vocab_size: int = 1024, seed: int = 0, corpus: list[str] | None = None
) -> Path:
    """Write vocab.json, merges.txt, tokenizer.json and tokenizer_config.json to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_tokenizer(vocab_size, seed, corpus)
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer.model.save(str(out), None)  # vocab.json + merges.txt
    special_ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": TinyQwenConfig().max_seq_len,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False}
            for t, i in special_ids.items()
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


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


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """An HF-format Qwen2.5-architecture checkpoint directory of the tiny model and tokenizer."""
    config = TinyQwenConfig()
    out = write_tiny_tokenizer(out_dir, config.vocab_size, seed)
    return write_model_files(out, seeded_tiny_qwen2_5(seed), config)


def main() -> None:
    """``python -m focusft.tiny OUT_DIR``: write the tiny checkpoint directory for the demo and tests."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"Wrote tiny Qwen2.5-architecture checkpoint to {write_tiny_checkpoint(args.out_dir, args.seed)}")


if __name__ == "__main__":
    main()
