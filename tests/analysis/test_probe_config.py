"""The ``attention_probe`` config section: off by default, bad values named."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from focusft.analysis.probe import AttentionProbe, AttentionProbeConfig
from focusft.config import ConfigError


def test_off_by_default_and_read_from_a_dictconfig():
    assert AttentionProbeConfig.from_section(None).every_n_steps is None
    section = OmegaConf.create({"every_n_steps": 5, "sample_index": 2, "mask": "causal"})
    assert AttentionProbeConfig.from_section(section) == AttentionProbeConfig(5, 2, "causal")


@pytest.mark.parametrize(
    "section, message",
    [
        ({"every_n_step": 5}, "Unknown key(s) in attention_probe: ['every_n_step']"),
        ({"every_n_steps": 0}, "attention_probe.every_n_steps must be null or an integer >= 1, got 0"),
        ({"every_n_steps": True}, "attention_probe.every_n_steps must be null or an integer >= 1, got True"),
        ({"sample_index": -1}, "attention_probe.sample_index must be an integer >= 0, got -1"),
        ({"mask": "full"}, "attention_probe.mask must be one of ['training', 'bidir_context', 'causal']"),
        (3, "attention_probe must be a mapping"),
    ],
)
def test_bad_values_are_named(section, message):
    with pytest.raises(ConfigError) as err:
        AttentionProbeConfig.from_section(section)
    assert message in str(err.value)


def test_a_sample_index_past_the_dataset_or_without_responses_is_a_config_error(tokenizer):
    item = {"tokens": [1, 2, 3], "labels": [-100] * 3, "context": [True] * 3}
    config = AttentionProbeConfig(every_n_steps=1, sample_index=1)
    with pytest.raises(ConfigError, match="attention_probe.sample_index is 1, but the dataset has 1 items"):
        AttentionProbe(config, [item], tokenizer, "causal", "dense", "cpu")
    with pytest.raises(ConfigError, match="dataset item 0 has no response"):
        AttentionProbe(AttentionProbeConfig(every_n_steps=1), [item], tokenizer, "causal", "dense", "cpu")


@pytest.mark.parametrize("path", sorted(Path("configs").rglob("*.yaml")), ids=str)
def test_shipped_configs_have_the_probe_section_and_it_is_off(path):
    section = OmegaConf.load(path).get("attention_probe")
    assert section is not None
    assert AttentionProbeConfig.from_section(section) == AttentionProbeConfig()
