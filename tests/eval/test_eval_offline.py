"""The offline suite end to end through lm-eval: prompts, generations, metrics, and the two backends."""

import json

import lm_eval
import pytest
import yaml
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from focusft.data.messages import to_torchtune_messages
from focusft.data.synthetic import SYNTHETIC_TASKS, generate_samples
from focusft.data.tokenize import tokenize_conversation
from focusft.eval.offline import (
    OFFLINE_LENGTHS,
    OFFLINE_TASKS,
    normalize_answer,
    offline_task_name,
    render_prompt,
)
from focusft.eval.suites import TASKS_DIR
from tests.eval.conftest import EOS, cut, direct_greedy, encode

TASKS = ["focusft_qa3_512", "focusft_tool_512"]
NUM_SAMPLES = 2
NEW_TOKENS = 4  # enough to compare generations; the direct reference re-reads the whole prompt per token


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_prompt_tokenizes_exactly_as_training_up_to_the_answer(task, tt_tokenizer):
    for sample in generate_samples(task, num_samples=2, target_tokens=512, split="eval"):
        prompt = render_prompt(sample["messages"])
        training = tokenize_conversation(to_torchtune_messages(sample["messages"]), tt_tokenizer).tokens
        ids = encode(tt_tokenizer, prompt)
        assert prompt.endswith(f"{EOS}\n<|im_start|>assistant\n")
        assert training == ids + encode(tt_tokenizer, sample["answer"]) + [tt_tokenizer.eos_id]


def test_answers_match_up_to_case_space_and_punctuation():
    assert normalize_answer(" Porch.\n") == normalize_answer("porch")
    assert normalize_answer("the porch") != normalize_answer("porch")


def _evaluate(lm, tasks, include_path=TASKS_DIR):
    manager = TaskManager(include_path=str(include_path), include_defaults=False, metadata={"num_samples": NUM_SAMPLES})
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        gen_kwargs={"max_gen_toks": NEW_TOKENS},
        log_samples=True,
        bootstrap_iters=0,
    )


@pytest.fixture(scope="module")
def focusft_results(focusft_lm):
    return _evaluate(focusft_lm, TASKS)


def _greedy_answer(reference_model, tt_tokenizer, hf_tokenizer, prompt):
    tokens = direct_greedy(reference_model, encode(tt_tokenizer, prompt), NEW_TOKENS, {tt_tokenizer.eos_id})
    return cut(hf_tokenizer.decode(tokens, skip_special_tokens=True), [EOS])


def test_offline_suite_through_simple_evaluate(focusft_results, reference_model, tt_tokenizer, hf_tokenizer):
    for task in TASKS:
        metrics = focusft_results["results"][task]
        samples = focusft_results["samples"][task]
        assert len(samples) == NUM_SAMPLES
        assert {"exact_match,none", "exact_match_stderr,none"} <= set(metrics)
        hits = []
        for sample in samples:
            answer = _greedy_answer(reference_model, tt_tokenizer, hf_tokenizer, sample["doc"]["prompt"])
            assert sample["resps"] == [[answer]]
            hits.append(normalize_answer(answer) == normalize_answer(sample["doc"]["answer"]))
        assert metrics["exact_match,none"] == pytest.approx(sum(hits) / len(hits))


def test_exact_match_counts_the_right_answers(tmp_path, focusft_lm, reference_model, tt_tokenizer, hf_tokenizer):
    # A task over the same prompts whose answers are the model's own greedy output for one doc of two.
    docs = []
    for index, sample in enumerate(generate_samples("qa2", num_samples=2, target_tokens=512, split="eval", seed=5)):
        prompt = render_prompt(sample["messages"])
        own = _greedy_answer(reference_model, tt_tokenizer, hf_tokenizer, prompt)
        docs.append({"prompt": prompt, "answer": f" {own.upper()}." if index % 2 == 0 else own + " not"})
    assert len({normalize_answer(d["answer"]) for d in docs[::2]} - {""}) > 0
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "utils.py").write_text("from focusft.eval.offline import process_results\n")
    (tmp_path / "handmade.yaml").write_text(
        (TASKS_DIR / "offline" / "_offline_common_yaml")
        .read_text()
        .replace("tag: focusft_offline\n", "")
        .replace("custom_dataset: !function utils.build_dataset\n", "")
        .replace('dataset_path: ""', "dataset_path: json")
        .replace(
            'dataset_name: ""',
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}",
        )
        + "task: handmade_exact_match\n"
    )
    results = _evaluate(focusft_lm, ["handmade_exact_match"], include_path=tmp_path)
    assert results["results"]["handmade_exact_match"]["exact_match,none"] == pytest.approx(0.5)


def test_hf_backend_gives_the_same_generations_and_metrics(tiny_dir, focusft_results):
    hf = HFLM(pretrained=str(tiny_dir), device="cpu", dtype="float32", batch_size=3)
    hf_results = _evaluate(hf, TASKS)
    for task in TASKS:
        assert hf_results["results"][task]["exact_match,none"] == focusft_results["results"][task]["exact_match,none"]
        ours = [s["resps"] for s in focusft_results["samples"][task]]
        assert [s["resps"] for s in hf_results["samples"][task]] == ours


def test_bundled_yamls_cover_every_task_and_length():
    folder = TASKS_DIR / "offline"
    for length, tokens in OFFLINE_LENGTHS.items():
        group = yaml.safe_load((folder / f"focusft_offline_{length}.yaml").read_text())
        assert group["task"] == [offline_task_name(task, length) for task in OFFLINE_TASKS]
        for task in OFFLINE_TASKS:
            config = yaml.safe_load((folder / f"{offline_task_name(task, length)}.yaml").read_text())
            assert config["dataset_kwargs"] == {"synthetic_task": task, "target_tokens": tokens}
    assert len(list(folder.glob("*.yaml"))) == len(OFFLINE_LENGTHS) * (len(OFFLINE_TASKS) + 1)
