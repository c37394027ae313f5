"""The demo end to end in its smallest setting (``--size smoke``), as ``make demo`` runs it, plus its stage runner."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from focusft.demo.cli import parse_args
from focusft.demo.settings import DEFAULT_VARIANTS, SIZES, VARIANTS
from focusft.demo.stages import Stage, StageError, run_stage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "smoke"
    command = [sys.executable, "-m", "focusft.demo", "--size", "smoke", "--output-dir", str(out)]
    first = subprocess.run([*command, "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = subprocess.run([*command, "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300)
    return out, first, again


def test_the_table_has_a_row_per_variant_and_length_with_numbers_in_range(smoke):
    out, first, again = smoke  # the files are the second run's, which reused every stage
    size = SIZES["smoke"]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted((r["variant"], r["length"]) for r in rows) == sorted(
        (v, length) for v in DEFAULT_VARIANTS for length in size.eval_tokens
    )
    results = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    for row in rows:
        assert row["samples"] == size.eval_samples
        for key in ("accuracy", "bidir_accuracy", "answered_place", "sink_mass", "context_engagement"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
        # Bernoulli standard error of a mean of n samples: sqrt(p (1 - p) / (n - 1)).
        for accuracy, stderr in (("accuracy", "stderr"), ("bidir_accuracy", "bidir_stderr")):
            p, n = row[accuracy], row["samples"]
            assert row[stderr] == pytest.approx((p * (1 - p) / (n - 1)) ** 0.5, abs=1e-9)
        assert row["step_seconds"] > 0 and row["tokens_per_second"] > 0 and row["speed_reused"]
        by_mask = results["variants"][row["variant"]]["accuracy"][str(row["length"])]
        assert by_mask["causal"]["exact_match"] == row["accuracy"]
        assert by_mask["bidir_context"]["exact_match"] == row["bidir_accuracy"]
    assert 0.0 < results["base_sink_mass"] < 1.0
    assert f"| Base (not fine-tuned) | 256 | – | – | – | – | – | {100 * results['base_sink_mass']:.2f} |" in table
    assert results["base_sink_mass"] == results["base"][str(size.eval_tokens[0])]["sink_mass"]
    assert results["variants"]["sft"]["inner_loss_reduction"] is None
    assert isinstance(results["variants"]["focusft"]["inner_loss_reduction"], float)
    notes = results["notes"]
    assert any(note.startswith("Inner loop: ") and "(FocuSFT)" in note for note in notes)
    # The header, the base's attention per length, one line per row.
    assert table.count("\n| ") == 1 + len(size.eval_tokens) + len(rows)
    drop = 100 * results["variants"]["focusft"]["inner_loss_reduction"]
    assert "| FocuSFT | 256 | " in table and f" | {drop:.1f} | " in table
    assert table in again.stdout
    assert "| Standard SFT | 256 |" in first.stdout and "†" not in first.stdout  # the first run trained
    assert f"Demo results (table, plots, logs) in {out}" in first.stdout
    for plot in ("loss_curves.png", "accuracy_by_length.png", "attention_budget.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")


def test_bilevel_variants_ran_the_inner_loop_and_plain_ones_did_not(smoke):
    out, _, _ = smoke
    for variant, bilevel in (("sft", False), ("focusft", True)):
        log = (out / "runs" / f"train_{variant}" / "logs" / "metrics.txt").read_text()
        assert log.count("Step ") == SIZES["smoke"].steps
        assert ("inner_loss_before_0" in log) == bilevel


def test_a_second_run_reuses_every_stage(smoke):
    _, first, again = smoke
    assert again.returncode == 0, again.stderr[-2000:]
    stages = [line.split("]")[0] + "]" for line in first.stdout.splitlines() if line.startswith("[")]
    assert stages and all(f"{stage} reusing" in again.stdout for stage in stages)
    assert "running" not in again.stdout
    assert "† training stage reused from an earlier demo run" in again.stdout  # its speed is marked as such


def test_a_failed_stage_is_one_line_naming_it_and_its_log(tmp_path):
    stage = Stage("boom", [sys.executable, "-c", "import sys; print('bad input'); sys.exit(3)"], tmp_path / "o", {})
    with pytest.raises(StageError) as err:
        run_stage(stage, tmp_path / "logs", echo=False)
    log = tmp_path / "logs" / "boom.log"
    assert str(err.value) == f"demo stage 'boom' failed (exit code 3); see its log: {log}"
    assert "bad input" in log.read_text()
    assert not stage.done()


def test_a_stage_with_other_settings_or_a_rebuilt_input_is_rebuilt(tmp_path):
    def stage(value):
        out = tmp_path / "o"
        code = f"import os; os.makedirs({str(out)!r}); open({str(out / 'x')!r}, 'w').write({value!r})"
        command = [sys.executable, "-c", code]
        return Stage("write", command, tmp_path / "o", {"value": value})

    assert run_stage(stage("a"), tmp_path / "logs", echo=False)
    assert not run_stage(stage("a"), tmp_path / "logs", echo=False)
    assert run_stage(stage("b"), tmp_path / "logs", echo=False)
    assert (tmp_path / "o" / "x").read_text() == "b"
    assert run_stage(stage("b"), tmp_path / "logs", echo=False, force=True)  # an input was rebuilt


def test_variants_flag():
    assert parse_args([]).variant_names == ["sft", "focusft"]
    assert parse_args(["--variants", "all"]).variant_names == list(VARIANTS)
    assert [VARIANTS[n].overrides() for n in parse_args(["--variants", "all"]).variant_names] == [
        ["focusft.bilevel=false", "focusft.attention=causal"],
        ["focusft.bilevel=false", "focusft.attention=bidir_context"],
        ["focusft.bilevel=true", "focusft.attention=causal"],
        ["focusft.bilevel=true", "focusft.attention=bidir_context"],
    ]
    with pytest.raises(SystemExit):
        parse_args(["--variants", "sft,nope"])
