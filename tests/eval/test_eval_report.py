"""Result tables: lm-eval results -> scores per (task, length), averages, comparisons with deltas and paper rows."""

import json
import math

import pytest

from focusft.eval.report import Report, Score, load_report, markdown_table, scores_from_results, with_averages


def _babilong(length, count=5):
    tasks = [f"babilong_qa{i}" for i in range(1, count + 1)]
    return {
        "results": {t: {"alias": t, "acc,none": int(t[-1]) / 10, "acc_stderr,none": 0.01} for t in tasks},
        "configs": {t: {"metadata": {"version": 0.0, "max_seq_lengths": length}} for t in tasks},
    }


BABILONG_4K = _babilong("4k")
RULER = {
    "results": {
        "ruler_cwe": {
            "4096,none": 0.9,
            "4096_stderr,none": "N/A",
            "8192,none": 0.5,
            "16384,none": -1,
            "alias": "ruler_cwe",
        }
    }
}
LONGBENCH = {
    "results": {"longbench_qasper": {"score,none": 0.2, "qa_f1_score,none": 0.25, "qa_f1_score_stderr,none": 0.02}}
}
OFFLINE = {
    "results": {
        "focusft_qa1_512": {"exact_match,none": 0.5, "exact_match_stderr,none": 0.1, "sample_len": 4},
        "focusft_tool_2k": {"exact_match,none": 1.0},
        "focusft_offline_512": {"exact_match,none": 0.5},
    },
    "groups": {"focusft_offline_512": {}},
    "n-samples": {"focusft_qa1_512": {"original": 10, "effective": 4}},
}


def test_scores_take_each_familys_metric_and_length():
    assert scores_from_results(BABILONG_4K)[0] == Score("babilong_qa1", "4k", "acc", 0.1, 0.01)
    assert scores_from_results(RULER) == [
        Score("ruler_cwe", "4k", "string_match", 0.9),
        Score("ruler_cwe", "8k", "string_match", 0.5),
    ]
    assert scores_from_results(LONGBENCH) == [Score("longbench_qasper", "", "qa_f1_score", 0.25, 0.02)]
    assert scores_from_results(OFFLINE) == [
        Score("focusft_qa1", "512", "exact_match", 0.5, 0.1, n=4),
        Score("focusft_tool", "2k", "exact_match", 1.0),
    ]
    # RULER: the same number of samples per length, known only when no --limit cut the run.
    ruler = {**RULER, "n-samples": {"ruler_cwe": {"original": 30, "effective": 30}}}
    assert [s.n for s in scores_from_results(ruler)] == [10, 10]
    ruler["n-samples"]["ruler_cwe"]["effective"] = 12
    assert [s.n for s in scores_from_results(ruler)] == [None, None]


def test_averages_need_every_task_at_that_length():
    scores = with_averages(scores_from_results(BABILONG_4K) + scores_from_results(_babilong("8k", count=4)))
    averages = [s for s in scores if s.task == "babilong_avg"]
    assert [(s.length, s.value) for s in averages] == [("4k", pytest.approx(0.3))]


def test_averages_carry_the_standard_error_of_a_mean_and_the_total_count():
    results = {**BABILONG_4K, "n-samples": {t: {"original": 20, "effective": 20} for t in BABILONG_4K["results"]}}
    (average,) = [s for s in with_averages(scores_from_results(results)) if s.task == "babilong_avg"]
    # Mean of 5 independent scores, each with standard error 0.01: sqrt(5 * 0.01^2) / 5.
    assert average.stderr == pytest.approx(0.01 / math.sqrt(5)) and average.n == 100


def test_comparison_table_has_deltas_and_paper_rows(tmp_path):
    sft = Report("sft", with_averages(scores_from_results(BABILONG_4K)), {})
    focus = Report("focusft", [Score(s.task, s.length, s.metric, s.value + 0.1, 0.02, 50) for s in sft.scores], {})
    table = markdown_table([sft, focus], reference=True)
    section = table.split("### babilong_qa2 (acc, %)")[1].split("###")[0]
    assert "| sft | 20.0 ± 1.0 |" in section  # no sample count in the results: none shown
    assert "| focusft | 30.0 ± 2.0 (n=50) |" in section
    assert f"| Δ focusft − sft | +10.0 ± {100 * math.sqrt(0.01**2 + 0.02**2):.1f} |" in section
    section = table.split("### babilong_avg (acc, %)")[1].split("###")[0]
    assert "| sft | 30.0 ± 0.4 |" in section and "| focusft | 40.0 ± 2.0 (n=50) |" in section
    assert "| paper: SFT | 70.2 |" in section and "| paper: FocuSFT | 84.4 |" in section
    assert "paper:" not in markdown_table([sft, focus])
    # Reports round-trip through JSON; raw lm-eval results files are read too.
    (tmp_path / "report.json").write_text(json.dumps(focus.to_json()))
    assert load_report(tmp_path).scores == focus.scores
    (tmp_path / "results.json").write_text(json.dumps(OFFLINE))
    assert load_report(tmp_path / "results.json", label="raw").label == "raw"


def test_reference_without_published_numbers_says_so():
    offline = Report("tiny", with_averages(scores_from_results(OFFLINE)), {})
    assert "No published paper numbers for these tasks" in markdown_table([offline], reference=True)
    assert "No published paper numbers" not in markdown_table([offline])
    babilong = Report("sft", scores_from_results(BABILONG_4K), {})
    assert "No published paper numbers" not in markdown_table([babilong], reference=True)


def test_length_columns_are_in_token_order():
    """Not text order (which puts 1024 before 256 and 512)."""
    lengths = ["1024", "4k", "256", "2048", "512", "16k", "1k"]
    report = Report("tiny", [Score("focusft_qa1", length, "exact_match", 0.5) for length in lengths], {})
    header = markdown_table([report]).split("### focusft_qa1 (exact_match, %)")[1].strip().splitlines()[0]
    assert header == "| model | 256 | 512 | 1024 | 1k | 2048 | 4k | 16k |"
