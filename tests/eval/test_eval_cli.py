"""focusft-eval: lm-eval passthrough, the offline and paper suites, comparisons, and clear errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lm_eval

from focusft.eval.cli import main
from focusft.eval.suites import (
    PAPER_BABILONG_TASKS,
    PAPER_GPQA_TASKS,
    PAPER_LONGBENCH_TASKS,
    PAPER_RULER_TASKS,
    offline_suite,
    paper_suite,
)

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
    assert _suite(tiny_dir, tmp_path / "a", "--label", "sft", "--batch_size", "2") == 0
    assert _suite(tiny_dir, tmp_path / "b", "--label", "hf", "--backend", "hf", "--model_args", "dtype=float32") == 0
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
    assert "| Δ hf − sft | +0.0 |" in table
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
    assert main(args) == 1
    assert "Tasks not found: no_such_task" in capsys.readouterr().err
    assert main(["--suite", "offline", "--checkpoint_dir", str(tiny_dir), "--tasks", "qa9"]) == 1
    assert "not in this suite" in capsys.readouterr().err


def test_bad_checkpoint_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["--suite", "offline", "--checkpoint_dir", str(tmp_path), "--lengths", "512"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'config.json'}: field 'model_type' is 'llama'" in err and "Traceback" not in err


def test_paper_suite_without_network_fails_with_a_clear_message(tiny_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "focusft.eval.cli", "--suite", "paper", "--checkpoint_dir", str(tiny_dir)]
    command += ["--tasks", "longbench_qasper", "--device", "cpu", "--output_dir", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "task longbench_qasper needs network access to download dataset Xnhyacinth/LongBench" in done.stderr
    assert "Traceback" not in done.stderr
