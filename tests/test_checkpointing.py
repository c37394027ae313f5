"""Checkpoints are written whole or not at all, and resume finds the last complete one."""

import errno
import json
import stat
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from focusft.checkpointing import LATEST, RECIPE_STATE, CheckpointError, CheckpointManager
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
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint epoch_1 in {out}: disk full"):
        manager.save("epoch_1", dict(state), {"global_step": 4})
    assert (out / LATEST).read_text() == "epoch_0"
    assert not (out / "epoch_1").exists()
    assert (out / "epoch_0" / "model-00001-of-00001.safetensors").read_bytes() == saved

    resumed = CheckpointManager(cfg, out, resume=True)
    assert resumed.resume_dir == out / "epoch_0"
    assert resumed.load_recipe_state() == {"global_step": 2}
    for key, value in resumed.load_model_state().items():
        torch.testing.assert_close(value, state[key], atol=0, rtol=0)


def saved_states(out):
    return sorted(p.parent.name for p in out.glob(f"*/{RECIPE_STATE}"))


def test_the_newest_checkpoints_keep_their_recipe_state(cfg, tmp_path):
    out = tmp_path / "run"
    manager = CheckpointManager(cfg, out, resume=False)  # keep_recipe_states=2
    state = manager.load_model_state()
    for step, name in enumerate(["step_1", "epoch_0", "step_3", "epoch_1"], start=1):
        manager.save(name, dict(state), {"global_step": step}, step=step)
    assert (out / LATEST).read_text() == "epoch_1"
    assert saved_states(out) == ["epoch_1", "step_3"]
    assert (out / "step_1" / "model-00001-of-00001.safetensors").is_file()
    assert not list(out.glob(".staging*"))

    single = tmp_path / "single"
    manager = CheckpointManager(cfg, single, resume=False, keep_recipe_states=1)
    state = manager.load_model_state()
    manager.save("step_1", dict(state), {}, step=1)
    manager.save("step_2", dict(state), {}, step=2)
    assert saved_states(single) == ["step_2"]


def test_non_finite_weights_are_never_written(cfg, tmp_path):
    out = tmp_path / "run"
    manager = CheckpointManager(cfg, out, resume=False)
    state = manager.load_model_state()
    manager.save("step_1", dict(state), {"global_step": 1}, step=1)
    poisoned = dict(state)
    name = sorted(state)[3]
    poisoned[name] = state[name].clone()
    poisoned[name].view(-1)[7] = float("inf")
    with pytest.raises(
        CheckpointError, match=rf"refusing to write checkpoint .*step_2: weight {name} holds NaN or inf"
    ):
        manager.save("step_2", poisoned, {"global_step": 2}, step=2)
    assert (out / LATEST).read_text() == "step_1"
    assert not (out / "step_2").exists() and not list(out.glob(".staging*"))


def test_disk_full_says_no_space_left_and_keeps_latest(cfg, tmp_path):
    out = tmp_path / "run"
    manager = CheckpointManager(cfg, out, resume=False)
    state = manager.load_model_state()
    manager.save("step_1", dict(state), {"global_step": 1}, step=1)

    def full(state_dict, epoch, **_):
        partial = out / ".staging" / "epoch_0"
        partial.mkdir(parents=True)
        (partial / "model-00001-of-00001.safetensors").write_bytes(b"half")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:  # safetensors and torch.save wrap the OSError in errors of their own
            raise RuntimeError("file write failed") from error

    manager.checkpointer.save_checkpoint = full
    with pytest.raises(CheckpointError, match=f"no space left on {out} while writing checkpoint step_2"):
        manager.save("step_2", dict(state), {"global_step": 2}, step=2)
    assert (out / LATEST).read_text() == "step_1" and not (out / ".staging").exists()


@pytest.mark.parametrize("stage", ["weights", "recipe state", "LATEST"])
def test_permission_denied_while_saving_is_a_checkpoint_error_and_keeps_latest(cfg, tmp_path, monkeypatch, stage):
    """What `chattr +i` on output_dir (or on a file in it) gives halfway through a save."""
    out = tmp_path / "run"
    manager = CheckpointManager(cfg, out, resume=False)
    state = manager.load_model_state()
    manager.save("step_1", dict(state), {"global_step": 1}, step=1)
    saved = (out / "step_1" / "model-00001-of-00001.safetensors").read_bytes()

    def denied(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(out / "x"))

    if stage == "weights":
        manager.checkpointer.save_checkpoint = denied
    elif stage == "recipe state":
        monkeypatch.setattr("focusft.checkpointing.torch.save", denied)
    else:
        monkeypatch.setattr("focusft.checkpointing.os.replace", denied)
    with pytest.raises(CheckpointError) as error:
        manager.save("step_2", dict(state), {"global_step": 2}, step=2)
    message = str(error.value)
    assert f"cannot write checkpoint step_2 in {out}: Operation not permitted ({out / 'x'})" in message
    assert f"The last good checkpoint is {out / 'step_1'}." in message
    assert (out / LATEST).read_text() == "step_1" and not (out / ".staging").exists()
    assert (out / "step_1" / "model-00001-of-00001.safetensors").read_bytes() == saved


def test_a_latest_file_that_is_not_text_falls_back_to_the_newest_checkpoint(cfg, tmp_path):
    out = tmp_path / "run"
    manager = CheckpointManager(cfg, out, resume=False)
    state = manager.load_model_state()
    manager.save("epoch_0", dict(state), {"global_step": 2}, step=2)
    manager.save("step_3", dict(state), {"global_step": 3}, step=3)
    for garbage in (b"\xff\xfe\x00step", b"../elsewhere", b""):
        (out / LATEST).write_bytes(garbage)
        resumed = CheckpointManager(cfg, out, resume=True)
        assert resumed.resume_dir == out / "step_3" and resumed.load_recipe_state() == {"global_step": 3}


def corrupt(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("broken", [RECIPE_STATE, "model-00001-of-00001.safetensors"])
def test_resume_falls_back_when_latest_cannot_be_read(cfg, tmp_path, broken, caplog):
    out = tmp_path / "run"
    manager = CheckpointManager(cfg, out, resume=False)
    state = manager.load_model_state()
    manager.save("epoch_0", dict(state), {"global_step": 2}, step=2)
    newer = {k: v + 1 for k, v in state.items()}
    manager.save("step_3", newer, {"global_step": 3}, step=3)
    corrupt(out / "step_3" / broken)
    (out / ".staging" / "epoch_0").mkdir(parents=True)  # what a full disk leaves behind
    (out / ".staging" / "epoch_0" / "model-00001-of-00001.safetensors").write_bytes(b"partial")

    resumed = CheckpointManager(cfg, out, resume=True)
    assert resumed.resume_dir == out / "epoch_0"
    assert resumed.load_recipe_state() == {"global_step": 2}
    assert f"Cannot resume from {out / 'step_3'}" in caplog.text
    for key, value in resumed.load_model_state().items():
        torch.testing.assert_close(value, state[key], atol=0, rtol=0)
    resumed.remove_stale()  # what the recipe does at start-up
    assert not (out / ".staging").exists()
    assert saved_states(out) == ["epoch_0", "step_3"]

    corrupt(out / "epoch_0" / RECIPE_STATE)
    with pytest.raises(ConfigError, match="No checkpoint in .* can be resumed from: step_3: .*; epoch_0: "):
        CheckpointManager(cfg, out, resume=True)


def test_a_resumed_checkpoint_keeps_its_state_until_the_run_saves(cfg, tmp_path):
    out = tmp_path / "run"
    manager = CheckpointManager(cfg, out, resume=False, keep_recipe_states=1)
    state = manager.load_model_state()
    manager.save("epoch_0", dict(state), {"global_step": 2}, step=2)
    manager.save("step_3", dict(state), {"global_step": 3}, step=3)
    assert saved_states(out) == ["step_3"]
    load_file(out / "step_3" / "model-00001-of-00001.safetensors")  # weights of older checkpoints stay
    resumed = CheckpointManager(cfg, out, resume=True, keep_recipe_states=1)
    resumed.remove_stale()
    assert saved_states(out) == ["step_3"]


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


def test_a_base_without_tokenizer_config_saves_qwen_instructs(cfg, tmp_path):
    from transformers import AutoTokenizer

    (Path(cfg.checkpoint_dir) / "tokenizer_config.json").unlink()
    manager = CheckpointManager(cfg, tmp_path / "run", resume=False)
    saved = manager.save("epoch_0", manager.load_model_state(), {"global_step": 1})
    template = (Path(__file__).parent / "fixtures" / "qwen2_5_instruct_chat_template.jinja").read_text()
    assert json.loads((saved / "tokenizer_config.json").read_text())["chat_template"] == template
    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer("<|im_start|>x<|im_end|>").input_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_a_base_directory_without_tokenizer_json_is_a_config_error(cfg, tmp_path):
    (Path(cfg.checkpoint_dir) / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="has no tokenizer.json"):
        CheckpointManager(cfg, tmp_path / "run", resume=False)
