"""Scores of sampled rollouts: pass@k, majority vote, mean accuracy (paper Appendix A, Table 2).

The paper reports GPQA pass@1 "by majority vote" (the most frequent final answer of a
problem's 32 rollouts is its one answer) and pass@32 "by oracle" (solved if any rollout is
right). pass@k for k < n uses the unbiased estimator of Chen et al. (2021),
``1 - C(n-c, k) / C(n, k)`` averaged over problems, which equals the oracle at k = n.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` of the ``n`` rollouts (``c`` of them right) is right.

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent stated answer (``None``\\ s, responses without one, are not votes).

    Ties go to the tied answer that appears first in rollout order, so the vote depends on
    nothing but the rollouts themselves.
    """
    votes = Counter(answer for answer in answers if answer is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(answer for answer in answers if answer is not None and votes[answer] == top)


@dataclass(frozen=True)
class ProblemScore:
    """One problem's rollouts: how many, how many right, the majority answer, the truth."""

    problem_id: str
    num_rollouts: int
    num_correct: int
    majority: str | None
    answer: str

    @property
    def majority_correct(self) -> bool:
        return self.majority == self.answer


def score_problems(answers: Mapping[str, Sequence[str | None]], truth: Mapping[str, str]) -> list[ProblemScore]:
    """Per-problem scores from each problem's final answers in rollout order."""
    return [
        ProblemScore(pid, len(given), sum(a == truth[pid] for a in given), majority_answer(given), truth[pid])
        for pid, given in answers.items()
    ]


def summarize(scores: Iterable[ProblemScore], ks: Sequence[int]) -> dict[str, float]:
    """Percentages over problems: ``pass@1 (majority)``, ``mean@n`` (mean rollout accuracy) and
    ``pass@k`` for each ``k`` from 2 up to the smallest rollout count (pass@1 of single samples
    is ``mean@n``); also ``problems``.

    Raises:
        ValueError: no problems.
    """
    scores = list(scores)
    if not scores:
        raise ValueError("no scored problems")
    n_min = min(s.num_rollouts for s in scores)
    summary = {
        "problems": float(len(scores)),
        "pass@1 (majority)": 100.0 * sum(s.majority_correct for s in scores) / len(scores),
        "mean@n": 100.0 * sum(s.num_correct / s.num_rollouts for s in scores) / len(scores),
    }
    for k in sorted(set(ks)):
        if 2 <= k <= n_min:
            summary[f"pass@{k}"] = (
                100.0 * sum(pass_at_k(s.num_rollouts, s.num_correct, k) for s in scores) / len(scores)
            )
    return summary
