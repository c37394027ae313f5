"""The tiny Qwen2.5 tokenizer, trained once per test session."""

import pytest

from focusft.tiny import load_tiny_tokenizer, write_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tiny_tokenizer(tokenizer_dir)
