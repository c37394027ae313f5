"""The paper's tables from reports: cells are the reports' numbers, gaps say "not run"; one offline end-to-end run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from focusft.eval.paper_tables import NOT_RUN, all_tables, figure4, table1, table2, table3, table_b1
from focusft.eval.report import Report, Score, with_averages
from focusft.eval.reproduce import main


def _paper_report(label: str, seed: int) -> Report:
    rng = random.Random(seed)
    scores = [
        Score(f"babilong_qa{i}", length, "acc", rng.random(), 0.01, 100)
        for i in range(1, 6)
        for length in ("4k", "8k", "16k", "32k")
    ]
    scores += [
        Score(task, length, "string_match", rng.random(), 0.02, 50)
        for task in ("niah_multivalue", "ruler_cwe", "ruler_vt")
        for length in ("4k", "8k", "16k")
    ]
    scores += [
        Score(task, "", "qa_f1_score", rng.random(), None, 200)
        for task in ("longbench_hotpotqa", "longbench_multifieldqa_en", "longbench_narrativeqa", "longbench_qasper")
    ]
    return Report(label, with_averages(scores), {})


def _value(report: Report, task: str, length: str) -> float:
    return next(s.value for s in report.scores if s.task == task and s.length == length)


def test_tables_hold_each_reports_own_numbers_and_the_paper_rows() -> None:
    reports = {"sft": _paper_report("sft", 1), "focusft": _paper_report("focusft", 2)}
    gpqa = {"focusft": {"pass@1 (majority)": 25.0, "mean@n": 20.0, "pass@8": 60.0, "pass@32": 81.25}}
    t1 = table1(reports)
    focus_row = next(line for line in t1.splitlines() if line.startswith("| **FocuSFT**"))
    cwe16 = _value(reports["focusft"], "ruler_cwe", "16k")
    assert f"{100 * cwe16:.1f} ± 2.0" == focus_row.split(" | ")[6]
    assert "| FocuSFT (paper) | 98.9 | 95.4 | 95.6 | 97.8 | 88.8 | 81.1 |" in t1

    t2 = table2(reports, gpqa)
    sft_row = next(line for line in t2.splitlines() if line.startswith("| **Standard SFT**"))
    focus_row = next(line for line in t2.splitlines() if line.startswith("| **FocuSFT**"))
    f1 = [
        _value(reports["focusft"], t, "")
        for t in ("longbench_hotpotqa", "longbench_multifieldqa_en", "longbench_narrativeqa", "longbench_qasper")
    ]
    assert focus_row.split(" | ")[5] == f"{100 * sum(f1) / 4:.1f}"
    assert focus_row.endswith("| 25.0 | 81.2 (k=32) |") and sft_row.endswith(f"| {NOT_RUN} | {NOT_RUN} |")

    t3 = table3(reports)
    expected = sum(_value(reports["sft"], f"babilong_qa{i}", "8k") for i in range(1, 6)) / 5
    sft_row = next(line for line in t3.splitlines() if line.startswith("| **Standard SFT**"))
    assert sft_row.split(" | ")[4].startswith(f"{100 * expected:.1f} ±")
    assert "| Causal Bilevel | ✓ | × | 82.4 | 72.6 | 56.6 | 39.0 |" in t3

    b1 = table_b1(reports)
    qa3 = next(line for line in b1.splitlines() if line.startswith("| QA3 | Temporal"))
    delta = 100 * (_value(reports["focusft"], "babilong_qa3", "4k") - _value(reports["sft"], "babilong_qa3", "4k"))
    assert qa3.split(" | ")[4] == f"{delta:+.1f}"
    assert "| QA3 | 53.0 | 84.0 | +31.0 | 37.0 | 67.0 | +30.0 |" in b1


def test_missing_variants_and_tasks_read_not_run(tmp_path: Path) -> None:
    report = Report("sft", [Score("babilong_qa1", "4k", "acc", 0.5, 0.05, 100)], {})
    page = all_tables({"sft": report}, {}, {"suite": "paper", "checkpoints": {"sft": "/x"}})
    assert "Causal Bilevel** (this run)" not in page
    sft_row = next(line for line in page.splitlines() if line.startswith("| **Standard SFT**") and "RULER" not in line)
    assert NOT_RUN in sft_row
    assert figure4({"sft": report}, tmp_path / "f.png").stat().st_size > 0


def test_offline_end_to_end_on_a_tiny_dir(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    gpqa = tmp_path / "gpqa.jsonl"
    gpqa.write_text(json.dumps({"id": "q1", "question": "2+2?", "choices": ["4", "5", "6", "7"], "answer": "A"}) + "\n")
    out = tmp_path / "repro"
    argv = ["--checkpoint", f"focusft={tiny_dir}", "--suite", "offline", "--lengths", "512",
            "--num-samples", "2", "--gpqa", str(gpqa), "--output-dir", str(out),
            "--agent-args", "--rollouts 2 --max-turns 1 --max-new-tokens 4"]  # fmt: skip
    main(argv)
    page = (out / "tables.md").read_text()
    assert "**Offline suite:**" in page and "| **FocuSFT** (this run) | ✓ | ✓ |" in page
    scores = json.loads((out / "tables.json").read_text())
    assert scores["gpqa"]["focusft"]["problems"] == 1.0 and "pass@2" in scores["gpqa"]["focusft"]
    assert (out / "figure4.png").stat().st_size > 0 and (out / "logs" / "eval_focusft.log").is_file()
    capsys.readouterr()
    main(argv)  # every stage is reused
    assert capsys.readouterr().out.count("reusing") == 2


def test_bad_checkpoint_argument_is_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", f"sfx={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("focusft-reproduce: error: --checkpoint 'sfx=")
