"""The RULER pre-check agrees with lm-eval's own generators: it flags what they cannot finish, and only that."""

import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from focusft.eval.preflight import ruler_length_problem

GENERATE = """
import sys
from transformers import AutoTokenizer
from lm_eval.tasks.ruler import cwe_utils, vt_utils
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
if sys.argv[2] == "vt":
    vt_utils.sys_vartrack_w_noise_random(tokenizer=tokenizer, num_samples=1, max_seq_length=500, incremental=5)
else:
    cwe_utils.sys_word_pair_random(num_samples=1, max_seq_length=int(sys.argv[3]), tokenizer=tokenizer)
print("generated")
"""


def lm_eval_generates(tiny_dir, *args, seconds=10):
    """Whether lm-eval's generator returns within ``seconds`` (it retries forever when it cannot fit)."""
    command = [sys.executable, "-c", GENERATE, str(tiny_dir), *args]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and done.stdout.strip().endswith("generated")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(str(tiny_dir))


def test_vt_in_context_example_too_long_for_the_tiny_tokenizer(tiny_dir, tokenizer):
    problem = ruler_length_problem("ruler_vt", tokenizer, [4096])
    assert problem is not None and "smallest in-context example" in problem
    assert not lm_eval_generates(tiny_dir, "vt")


def test_cwe_fits_4k_but_not_a_few_hundred_tokens(tiny_dir, tokenizer):
    assert ruler_length_problem("ruler_cwe", tokenizer, [4096]) is None
    assert lm_eval_generates(tiny_dir, "cwe", "4096", seconds=120)
    problem = ruler_length_problem("ruler_cwe", tokenizer, [4096, 256])
    assert problem is not None and "over the length 256" in problem


class _FakeTask:
    def __init__(self, docs):
        self.eval_docs = docs


class _FakeManager:
    """lm-eval's TaskManager, with RULER generators that fit no sample (or divide by zero doing so)."""

    def __init__(self, **kwargs):
        pass

    def match_tasks(self, names):
        return names

    def load(self, name):
        if name == "ruler_cwe":
            raise ZeroDivisionError("division by zero")
        return {"tasks": {name: _FakeTask([] if name == "ruler_vt" else [{"input": "x"}])}}


def test_a_ruler_task_the_tokenizer_cannot_make_is_one_line_per_task(monkeypatch):
    from focusft.eval.runner import load_run
    from focusft.eval.suites import EvalRun

    monkeypatch.setattr("focusft.eval.runner.TaskManager", _FakeManager)
    run = EvalRun("ruler", ("niah_multivalue", "ruler_cwe", "ruler_vt"), {"max_seq_lengths": [4096], "tokenizer": "T"})
    _, tasks, failures = load_run(run, {})
    assert len(tasks) == 2  # niah_multivalue's, and ruler_vt's empty one (reported, never evaluated)
    assert failures == [
        f"task {name} at 4k has no sample: its generator fits none within the lengths with the tokenizer T; use "
        "longer lengths or the tokenizer of a real Qwen2.5 model"
        for name in ("ruler_cwe", "ruler_vt")
    ]
