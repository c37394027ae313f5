"""Reading the recipe's metric log and the figures the demo derives from it."""

import pytest

from focusft.demo.results import Speed, inner_loss_drop, read_metrics

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
