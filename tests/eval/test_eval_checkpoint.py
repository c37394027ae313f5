"""Checkpoint directories: the layouts this project writes load right; wrong ones fail with clear errors."""

import json
import shutil

import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from safetensors.torch import load_file, save_file
from torchtune import training
from torchtune.models.qwen2 import qwen2_tune_to_hf

from focusft.eval import FocusftLM
from focusft.eval.checkpoint import read_checkpoint
from focusft.eval.errors import CheckpointError
from focusft.tiny import TinyQwenConfig, hf_config, seeded_tiny_qwen2_5

REQUESTS = [
    Instance("loglikelihood", {}, ("Alice moved to the pantry. Where is Alice?", " pantry"), 0),
    Instance("loglikelihood", {}, ("", "Frank went back to the porch."), 1),
]


def _scores(lm):
    return [logprob for logprob, _ in lm.loglikelihood(REQUESTS, disable_tqdm=True)]


def test_recipe_checkpoint_with_sharded_weights_loads_the_same_model(tiny_dir, focusft_lm, tmp_path):
    # What the recipe writes: torchtune's HF checkpointer output, epoch_0/model-00001-of-00001 + index + config.
    checkpointer = training.FullModelHFCheckpointer(
        checkpoint_dir=str(tiny_dir),
        checkpoint_files=["model.safetensors"],
        model_type="QWEN2",
        output_dir=str(tmp_path),
    )
    checkpointer.save_checkpoint(checkpointer.load_checkpoint(), epoch=0)
    (tmp_path / "epoch_0" / "recipe_state.pt").write_bytes(b"ignored")
    lm = FocusftLM(checkpoint_dir=str(tmp_path / "epoch_0"), device="cpu")
    assert read_checkpoint(tmp_path / "epoch_0").weight_files == ("model-00001-of-00001.safetensors",)
    assert _scores(lm) == pytest.approx(_scores(focusft_lm), abs=1e-6)
    # lm-eval's hf backend reads the same directory.
    hf = HFLM(pretrained=str(tmp_path / "epoch_0"), device="cpu", dtype="float32")
    assert _scores(hf) == pytest.approx(_scores(lm), abs=1e-4)


def test_two_shards_and_an_index(tiny_dir, focusft_lm, tmp_path):
    state = load_file(str(tiny_dir / "model.safetensors"))
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in ("config.json", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    assert _scores(FocusftLM(checkpoint_dir=str(tmp_path), device="cpu")) == pytest.approx(
        _scores(focusft_lm), abs=1e-6
    )


def test_tied_embeddings_agree_with_transformers(tiny_dir, tmp_path):
    # Qwen2.5 0.5B-3B tie the output projection to the embeddings; the file then has no lm_head.
    config = TinyQwenConfig(tie_word_embeddings=True)
    model = seeded_tiny_qwen2_5(3, tie_word_embeddings=True)
    state = qwen2_tune_to_hf(
        model.state_dict(),
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        dim=config.embed_dim,
        tie_word_embeddings=True,
    )
    assert "lm_head.weight" not in state
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"}
    )
    eos_id = json.loads((tiny_dir / "config.json").read_text())["eos_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(hf_config(config, eos_token_id=eos_id)))
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    ours = _scores(FocusftLM(checkpoint_dir=str(tmp_path), device="cpu"))
    theirs = _scores(HFLM(pretrained=str(tmp_path), device="cpu", dtype="float32"))
    assert ours == pytest.approx(theirs, abs=1e-4)


def _copy(tiny_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    return target


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        FocusftLM(checkpoint_dir=str(tmp_path / "nope"), device="cpu")


def test_other_architecture_names_the_file_and_field(tiny_dir, tmp_path):
    ckpt = _copy(tiny_dir, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(
        json.dumps({**config, "model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    )
    with pytest.raises(CheckpointError, match=r"config\.json: field 'model_type' is 'mistral'"):
        FocusftLM(checkpoint_dir=str(ckpt), device="cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "holds no weights"),
        (lambda d: (d / "merges.txt").unlink(), "lacks the tokenizer file merges.txt"),
        (lambda d: (d / "config.json").unlink(), "has no config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "is not valid JSON"),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps({k: v for k, v in json.loads((d / "config.json").read_text()).items() if k != "hidden_size"})
            ),
            "field 'hidden_size' is missing",
        ),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps(
                    {**json.loads((d / "config.json").read_text()), "rope_scaling": {"type": "yarn", "factor": 4.0}}
                )
            ),
            "field 'rope_scaling'",
        ),
    ],
)
def test_broken_checkpoints(tiny_dir, tmp_path, change, message):
    ckpt = _copy(tiny_dir, tmp_path)
    change(ckpt)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(ckpt)


def test_weights_that_do_not_match_the_config(tiny_dir, tmp_path):
    ckpt = _copy(tiny_dir, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="do not match its config.json"):
        FocusftLM(checkpoint_dir=str(ckpt), device="cpu")


def test_tokenizer_from_another_directory(tiny_dir, tmp_path, focusft_lm):
    ckpt = _copy(tiny_dir, tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).unlink()
    lm = FocusftLM(checkpoint_dir=str(ckpt), tokenizer=str(tiny_dir), device="cpu")
    assert _scores(lm) == pytest.approx(_scores(focusft_lm), abs=1e-6)


def test_bad_model_arguments(tiny_dir):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", batch_size="auto")
    with pytest.raises(ValueError, match="Unsupported dtype"):
        FocusftLM(checkpoint_dir=str(tiny_dir), device="cpu", dtype="int8")


def test_non_finite_weights_are_refused_naming_the_tensor(tiny_dir, tmp_path):
    ckpt = _copy(tiny_dir, tmp_path)
    state = load_file(ckpt / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"not finite: tensor layers\.1\.mlp\.w3\.weight holds NaN"):
        FocusftLM(checkpoint_dir=str(ckpt), device="cpu")
