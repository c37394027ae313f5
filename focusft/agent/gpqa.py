"""GPQA-format multiple-choice problems: loading, choice shuffling, the prompt, the answer letter.

GPQA (Rein et al. 2023) is gated on the hub, so the user supplies a local file:

- the official CSV (``gpqa_diamond.csv``: columns ``Question``, ``Correct Answer``,
  ``Incorrect Answer 1..3``, optionally ``Record ID``), or
- JSONL / JSON, one problem per row, either with those keys or as
  ``{"id", "question", "choices": [four strings], "answer": "B" | 1 | "<the correct choice's text>"}``.

The four choices are shuffled per problem by a seed (``random.Random(f"{seed}:{id}")``), as
GPQA's own evaluation does, so the correct letter is not always A and a rerun with the same
seed asks the same question.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LETTERS = "ABCD"

SYSTEM_PROMPT = (
    "You are a helpful assistant that solves graduate-level science questions. You may run Python "
    "code with the code_interpreter tool to compute or check intermediate results. When you are "
    "done, give the final answer as a single letter in \\boxed{}, for example \\boxed{C}."
)

CODE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "code_interpreter",
        "description": "Run Python code and return what it prints (stdout and stderr).",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The Python code to run."}},
            "required": ["code"],
        },
    },
}


class GPQADataError(ValueError):
    """A GPQA file or row that cannot be read; the message names the file, row and field."""


@dataclass(frozen=True)
class Problem:
    """One multiple-choice problem with its choices already shuffled; ``answer`` is a letter."""

    id: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str

    def messages(self) -> list[dict[str, Any]]:
        """The conversation a rollout starts from: system prompt, then the question and choices."""
        options = "\n".join(f"({letter}) {choice}" for letter, choice in zip(LETTERS, self.choices))
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{self.question}\n\n{options}"},
        ]


def load_problems(path: str | Path, seed: int = 0) -> list[Problem]:
    """Read ``path`` (``.csv``, ``.jsonl`` or ``.json``) and shuffle each problem's choices by ``seed``.

    Raises:
        GPQADataError: a missing or empty file, a row without a question or four distinct
            choices, an answer that names none of them, or two rows with one id.
    """
    path = Path(path)
    if not path.is_file():
        raise GPQADataError(f"GPQA file {path} does not exist (supply a local CSV or JSONL; the hub dataset is gated)")
    rows = _read_rows(path)
    if not rows:
        raise GPQADataError(f"GPQA file {path} holds no problems")
    problems = [_problem(row, i, path, seed) for i, row in enumerate(rows)]
    seen: set[str] = set()
    for problem in problems:
        if problem.id in seen:
            raise GPQADataError(f"{path}: two problems have the id {problem.id!r}; ids must be unique")
        seen.add(problem.id)
    return problems


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise GPQADataError(f"cannot read GPQA file {path}: {error}") from None
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            return data if isinstance(data, list) else [data]
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise GPQADataError(f"{path} is not valid JSON/JSONL: {error}") from None


def _problem(row: Any, index: int, path: Path, seed: int) -> Problem:
    where = f"{path} row {index + 1}"
    if not isinstance(row, dict):
        raise GPQADataError(f"{where}: expected an object, found {type(row).__name__}")
    question = row.get("question", row.get("Question"))
    if not isinstance(question, str) or not question.strip():
        raise GPQADataError(f"{where}: no 'question' / 'Question' text")
    correct, choices = _choices(row, where)
    if len({c.strip() for c in choices}) != 4:
        raise GPQADataError(f"{where}: the four choices must be distinct non-empty texts")
    problem_id = str(row.get("id", row.get("Record ID")) or f"row{index + 1}")
    order = list(range(4))
    random.Random(f"{seed}:{problem_id}").shuffle(order)
    shuffled = tuple(choices[i].strip() for i in order)
    return Problem(problem_id, question.strip(), shuffled, LETTERS[order.index(correct)])  # type: ignore[arg-type]


def _choices(row: dict[str, Any], where: str) -> tuple[int, list[str]]:
    """(index of the correct choice, the four choices) in the file's order."""
    if "Correct Answer" in row:
        keys = ["Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
        missing = [key for key in keys if not isinstance(row.get(key), str) or not row[key].strip()]
        if missing:
            raise GPQADataError(f"{where}: empty or missing {', '.join(repr(k) for k in missing)}")
        return 0, [row[key] for key in keys]
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise GPQADataError(f"{where}: 'choices' must be a list of four strings (or use GPQA's CSV columns)")
    answer = row.get("answer")
    if isinstance(answer, int) and 0 <= answer < 4:
        return answer, choices
    if isinstance(answer, str) and answer.strip().upper() in LETTERS and len(answer.strip()) == 1:
        return LETTERS.index(answer.strip().upper()), choices
    if isinstance(answer, str) and answer in choices:
        return choices.index(answer), choices
    raise GPQADataError(f"{where}: 'answer' {answer!r} is neither A-D, 0-3 nor one of the choices")


_BOXED = re.compile(r"\\boxed\{\s*\(?([A-D])\)?\s*\}")
_STATED = re.compile(
    r"\b(?i:answer)\s*(?:is|:)?\s*[:\-]?[\s*]*\(?([A-D])\b"
)  # capital letters only: "is a" is no answer


def parse_answer(text: str) -> str | None:
    """The final answer letter of a response: the last ``\\boxed{X}``, else the last "answer is X" /
    "Answer: X"; ``None`` when the response states no letter (scored as wrong)."""
    for pattern in (_BOXED, _STATED):
        found = pattern.findall(text)
        if found:
            return found[-1]
    return None
