"""pass@k and majority vote against brute force over the rollouts."""

from __future__ import annotations

import itertools
import random

import pytest

from focusft.agent.scoring import majority_answer, pass_at_k, score_problems, summarize


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in (1, 4, 7) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_is_the_share_of_k_subsets_with_a_right_rollout(n: int, c: int, k: int) -> None:
    rollouts = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(rollouts[i] for i in subset) for subset in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="n=3, c=4, k=1"):
        pass_at_k(3, 4, 1)


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_rollout_order() -> None:
    assert majority_answer([None, "B", "A", "A", "B", None]) == "B"  # tied at 2: B appears first
    assert majority_answer([None, None]) is None
    assert majority_answer(["C", None, "D", "D"]) == "D"


def test_summary_against_a_hand_count() -> None:
    rng = random.Random(0)
    truth = {f"p{i}": rng.choice("ABCD") for i in range(20)}
    answers = {pid: [rng.choice("ABCD") if rng.random() < 0.9 else None for _ in range(8)] for pid in truth}
    summary = summarize(score_problems(answers, truth), ks=[1, 4, 8, 9])
    majority_right = 0
    for pid, given in answers.items():
        counts = {a: given.count(a) for a in "ABCD"}
        top = max(counts.values())
        winner = next((a for a in given if a is not None and counts[a] == top), None) if top else None
        majority_right += winner == truth[pid]
    oracle = sum(truth[pid] in given for pid, given in answers.items())
    mean = sum(given.count(truth[pid]) / 8 for pid, given in answers.items())
    assert summary["problems"] == 20
    assert summary["pass@1 (majority)"] == pytest.approx(100 * majority_right / 20)
    assert summary["pass@8"] == pytest.approx(100 * oracle / 20)
    assert summary["mean@n"] == pytest.approx(100 * mean / 20)
    assert "pass@4" in summary and "pass@9" not in summary and "pass@1" not in summary
