"""GPQA files: both layouts, seeded shuffling, answer parsing, named errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from focusft.agent.gpqa import GPQADataError, load_problems, parse_answer

CSV_ROW = {
    "Record ID": "rec1",
    "Question": "Which particle mediates the electromagnetic force?",
    "Correct Answer": "photon",
    "Incorrect Answer 1": "gluon",
    "Incorrect Answer 2": "W boson",
    "Incorrect Answer 3": "graviton",
}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_official_csv_layout_keeps_the_right_answer_through_the_shuffle(tmp_path: Path) -> None:
    rows = [{**CSV_ROW, "Record ID": f"rec{i}"} for i in range(40)]
    problems = load_problems(_write_csv(tmp_path / "gpqa.csv", rows), seed=3)
    assert len(problems) == 40
    for problem in problems:
        assert sorted(problem.choices) == sorted(["photon", "gluon", "W boson", "graviton"])
        assert problem.choices["ABCD".index(problem.answer)] == "photon"
    assert len({p.answer for p in problems}) > 1  # the correct letter moves
    again = load_problems(tmp_path / "gpqa.csv", seed=3)
    assert [p.choices for p in again] == [p.choices for p in problems]
    assert [p.choices for p in load_problems(tmp_path / "gpqa.csv", seed=4)] != [p.choices for p in problems]


@pytest.mark.parametrize("answer", ["C", "c", 2, "dog"])
def test_jsonl_layout_takes_a_letter_an_index_or_the_text(tmp_path: Path, answer: object) -> None:
    row = {"id": "q", "question": "Which is a mammal?", "choices": ["cod", "eel", "dog", "ant"], "answer": answer}
    (tmp_path / "q.jsonl").write_text(json.dumps(row) + "\n")
    (problem,) = load_problems(tmp_path / "q.jsonl")
    assert problem.choices["ABCD".index(problem.answer)] == "dog"
    text = problem.messages()[1]["content"]
    assert text.startswith("Which is a mammal?") and f"({problem.answer}) dog" in text


@pytest.mark.parametrize(
    "row,message",
    [
        ({"question": "", "choices": ["a", "b", "c", "d"], "answer": "A"}, "row 1: no 'question'"),
        ({"question": "q", "choices": ["a", "b", "c"], "answer": "A"}, "'choices' must be a list of four"),
        ({"question": "q", "choices": ["a", "a", "c", "d"], "answer": "A"}, "must be distinct"),
        ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": "E"}, "'answer' 'E' is neither"),
        ({**CSV_ROW, "Incorrect Answer 2": ""}, "empty or missing 'Incorrect Answer 2'"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, row: dict, message: str) -> None:
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(GPQADataError, match=message):
        load_problems(tmp_path / "bad.jsonl")


def test_missing_file_and_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(GPQADataError, match="does not exist .*gated"):
        load_problems(tmp_path / "nope.csv")
    _write_csv(tmp_path / "dup.csv", [CSV_ROW, CSV_ROW])
    with pytest.raises(GPQADataError, match="two problems have the id 'rec1'"):
        load_problems(tmp_path / "dup.csv")


@pytest.mark.parametrize(
    "text,letter",
    [
        ("So the result is \\boxed{C}.", "C"),
        ("First \\boxed{A}, no wait: \\boxed{ (B) }", "B"),
        ("The answer is (D).", "D"),
        ("Answer: B", "B"),
        ("The answer is a function of x.", None),
        ("**Answer:** A", "A"),
        ("I am not sure.", None),
        ("\\boxed{42}", None),
    ],
)
def test_answer_letter_parsing(text: str, letter: str | None) -> None:
    assert parse_answer(text) == letter
