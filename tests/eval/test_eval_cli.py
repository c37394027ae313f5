"""focusft-eval: lm-eval passthrough, the offline and paper suites, comparisons, and clear errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest

from focusft.eval.cli import main
from focusft.eval.suites import (
    PAPER_BABILONG_TASKS,
    PAPER_GPQA_TASKS,
    PAPER_LONGBENCH_TASKS,
    PAPER_RULER_TASKS,
    offline_suite,
    paper_suite,
)
from tests.unwritable import KINDS, unwritable_dir

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"


def test_paper_tasks_exist_in_the_installed_lm_eval():
    defined = {
        match
        for path in LM_EVAL_TASKS.rglob("*.yaml")
        for match in re.findall(r"^task:\s*(\S+)\s*$", path.read_text(errors="replace"), flags=re.M)
    }
    paper = {*PAPER_BABILONG_TASKS, *PAPER_RULER_TASKS, *PAPER_LONGBENCH_TASKS, *PAPER_GPQA_TASKS}
    assert paper <= defined
    runs = paper_suite("/ckpt")
    assert [r.metadata.get("max_seq_lengths") for r in runs[:4]] == ["4k", "8k", "16k", "32k"]
    assert runs[4].metadata == {"max_seq_lengths": [4096, 8192, 16384], "tokenizer": "/ckpt"}
    assert [r.name for r in paper_suite("/ckpt", {"ruler_cwe", "gpqa_diamond_zeroshot"})] == ["ruler", "gpqa"]
    assert [r.tasks for r in offline_suite(["512", "2k"], {"qa1"})] == [("focusft_qa1_512",), ("focusft_qa1_2k",)]


def _suite(tiny_dir, out, *extra):
    args = ["--suite", "offline", "--checkpoint_dir", str(tiny_dir), "--lengths", "512", "--tasks", "qa1,tool"]
    return main([*args, "--num_samples", "2", "--device", "cpu", "--output_dir", str(out), *extra])


def test_offline_suite_reports_and_comparison(tiny_dir, tmp_path, capsys):
    assert _suite(tiny_dir, tmp_path / "a", "--label", "sft", "--batch_size", "2", "--log_samples", "--reference") == 0
    assert "No published paper numbers for these tasks" in capsys.readouterr().out
    assert _suite(tiny_dir, tmp_path / "b", "--label", "hf", "--backend", "hf", "--model_args", "dtype=float32") == 0
    markdown = (tmp_path / "a" / "report.md").read_text()
    assert f"- checkpoint: {Path(tiny_dir).resolve()}" in markdown and "- backend: focusft" in markdown
    assert "- command: `focusft-eval --suite offline --checkpoint_dir" in markdown and "- date: 20" in markdown
    assert "| sft | 0.0 ± 0.0 (n=2) |" in markdown.split("### focusft_qa1 (exact_match, %)")[1]
    assert "| sft | 0.0 ± 0.0 (n=4) |" in markdown.split("### focusft_avg (exact_match, %)")[1]
    assert "No published paper numbers for these tasks" in markdown
    # --log_samples: every scored sample, with the generated text and the target.
    for task in ("focusft_qa1_512", "focusft_tool_512"):
        lines = (tmp_path / "a" / "lm_eval" / f"offline_512_samples_{task}.jsonl").read_text().splitlines()
        samples = [json.loads(line) for line in lines]
        assert len(samples) == 2 and all(s["target"] == s["doc"]["answer"] and "resps" in s for s in samples)
    assert "samples" not in json.loads((tmp_path / "a" / "lm_eval" / "offline_512.json").read_text())
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert {(s["task"], s["length"]) for s in report["scores"]} == {
        ("focusft_qa1", "512"),
        ("focusft_tool", "512"),
        ("focusft_avg", "512"),
    }
    assert (tmp_path / "a" / "lm_eval" / "offline_512.json").is_file()
    assert "### focusft_qa1 (exact_match, %)" in (tmp_path / "a" / "report.md").read_text()
    capsys.readouterr()
    assert main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output_dir", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    # Both backends generate the same answers, so every delta is zero.
    assert "| Δ hf − sft | +0.0 ± 0.0 |" in table
    assert (tmp_path / "cmp" / "comparison.md").is_file()


def test_lm_eval_passthrough_with_the_bundled_tasks(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv)  # the passthrough rewrites sys.argv for lm-eval's parser
    args = ["--model", "focusft", "--model_args", f"checkpoint_dir={tiny_dir}", "--tasks", "focusft_qa1_512"]
    args += ["--device", "cpu"]
    extra = ["--limit", "1", "--metadata", '{"num_samples": 1}', "--gen_kwargs", "max_gen_toks=2"]
    assert main([*args, *extra, "--output_path", str(tmp_path)]) == 0
    (results,) = tmp_path.rglob("results_*.json")
    assert "exact_match,none" in json.loads(results.read_text())["results"]["focusft_qa1_512"]


def test_unknown_task_is_one_clear_line(tiny_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", sys.argv)
    args = ["--model", "focusft", "--model_args", f"checkpoint_dir={tiny_dir}", "--tasks", "no_such_task"]
    assert main(args) == 2
    assert "Tasks not found: no_such_task" in capsys.readouterr().err
    assert main(["--suite", "offline", "--checkpoint_dir", str(tiny_dir), "--tasks", "qa9"]) == 2
    assert "not in this suite" in capsys.readouterr().err


def test_bad_checkpoint_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    assert main(["--suite", "offline", "--checkpoint_dir", str(tmp_path), "--lengths", "512"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'config.json'}: field 'model_type' is 'mistral'" in err and "Traceback" not in err


PAPER_DOWNLOADS = [*PAPER_BABILONG_TASKS, "niah_multivalue", *PAPER_LONGBENCH_TASKS, *PAPER_GPQA_TASKS]


def _paper_suite_offline(tiny_dir, tmp_path, env, *extra):
    command = [sys.executable, "-m", "focusft.eval.cli", "--suite", "paper", "--checkpoint_dir", str(tiny_dir)]
    command += ["--device", "cpu", "--output_dir", str(tmp_path), *extra]
    # The timeout is a hang guard, not a speed test: lm-eval's RULER generator would loop forever.
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "env, reason",
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}, "http://127.0.0.1:9 is unreachable"),
    ],
)
def test_paper_suite_without_network_fails_fast_with_one_line_per_task(tiny_dir, tmp_path, env, reason):
    done = _paper_suite_offline(tiny_dir, tmp_path, env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line.strip() for line in done.stderr.splitlines() if line.startswith("  task ")]
    assert [line.split()[1] for line in lines] == PAPER_DOWNLOADS
    assert all(line.endswith(reason) or reason in line for line in lines)
    assert "task babilong_qa3 at 4k, 8k, 16k, 32k needs network access" in done.stderr
    assert "task niah_multivalue at 4k, 8k, 16k needs network access" in done.stderr
    assert "task longbench_qasper needs network access to download dataset Xnhyacinth/LongBench" in done.stderr
    assert not (tmp_path / "lm_eval").exists()  # stopped before anything was evaluated


def test_ruler_data_the_tokenizer_cannot_reach_is_one_clear_line(tiny_dir, tmp_path):
    done = _paper_suite_offline(tiny_dir, tmp_path, {}, "--tasks", "ruler_vt,ruler_cwe")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"task ruler_vt at 4k, 8k, 16k cannot be generated with the tokenizer {tiny_dir}" in done.stderr
    assert "smallest in-context example, over the 500 lm-eval allows" in done.stderr
    assert "ruler_cwe" not in done.stderr  # cwe fits at these lengths
    assert not (tmp_path / "lm_eval").exists()


def test_suite_console_has_no_third_party_noise_outside_a_git_repository(tiny_dir, tmp_path):
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "focusft.eval.cli", "--suite", "offline", "--checkpoint_dir", str(tiny_dir)]
    command += ["--lengths", "512", "--tasks", "qa1", "--num_samples", "1", "--device", "cpu", "--output_dir", "out"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    for noise in ("fatal: not a git repository", "Skipping import of cpp extensions", "Custom kwargs can be passed"):
        assert noise not in console
    assert json.loads((tmp_path / "out" / "lm_eval" / "offline_512.json").read_text())["git_hash"] is None


@pytest.mark.parametrize("kind", KINDS)
def test_an_output_dir_that_cannot_be_written_is_one_line_before_data_and_model(
    tiny_dir, tmp_path, capsys, monkeypatch, kind
):
    out, reason = unwritable_dir(tmp_path, kind, monkeypatch)
    monkeypatch.setattr("focusft.eval.cli.fetch_suite", lambda *a: pytest.fail("data fetched before the check"))
    suite = ["--suite", "offline", "--checkpoint_dir", str(tiny_dir), "--lengths", "512", "--output_dir", str(out)]
    assert main(suite) == 2
    assert capsys.readouterr().err.strip() == f"focusft-eval: error: --output_dir {reason}."
    assert main(["--compare", str(tmp_path / "missing.json"), "--output_dir", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"focusft-eval: error: --output_dir {reason}."


def test_num_samples_below_one_is_one_line(tiny_dir, capsys):
    suite = ["--suite", "offline", "--checkpoint_dir", str(tiny_dir), "--lengths", "512", "--num_samples", "0"]
    assert main(suite) == 2
    assert capsys.readouterr().err.strip() == "focusft-eval: error: --num_samples must be at least 1, got 0."
