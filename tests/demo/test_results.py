"""Reading the recipe's metric log and the figures the demo derives from it."""

import json

import pytest

from focusft.demo.results import (
    BASE_TITLE,
    Row,
    Speed,
    inner_loss_drop,
    markdown_table,
    read_metrics,
    summary,
    write_results,
)

LOG = """Step 1 | loss:2.0 lr:0.0 tokens_per_second_per_gpu:100.0 step_seconds:3.0 inner_loss_before_0:2.0 \
inner_loss_after_0:1.5 inner_loss_before_1:1.5 inner_loss_after_1:1.0
Step 2 | loss:1.0 lr:1e-3 tokens_per_second_per_gpu:300.0 step_seconds:0.5 inner_loss_before_0:4.0 \
inner_loss_after_0:3.5 inner_loss_before_1:3.5 inner_loss_after_1:3.0
Step 3 | loss:0.5 lr:5e-4 tokens_per_second_per_gpu:500.0 step_seconds:0.25 inner_loss_before_0:1.0 \
inner_loss_after_0:1.0 inner_loss_before_1:1.0 inner_loss_after_1:1.0
"""


def test_metric_log_speed_and_inner_loop(tmp_path):
    path = tmp_path / "metrics.txt"
    path.write_text(LOG)
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["lr"] == 1e-3
    speed = Speed.from_metrics(rows, processes=2)  # the first (warm-up) step left out
    assert speed.step_seconds == pytest.approx((0.5 + 0.25) / 2)
    assert speed.tokens_per_second == pytest.approx(2 * (300 + 500) / 2)
    assert inner_loss_drop(rows) == pytest.approx((0.5 + 0.25 + 0.0) / 3)
    assert inner_loss_drop([{"step": 1.0, "loss": 1.0}]) is None


def _row(variant, length, reused=False):
    return Row(variant, length, 0.9, 0.02, 1.0, 200, 0.8, 0.03, 0.25, 0.9, 0.5, 1000.0, speed_reused=reused)


def test_table_marks_reused_speeds_and_summary_holds_the_named_figures(tmp_path):
    titles = {"sft": "Standard SFT", "focusft": "FocuSFT"}
    rows = [_row("sft", 256, reused=True), _row("sft", 512, reused=True), _row("focusft", 256)]
    table = markdown_table(rows, titles)
    assert table.count("0.50† | 1000† |") == 2 and table.count("0.50 | 1000 |") == 1
    assert "† training stage reused from an earlier demo run" in table
    assert "† training stage reused" not in markdown_table(rows[2:], titles)
    base = {512: {"sink_mass": 0.3, "context_engagement": 0.5}, 256: {"sink_mass": 0.4, "context_engagement": 0.4}}
    figures = summary(rows, titles, base, {"sft": None, "focusft": 0.12})
    assert figures["base_sink_mass"] == 0.4  # at the training length, the shortest
    assert figures["variants"]["focusft"]["inner_loss_reduction"] == 0.12
    assert figures["variants"]["sft"]["inner_loss_reduction"] is None
    assert figures["variants"]["sft"]["accuracy"]["512"] == {
        "causal": {"exact_match": 0.9, "stderr": 0.02},
        "bidir_context": {"exact_match": 0.8, "stderr": 0.03},
    }
    md, js = write_results(tmp_path, rows, titles, ["a note"], figures)
    lines = md.read_text().splitlines()
    # The base's attention first, by length, then the variants with their inner loop's reduction.
    assert lines[lines.index("a note") + 4 : lines.index("a note") + 6] == [
        f"| {BASE_TITLE} | 256 | – | – | – | – | – | 40.00 | 40.0 | – | – |",
        f"| {BASE_TITLE} | 512 | – | – | – | – | – | 30.00 | 50.0 | – | – |",
    ]
    assert "| Standard SFT | 256 | 90.0 ± 2.0 | 80.0 ± 3.0 | – | 100.0 | 200 | 25.00 | 90.0 | 0.50† | 1000† |" in lines
    assert "| FocuSFT | 256 | 90.0 ± 2.0 | 80.0 ± 3.0 | 12.0 | 100.0 | 200 | 25.00 | 90.0 | 0.50 | 1000 |" in lines
    assert json.loads(js.read_text())["variants"]["focusft"]["inner_loss_reduction"] == 0.12
