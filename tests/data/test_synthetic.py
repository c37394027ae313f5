"""The synthetic generator: answers recoverable from the text alone, lengths, determinism, splits."""

import json
import re

import pytest

from focusft.data.messages import to_torchtune_messages
from focusft.data.synthetic import (
    ENTITIES,
    SYNTHETIC_TASKS,
    approx_tokens,
    generate_samples,
    main,
)
from focusft.data.tokenize import tokenize_conversation

MOVE = r"(?:went to|moved to|travelled to|journeyed to|went back to)"
TAKE = r"(?:picked up|got|grabbed)"
DROP = r"(?:dropped|put down|discarded)"


def story_and_question(sample):
    user = [m for m in sample["messages"] if m["role"] == "user"][-1]["content"]
    story = re.search(r"<text>\n(.*)\n</text>", user, re.S).group(1)
    question = re.search(r"Question: (.*)\n", user).group(1)
    return [s.strip() + "." for s in story.split(".") if s.strip()], question


def simulate(sentences):
    """Replays moves, pick-ups and drops; returns every object's trail of places."""
    location, holder, trail = {}, {}, {}
    for s in sentences:
        if m := re.fullmatch(rf"(\w+) {MOVE} the (\w+)\.", s):
            person, place = m.groups()
            location[person] = place
            for obj, who in holder.items():
                if who == person:
                    trail[obj].append(place)
        elif m := re.fullmatch(rf"(\w+) {TAKE} the (\w+) there\.", s):
            person, obj = m.groups()
            holder[obj] = person
            trail.setdefault(obj, [])
            if not trail[obj] or trail[obj][-1] != location[person]:
                trail[obj].append(location[person])
        elif m := re.fullmatch(rf"(\w+) {DROP} the (\w+)\.", s):
            holder.pop(m.group(2))
    return location, trail


def solve(sample):
    """The set of answers the text supports, read from the text with no help from the generator."""
    task = sample["task"]
    if task == "tool":
        question = [m for m in sample["messages"] if m["role"] == "user"][-1]["content"]
        person, obj = re.search(r"Where does (\w+) keep the (\w+)\?", question).groups()
        tool_text = " ".join(m["content"] for m in sample["messages"] if m["role"] == "tool")
        return set(re.findall(rf"Record: {person} keeps the {obj} in the (\w+)\.", tool_text))
    sentences, question = story_and_question(sample)
    if task == "qa1":
        location, _ = simulate(sentences)
        return {location[re.fullmatch(r"Where is (\w+)\?", question).group(1)]}
    if task == "qa2":
        location, trail = simulate(sentences)
        return {trail[re.fullmatch(r"Where is the (\w+)\?", question).group(1)][-1]}
    if task == "qa3":
        _, trail = simulate(sentences)
        obj, place = re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question).groups()
        path = trail[obj]
        return {path[i - 1] for i in range(1, len(path)) if path[i] == place}
    if task == "qa4":
        facts = [re.fullmatch(r"The (\w+) is (\w+) of the (\w+)\.", s) for s in sentences]
        opposite = {"north": "south", "south": "north", "east": "west", "west": "east"}
        triples = [f.groups() for f in facts if f]
        triples += [(b, opposite[d], a) for a, d, b in triples]
        if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", question):
            return {a for a, d, b in triples if (d, b) == m.groups()}
        m = re.fullmatch(r"What is the (\w+) (\w+) of\?", question)
        return {b for a, d, b in triples if (a, d) == m.groups()}
    gives = [
        m.groups() for s in sentences if (m := re.fullmatch(r"(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.", s))
    ]
    if m := re.fullmatch(r"Who gave the (\w+) to (\w+)\?", question):
        return {g for g, o, r in gives if (o, r) == m.groups()}
    if m := re.fullmatch(r"Who did (\w+) give the (\w+) to\?", question):
        return {r for g, o, r in gives if (g, o) == m.groups()}
    m = re.fullmatch(r"What did (\w+) give to (\w+)\?", question)
    return {o for g, o, r in gives if (g, r) == m.groups()}


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_the_answer_is_the_one_the_text_supports(task):
    for sample in generate_samples(task, num_samples=40, target_tokens=1000, seed=3):
        assert solve(sample) == {sample["answer"]}
        assert sample["messages"][-1] == {"role": "assistant", "content": sample["answer"]}
        assert sample["task"] == task and sample["target_tokens"] == 1000


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
@pytest.mark.parametrize("target", [1024, 4096])
def test_chat_formatted_length_is_just_under_the_target(task, target, tokenizer):
    for sample in generate_samples(task, num_samples=2, target_tokens=target, tokenizer=tokenizer):
        n = len(tokenize_conversation(to_torchtune_messages(sample["messages"]), tokenizer))
        assert 0.9 * target <= n <= target


def test_a_16k_sample_is_cheap_and_fits(tokenizer):
    (sample,) = generate_samples("qa2", num_samples=1, target_tokens=16384, tokenizer=tokenizer)
    n = len(tokenize_conversation(to_torchtune_messages(sample["messages"]), tokenizer))
    assert 0.9 * 16384 <= n <= 16384
    assert solve(sample) == {sample["answer"]}


def test_without_a_tokenizer_the_approximate_length_fits():
    for task in SYNTHETIC_TASKS:
        for sample in generate_samples(task, num_samples=2, target_tokens=2000):
            assert 0.9 * 2000 <= approx_tokens(sample["messages"]) <= 2000


def test_tool_conversations_call_tools_and_bury_the_fact_in_their_outputs():
    for sample in generate_samples("tool", num_samples=5, target_tokens=2048, seed=1):
        roles = [m["role"] for m in sample["messages"]]
        assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
        calls = [m for m in sample["messages"] if m.get("tool_calls")]
        assert len(calls) >= 3 and roles.count("tool") == len(calls)
        for call in calls:
            json.loads(call["tool_calls"][0]["function"]["arguments"])
        assert "Record:" not in sample["messages"][1]["content"]


def test_deterministic_by_arguments_and_independent_of_sample_count():
    kwargs = dict(num_samples=4, target_tokens=1200, seed=7)
    for task in SYNTHETIC_TASKS:
        first = generate_samples(task, **kwargs)
        assert generate_samples(task, **kwargs) == first
        assert generate_samples(task, **{**kwargs, "num_samples": 2}) == first[:2]
        assert generate_samples(task, **{**kwargs, "seed": 8}) != first
        assert len({json.dumps(s) for s in first}) == 4


def test_train_and_eval_use_disjoint_entities():
    train_words, eval_words = (
        {w.lower() for e in (ENTITIES[s],) for w in (*e.persons, *e.places, *e.objects)} for s in ("train", "eval")
    )
    assert not train_words & eval_words
    for split, foreign in (("train", eval_words), ("eval", train_words)):
        for task in SYNTHETIC_TASKS:
            for sample in generate_samples(task, num_samples=4, target_tokens=1500, split=split):
                words = set(re.findall(r"[a-z]+", json.dumps(sample["messages"]).lower()))
                assert not words & foreign, (split, task, words & foreign)
                assert sample["answer"].lower() not in foreign


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'qa9'"):
        generate_samples("qa9", num_samples=1, target_tokens=1000)
    with pytest.raises(ValueError, match="'test'"):
        generate_samples("qa1", num_samples=1, target_tokens=1000, split="test")
    with pytest.raises(ValueError, match="target_tokens=50 is too small"):
        generate_samples("qa1", num_samples=1, target_tokens=50)


def test_cli_writes_the_samples_as_jsonl(tmp_path, tokenizer_dir, tokenizer):
    out = tmp_path / "sub" / "qa5.jsonl"
    main(
        ["--task", "qa5", "--num-samples", "3", "--target-tokens", "800", "--split", "eval", "--seed", "2"]
        + ["--out", str(out), "--tokenizer-dir", str(tokenizer_dir)]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == generate_samples("qa5", num_samples=3, target_tokens=800, split="eval", seed=2, tokenizer=tokenizer)


def test_the_cli_with_a_missing_tokenizer_folder_is_one_usage_line(tmp_path, capsys):
    from focusft.data.synthetic import main

    args = ["--task", "qa1", "--num-samples", "1", "--target-tokens", "200", "--out", str(tmp_path / "o.jsonl")]
    for folder, problem in [
        (tmp_path / "nowhere", "is not a folder."),
        (tmp_path, "lacks vocab.json, merges.txt, tokenizer.json (a Qwen2.5 tokenizer's files)."),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--tokenizer-dir", str(folder)])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: --tokenizer-dir {folder} {problem}")
    assert not (tmp_path / "o.jsonl").exists()
