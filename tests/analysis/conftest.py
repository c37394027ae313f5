"""The tiny checkpoint (model + tokenizer), written once per test session."""

import pytest

from focusft.tiny import load_tiny_tokenizer, write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_attention"))


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    return load_tiny_tokenizer(tiny_dir)
