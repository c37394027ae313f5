"""focusft-agent-eval end to end with a scripted model (deterministic) and with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from focusft.agent.cli import main
from focusft.agent.generation import Completion, Request
from focusft.agent.gpqa import CODE_TOOL, load_problems
from focusft.agent.rollout import RolloutSettings, pending_episodes, run_episodes
from focusft.agent.sandbox import SandboxLimits, run_python


def _call(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "code_interpreter", "arguments": {"code": code}}) + "\n</tool_call>"


@pytest.fixture
def problems_file(tmp_path: Path) -> Path:
    rows = [
        {"id": f"p{i}", "question": f"What is {i}+{i}?", "choices": [str(2 * i), "x", "y", "z"], "answer": 0}
        for i in range(3)
    ]
    path = tmp_path / "gpqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _script(tmp_path: Path, turns: dict[str, list[str]]) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(turns))
    return path


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "transcripts.jsonl").read_text().splitlines()]


def _run(problems: Path, script: Path, output: Path, *extra: str) -> None:
    main(["unused", "--data", str(problems), "--backend", "script", "--script", str(script),
          "--output-dir", str(output), "--tool-timeout", "10", *extra])  # fmt: skip


def test_hostile_tool_calls_are_contained_and_reported_to_the_model(tmp_path: Path, problems_file: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    hostile = [
        "import socket; socket.create_connection(('127.0.0.1', 9))",
        f"open({str(outside)!r}, 'w').write('changed')",
        "import os\nwhile True: os.fork()",
        "x = []\nwhile True: x.append(bytearray(256 * 1024 * 1024))",
        "while True: pass",
    ]
    script = _script(tmp_path, {"*": ["Checking.\n" + "\n".join(_call(c) for c in hostile), "\\boxed{A}"]})
    problems = load_problems(problems_file)[:1]
    settings = RolloutSettings(rollouts=1, max_turns=4)
    limits = SandboxLimits(wall_seconds=3.0, cpu_seconds=2, memory_mib=512)
    transcript = tmp_path / "t.jsonl"
    from focusft.agent.generation import ScriptedGenerator

    run_episodes(pending_episodes(problems, settings, set()), ScriptedGenerator.from_file(script),
                 lambda code: run_python(code, limits), settings, transcript)  # fmt: skip
    (record,) = [json.loads(line) for line in transcript.read_text().splitlines()]
    outputs = [m["content"] for m in record["messages"] if m["role"] == "tool"]
    assert len(outputs) == 5 and record["tool_calls"] == 5 and record["turns"] == 2
    assert "socket" in outputs[0] and "not allowed" in outputs[0]
    assert "outside the scratch directory is not allowed" in outputs[1]
    assert "os.fork is not allowed" in outputs[2]
    assert "MemoryError" in outputs[3] or "tool stopped" in outputs[3]
    assert "tool stopped" in outputs[4]
    assert outside.read_text() == "untouched"
    assert record["response_answer"] == "A" and record["correct"] == (problems[0].answer == "A")


def test_malformed_and_unknown_tool_calls_answer_the_model_and_turns_are_capped(tmp_path: Path) -> None:
    responses = iter(
        [
            "<tool_call>\n{not json}\n</tool_call>",
            '<tool_call>\n{"name": "browser", "arguments": {}}\n</tool_call>',
            '<tool_call>\n{"name": "code_interpreter", "arguments": {"source": "1"}}\n</tool_call>',
        ]
    )

    class Scripted:
        def complete(self, requests: list[Request]) -> list[Completion]:
            assert requests[0].tools == [CODE_TOOL]
            return [Completion(next(responses), "stop") for _ in requests]

    problem_file = tmp_path / "q.jsonl"
    problem_file.write_text(json.dumps({"id": "q", "question": "?", "choices": ["a", "b", "c", "d"], "answer": 1}))
    settings = RolloutSettings(rollouts=1, max_turns=3)
    run_episodes(pending_episodes(load_problems(problem_file), settings, set()), Scripted(),
                 lambda code: run_python(code), settings, tmp_path / "t.jsonl")  # fmt: skip
    (record,) = _records_from(tmp_path / "t.jsonl")
    tool_outputs = [m["content"] for m in record["messages"] if m["role"] == "tool"]
    assert tool_outputs[0].startswith("error: the tool call is not valid JSON")
    assert tool_outputs[1] == "error: unknown tool 'browser'; the only tool is 'code_interpreter'"
    assert tool_outputs[2].startswith("error: code_interpreter takes")
    assert (record["finish"], record["turns"], record["response_answer"]) == ("max_turns", 3, None)


def _records_from(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scores_and_a_killed_run_resumes_to_the_same_result(tmp_path: Path, problems_file: Path, capsys) -> None:
    script = _script(
        tmp_path,
        {"p0": ["\\boxed{A}"], "p1": [_call("print(1 + 1)"), "The answer is (B)."], "*": ["no idea"]},
    )
    full = tmp_path / "full"
    _run(problems_file, script, full, "--rollouts", "3", "--pass-k", "2,3")
    fresh = json.loads((full / "results.json").read_text())["scores"]
    truth = {p.id: p.answer for p in load_problems(problems_file)}
    expected_right = [truth["p0"] == "A", truth["p1"] == "B", False]
    assert fresh["pass@1 (majority)"] == pytest.approx(100 * sum(expected_right) / 3)
    assert fresh["pass@3"] == pytest.approx(100 * sum(expected_right) / 3)
    assert "pass@1 (majority)=" in capsys.readouterr().out

    resumed = tmp_path / "resumed"
    _run(problems_file, script, resumed, "--rollouts", "3", "--pass-k", "2,3")
    lines = (resumed / "transcripts.jsonl").read_text().splitlines(keepends=True)
    (resumed / "transcripts.jsonl").write_text("".join(lines[:4]) + lines[4][:25])  # killed while writing line 5
    kept = [json.loads(line) for line in lines[:4]]
    _run(problems_file, script, resumed, "--rollouts", "3", "--pass-k", "2,3")
    records = _records(resumed)
    assert len(records) == 9 and records[:4] == kept
    assert {(r["problem_id"], r["rollout"]) for r in records} == {(f"p{i}", r) for i in range(3) for r in range(3)}
    assert json.loads((resumed / "results.json").read_text())["scores"] == fresh


def test_resume_with_other_settings_is_one_line_error(tmp_path: Path, problems_file: Path, capsys) -> None:
    script = _script(tmp_path, {"*": ["\\boxed{A}"]})
    _run(problems_file, script, tmp_path / "out", "--rollouts", "2")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _run(problems_file, script, tmp_path / "out", "--rollouts", "4")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err.startswith("focusft-agent-eval: error:") and "other settings (rollouts)" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rollouts", "0"], "--rollouts must be at least 1"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--data", "/nonexistent.jsonl"], "does not exist"),
        (["--backend", "script"], "--backend script needs --script"),
        (["--pass-k", "a"], "--pass-k takes comma-separated integers"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, problems_file: Path, capsys, args: list[str], message: str) -> None:
    base = {"--data": str(problems_file), "--output-dir": str(tmp_path / "o")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = [str(tmp_path)] + [x for pair in base.items() for x in pair]
    if "--backend" not in base:
        argv += ["--backend", "script", "--script", str(_script(tmp_path, {"*": ["x"]}))]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("focusft-agent-eval: error:") and message in err


def test_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path: Path, problems_file: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        _run(problems_file, _script(tmp_path, {"*": ["x"]}), tmp_path / "file")
    assert "cannot write to --output-dir" in capsys.readouterr().err


def test_tiny_model_rollouts_with_transformers_repeat_with_the_seed(
    tiny_checkpoint: Path, problems_file: Path, tmp_path: Path
) -> None:
    runs = []
    for name in ("a", "b"):
        main([str(tiny_checkpoint), "--data", str(problems_file), "--limit", "1", "--rollouts", "2",
              "--max-turns", "2", "--max-new-tokens", "6", "--backend", "transformers", "--device", "cpu",
              "--output-dir", str(tmp_path / name)])  # fmt: skip
        runs.append(_records(tmp_path / name))
    assert len(runs[0]) == 2 and runs[0] == runs[1]
    for record in runs[0]:
        assert record["messages"][-1]["role"] in ("assistant", "tool") and record["turns"] >= 1


def test_a_run_killed_with_sigkill_resumes_without_redoing_finished_rollouts(
    tmp_path: Path, problems_file: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    slow = _call("import time; time.sleep(1.5); print('done')")
    script = _script(tmp_path, {"*": [slow, "\\boxed{A}"]})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "focusft.agent.cli", "unused", "--data", str(problems_file),
               "--backend", "script", "--script", str(script), "--output-dir", str(out),
               "--rollouts", "2", "--batch-size", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    transcript = out / "transcripts.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (transcript.exists() and transcript.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _records(out)
    assert 2 <= len(before) < 6
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    after = _records(out)
    assert after[: len(before)] == before and len(after) == 6
    assert sorted((r["problem_id"], r["rollout"]) for r in after) == [(f"p{i}", r) for i in range(3) for r in range(2)]
