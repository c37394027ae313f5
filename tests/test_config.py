"""Config checks that run before any model is built."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchtune import config

from focusft.config import ConfigError, FocusConfig, check_input_files, check_training_values, checkpoint_files
from focusft.fast_weights import attach_fast_weight_slots
from focusft.outer_weights import outer_weights
from focusft.tiny import write_tiny_checkpoint

REPO_CONFIG = "configs/tiny/focusft_cpu.yaml"


def test_defaults_are_the_paper_hyperparameters():
    focus = FocusConfig.from_section(None)
    assert focus.variant == "FocuSFT" and focus.bilevel and focus.attention == "bidir_context"
    assert (focus.inner.steps, focus.inner.lr, focus.inner.grad_clip) == (2, 1.0, 1.0)
    fw = focus.fast_weights
    assert (fw.rank, fw.alpha, fw.layer_fraction) == (32, 64.0, 0.35)
    assert fw.target_modules == ("gate_proj", "up_proj", "down_proj")
    assert focus.fast_weight_scope == "document"


@pytest.mark.parametrize(
    "bilevel, attention, variant",
    [
        (False, "causal", "Standard SFT"),
        (False, "bidir_context", "SFT + Bidir"),
        (True, "causal", "Causal Bilevel"),
        (True, "bidir_context", "FocuSFT"),
    ],
)
def test_one_section_selects_each_paper_variant(bilevel, attention, variant):
    focus = FocusConfig.from_section({"bilevel": bilevel, "attention": attention})
    assert focus.variant == variant
    assert (focus.inner_loop is not None) == bilevel


@pytest.mark.parametrize(
    "section, message",
    [
        ({"inner_stepz": 2}, "Unknown key(s) in focusft: ['inner_stepz']"),
        ({"bilevel": "yes"}, "focusft.bilevel must be true or false"),
        ({"attention": "full"}, "focusft.attention must be one of"),
        ({"mask": "sparse"}, "focusft.mask must be one of"),
        ({"fast_weight_scope": "batch"}, "focusft.fast_weight_scope must be one of ['document', 'micro_batch']"),
        ({"inner_steps": -1}, "{'inner_steps': -1}"),
        ({"inner_lr": float("inf")}, "inner lr"),
        ({"inner_grad_clip": 0}, "inner grad_clip"),
        ({"rank": 0}, "{'rank': 0}"),
        ({"layer_fraction": 1.5}, "layer_fraction must be in (0, 1]"),
        ({"target_modules": ["q_proj"]}, "Unknown target module"),
    ],
)
def test_bad_focusft_values_name_the_key(section, message):
    with pytest.raises(ConfigError, match=None) as error:
        FocusConfig.from_section(section)
    assert message in str(error.value)


def test_block_mask_on_cpu_is_rejected_and_auto_picks_row_blocks_for_training():
    auto = FocusConfig.from_section({"mask": "auto"})
    assert auto.mask_kind(torch.device("cpu")) == "rows"
    assert auto.mask_kind(torch.device("cpu"), training=False) == "dense"  # a plain decoder's forward
    assert FocusConfig.from_section({"mask": "dense"}).mask_kind(torch.device("cpu")) == "dense"
    with pytest.raises(ConfigError, match="focusft.mask=rows runs the CPU flash-attention kernel; this run is on meta"):
        FocusConfig.from_section({"mask": "rows"}).mask_kind(torch.device("meta"))
    with pytest.raises(ConfigError, match="focusft.mask=block needs a CUDA GPU"):
        FocusConfig.from_section({"mask": "block"}).mask_kind(torch.device("cpu"))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1"),
        ({"gradient_accumulation_steps": 1.5}, "`gradient_accumulation_steps` must be an integer >= 1"),
        ({"epochs": 0}, "`epochs` must be an integer >= 1"),
        ({"save_every_n_steps": 0}, "`save_every_n_steps` must be null or an integer >= 1"),
        ({"clip_grad_norm": -1.0}, "`clip_grad_norm` must be null or a number > 0"),
        ({"warmup_ratio": 1.0}, "`warmup_ratio` must be null or in [0, 1)"),
        ({"dtype": "fp16"}, "`dtype` must be fp32 or bf16"),
        ({"dataset": None}, "Config key `dataset` is required"),
        ({"enable_activation_offloading": "maybe"}, "`enable_activation_offloading` must be true or false"),
        ({"enable_inner_activation_checkpointing": 2}, "`enable_inner_activation_checkpointing` must be true or false"),
        ({"enable_activation_checkpointing": "nope"}, "`enable_activation_checkpointing` must be true or false"),
    ],
)
def test_bad_training_values_name_the_key(override, message):
    cfg = OmegaConf.merge(OmegaConf.load(REPO_CONFIG), override)
    with pytest.raises(ConfigError) as error:
        check_training_values(cfg)
    assert message in str(error.value)


def test_missing_files_are_named(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base")
    cfg = OmegaConf.merge(OmegaConf.load(REPO_CONFIG), {"base_dir": str(base)})
    check_input_files(cfg)
    no_files = OmegaConf.merge(cfg, {"dataset": {"source": "json", "data_files": None}})
    with pytest.raises(ConfigError, match="dataset.source=json needs dataset.data_files"):
        check_input_files(no_files)
    (base / "merges.txt").unlink()
    with pytest.raises(ConfigError, match="tokenizer.merges_file file not found: .*merges.txt"):
        check_input_files(cfg)
    cfg.checkpointer.checkpoint_dir = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="checkpointer.checkpoint_dir does not exist"):
        check_input_files(cfg)


def test_sharded_checkpoint_file_pattern_expands_like_torchtune():
    cfg = OmegaConf.create(
        {"checkpoint_files": {"filename_format": "model-{}-of-{}.safetensors", "max_filename": "00004"}}
    )
    assert checkpoint_files(cfg) == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]


@pytest.mark.parametrize("path", sorted(Path("configs").rglob("*.yaml")), ids=str)
def test_shipped_configs_are_valid_and_build_their_model(path):
    cfg = OmegaConf.load(path)
    focus = FocusConfig.from_section(cfg.focusft)
    check_training_values(cfg)
    assert checkpoint_files(cfg.checkpointer)
    assert outer_weights(cfg).adapter == ("lora" in path.name)  # a LoRA builder selects the LoRA outer loop
    # NF4 quantisation takes minutes at 72B even on the meta device; the architecture is the same without it.
    plain = {"quantize_base": False} if cfg.model.get("quantize_base") else {}
    with torch.device("meta"):
        model = config.instantiate(cfg.model, **plain)
    slots = attach_fast_weight_slots(model, focus.fast_weights)
    assert 0 < slots.first_layer < len(model.layers)
    if path.name == "7B_focusft.yaml":  # paper Table 5
        assert (len(model.layers), slots.first_layer) == (28, 18)
        assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.warmup_ratio, cfg.clip_grad_norm) == (
            1e-5,
            0.01,
            0.1,
            1.0,
        )
        assert (cfg.epochs, cfg.batch_size, cfg.gradient_accumulation_steps, cfg.seed) == (5, 1, 4, 1234)
        assert (cfg.dataset.max_seq_len, cfg.dtype, cfg.enable_activation_checkpointing) == (4096, "bf16", True)
        assert focus == FocusConfig(loss_normalization="sample")  # the authors' per-sample weighting
    if path.parent.name == "qwen2_5":
        assert focus.loss_normalization == "sample"


def test_unknown_keys_get_a_did_you_mean_and_plus_keys_are_allowed():
    from focusft.config import accept_additions, check_known_keys

    cfg = OmegaConf.load(REPO_CONFIG)  # base_dir is not a recipe key, but `${base_dir}` uses it
    check_known_keys(cfg)
    typo = OmegaConf.merge(cfg, OmegaConf.from_dotlist(["stop_after_stpe=3"]))
    with pytest.raises(
        ConfigError, match=r"Unknown config key\(s\) `stop_after_stpe` \(did you mean `stop_after_step`"
    ):
        check_known_keys(typo)
    data_typo = OmegaConf.merge(cfg, OmegaConf.from_dotlist(["dataset.tsk=qa1"]))
    with pytest.raises(ConfigError, match=r"`dataset.tsk` \(did you mean `dataset.task`\?\)"):
        check_known_keys(data_typo)

    added, keys = accept_additions(OmegaConf.merge(cfg, OmegaConf.from_dotlist(["+my_note=x", "+dataset.extra=1"])))
    assert keys == {"my_note", "dataset.extra"} and added.my_note == "x" and added.dataset.extra == 1
    assert "+my_note" not in added
    check_known_keys(added, keys)


def test_dataset_arguments_forwarded_as_kwargs_are_checked_for_typos_only():
    from focusft.config import check_known_keys

    cfg = OmegaConf.load("configs/qwen2_5/7B_focusft.yaml")  # chat_dataset(**load_dataset_kwargs)
    check_known_keys(OmegaConf.merge(cfg, {"dataset": {"revision": "main"}}))  # goes to datasets.load_dataset
    with pytest.raises(ConfigError, match=r"`dataset.long_sample_polcy` \(did you mean `dataset.long_sample_policy`"):
        check_known_keys(OmegaConf.merge(cfg, {"dataset": {"long_sample_polcy": "truncate_left"}}))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"lr_scheduler": {"num_warmup_steps": 5}}, "Set either `warmup_ratio` or `lr_scheduler.num_warmup_steps`"),
        ({"lr_scheduler": {"num_warmup_steps": -1}, "warmup_ratio": None}, "num_warmup_steps` must be an integer >= 0"),
        ({"optimizer": {"lr": -1.0}}, "`optimizer.lr` must be a finite number > 0, got -1.0"),
        ({"optimizer": {"lr": "fast"}}, "`optimizer.lr` must be a finite number > 0, got 'fast'"),
        ({"keep_recipe_states": 0}, "`keep_recipe_states` must be an integer >= 1"),
        ({"max_consecutive_skipped_steps": 0}, "`max_consecutive_skipped_steps` must be an integer >= 1"),
    ],
)
def test_warmup_lr_and_robustness_values(override, message):
    cfg = OmegaConf.merge(OmegaConf.load(REPO_CONFIG), override)
    with pytest.raises(ConfigError) as error:
        check_training_values(cfg)
    assert message in str(error.value)


def test_num_warmup_steps_alone_is_accepted():
    cfg = OmegaConf.merge(OmegaConf.load(REPO_CONFIG), {"lr_scheduler": {"num_warmup_steps": 3}, "warmup_ratio": None})
    check_training_values(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line():
    from focusft.config import check_device

    with pytest.raises(ConfigError, match="device=cuda, but this process sees no CUDA GPU"):
        check_device(OmegaConf.create({"device": "cuda"}))


def test_output_dir_that_cannot_be_created(tmp_path):
    from focusft.config import check_output_dir

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"output_dir .*file/run cannot be created: Not a directory"):
        check_output_dir(tmp_path / "file" / "run")
    assert check_output_dir(tmp_path / "new" / "run").is_dir()


def test_config_differences_name_each_changed_setting():
    from focusft.config import config_differences

    saved = {"optimizer": {"lr": 1e-3, "betas": [0.9, 0.99]}, "batch_size": 2, "seed": 1}
    now = {"optimizer": {"lr": 2e-3, "betas": [0.9, 0.99], "fused": True}, "batch_size": 2, "seed": 5}
    assert config_differences(saved, now, ("optimizer", "batch_size")) == [
        "optimizer.fused (unset) -> True",
        "optimizer.lr 0.001 -> 0.002",
    ]
