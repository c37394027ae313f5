"""Checkpoints are written whole or not at all, and resume finds the last complete one."""

import json
import stat
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from focusft.checkpointing import LATEST, RECIPE_STATE, CheckpointManager
from focusft.config import ConfigError
from focusft.tiny import write_tiny_checkpoint


@pytest.fixture
def cfg(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base")
    return OmegaConf.create(
        {
            "_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(base),
            "checkpoint_files": ["model.safetensors"],
            "model_type": "QWEN2",
            "output_dir": "unused",
        }
    )


def test_a_crash_while_saving_keeps_the_previous_checkpoint(cfg, tmp_path):
    out = tmp_path / "run"
    manager = CheckpointManager(cfg, out, resume=False)
    state = manager.load_model_state()
    manager.save("epoch_0", dict(state), {"global_step": 2})
    saved = (out / "epoch_0" / "model-00001-of-00001.safetensors").read_bytes()

    def crash(state_dict, epoch, **_):
        partial = out / ".staging" / "epoch_0"
        partial.mkdir(parents=True)
        (partial / "model-00001-of-00001.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    manager.checkpointer.save_checkpoint = crash
    with pytest.raises(OSError, match="disk full"):
        manager.save("epoch_1", dict(state), {"global_step": 4})
    assert (out / LATEST).read_text() == "epoch_0"
    assert not (out / "epoch_1").exists()
    assert (out / "epoch_0" / "model-00001-of-00001.safetensors").read_bytes() == saved

    resumed = CheckpointManager(cfg, out, resume=True)
    assert resumed.resume_dir == out / "epoch_0"
    assert resumed.load_recipe_state() == {"global_step": 2}
    for key, value in resumed.load_model_state().items():
        torch.testing.assert_close(value, state[key], atol=0, rtol=0)


def test_only_the_latest_checkpoint_keeps_the_recipe_state(cfg, tmp_path):
    out = tmp_path / "run"
    manager = CheckpointManager(cfg, out, resume=False)
    state = manager.load_model_state()
    manager.save("step_3", dict(state), {"global_step": 3})
    manager.save("epoch_0", dict(state), {"global_step": 4})
    assert (out / LATEST).read_text() == "epoch_0"
    assert (out / "epoch_0" / RECIPE_STATE).is_file() and not (out / "step_3" / RECIPE_STATE).exists()
    assert (out / "step_3" / "model-00001-of-00001.safetensors").is_file()
    assert not (out / ".staging").exists()


def test_resume_without_a_checkpoint_and_fresh_run_over_one_are_refused(cfg, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="has no complete checkpoint to resume from"):
        CheckpointManager(cfg, out, resume=True)
    manager = CheckpointManager(cfg, out, resume=False)
    manager.save("epoch_0", manager.load_model_state(), {})
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        CheckpointManager(cfg, out, resume=False)


def make_base_style(directory):
    """Rewrite a tiny checkpoint's eos fields as a Qwen2.5 *base* download has them (eos <|endoftext|>)."""
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["eos_token"] = "<|endoftext|>"
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    end_of_text = next(
        int(i) for i, t in tokenizer_config["added_tokens_decoder"].items() if t["content"] == "<|endoftext|>"
    )
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "eos_token_id": end_of_text}))
    generation = {"bos_token_id": end_of_text, "eos_token_id": end_of_text, "do_sample": False, "max_new_tokens": 2048}
    (directory / "generation_config.json").write_text(json.dumps(generation))
    return directory


def test_saved_checkpoint_has_qwen_instruct_eos_and_readable_files(cfg, tmp_path):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    make_base_style(Path(cfg.checkpoint_dir))
    base_tokenizer = AutoTokenizer.from_pretrained(cfg.checkpoint_dir)
    assert base_tokenizer.eos_token == "<|endoftext|>"
    im_end, end_of_text = base_tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])

    manager = CheckpointManager(cfg, tmp_path / "run", resume=False)
    saved = manager.save("epoch_0", manager.load_model_state(), {"global_step": 1})

    generation = GenerationConfig.from_pretrained(saved)
    assert generation.eos_token_id == [im_end, end_of_text]
    assert generation.max_new_tokens == 2048 and generation.do_sample is False  # the base's other fields stay
    assert AutoConfig.from_pretrained(saved).eos_token_id == im_end
    assert AutoTokenizer.from_pretrained(saved).eos_token == "<|im_end|>"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in saved.iterdir()}
    assert "model-00001-of-00001.safetensors" in modes and "generation_config.json" in modes
    assert set(modes.values()) == {0o644}, modes


def test_a_base_directory_without_tokenizer_json_is_a_config_error(cfg, tmp_path):
    (Path(cfg.checkpoint_dir) / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="has no tokenizer.json"):
        CheckpointManager(cfg, tmp_path / "run", resume=False)
