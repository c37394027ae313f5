"""A Qwen2.5 *base* checkpoint (eos ``<|endoftext|>``) fine-tuned by the recipe stops at ``<|im_end|>``.

The recipe teaches every assistant turn to end with ``<|im_end|>``; the saved directory
must tell transformers and both lm-eval backends to stop there, although the base
model's files named ``<|endoftext|>``.
"""

from __future__ import annotations

import json

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from omegaconf import OmegaConf

from focusft.eval import FocusftLM
from focusft.tiny import write_tiny_checkpoint
from tests.test_checkpointing import make_base_style
from tests.test_recipe import SHIPPED_CONFIG, tune_run

SYSTEM, QUESTION, ANSWER = "Answer briefly.", "Where is Mary?", "kitchen"
PROMPT = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A base-style tiny checkpoint fine-tuned by the recipe (plain SFT, 1 process): (checkpoint, console)."""
    tmp_path = tmp_path_factory.mktemp("finetune")
    base = make_base_style(write_tiny_checkpoint(tmp_path / "base"))
    row = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]}
    row["messages"].append({"role": "assistant", "content": ANSWER})
    data = tmp_path / "train.jsonl"
    data.write_text((json.dumps(row) + "\n") * 16)
    cfg = OmegaConf.load(SHIPPED_CONFIG)
    cfg.dataset = {"_component_": "focusft.data.chat_dataset", "source": "json", "data_files": str(data)}
    cfg.dataset.max_seq_len = 256
    config = tmp_path / "config.yaml"
    OmegaConf.save(cfg, config)
    out = tmp_path / "run"
    overrides = ["epochs=1", "batch_size=4", "optimizer.lr=1e-2", "focusft.bilevel=false", "shuffle=false"]
    proc = tune_run(config, 1, [f"base_dir={base}", f"output_dir={out}", *overrides])
    return out / "epoch_0", proc.stdout + proc.stderr


def test_finetuned_base_model_stops_at_im_end_in_transformers_and_lm_eval(finetuned):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved, _ = finetuned
    tokenizer = AutoTokenizer.from_pretrained(saved)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    generated = model.generate(prompt, max_new_tokens=20)[0, prompt.shape[1] :].tolist()
    assert generated[-1] == im_end and len(generated) < 20, tokenizer.decode(generated)
    assert tokenizer.decode(generated[:-1]) == ANSWER

    request = Instance("generate_until", {}, (PROMPT, {"do_sample": False, "until": [], "max_gen_toks": 20}), 0)
    focusft = FocusftLM(checkpoint_dir=str(saved), device="cpu", dtype="float32")
    hf = HFLM(pretrained=str(saved), device="cpu", dtype="float32")
    for backend in (focusft, hf):
        assert backend.generate_until([request], disable_tqdm=True) == [ANSWER], type(backend).__name__


def test_the_recipe_console_is_quiet_and_says_where_things_go(finetuned):
    saved, console = finetuned
    assert console.count("resolved config:") == 1
    assert f"Checkpoints go to {saved.parent}/epoch_N" in console and f"to {saved.parent}/logs" in console
    assert f"Saved checkpoint {saved}" in console
    assert ".staging" not in console and "set_vital" not in console
    # torchao's line may still come once from `tune` itself, which imports torchtune before any of our code.
    assert console.count("Skipping import of cpp extensions") <= 1
