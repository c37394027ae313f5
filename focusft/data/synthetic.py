"""Synthetic long-context data, made here from a seed: BABILong-style QA and agentic tool use.

Each sample is an OpenAI-format conversation whose last assistant message is the one-word
answer. The supporting facts are hidden in filler prose at random depths: for ``qa1`` ..
``qa5`` inside the last user message, before the question (bAbI tasks 1-5: one, two and
three supporting facts, two- and three-argument relations); for ``tool`` inside the
outputs of several tool calls, among distractor records. Filler never names an entity, so
the answer follows from the facts alone.

Train and eval splits draw people, places and objects from disjoint lists. A sample depends
only on (task, split, seed, target_tokens, its index) and the tokenizer.

Length: with a torchtune Qwen2.5 tokenizer, the chat-formatted conversation (exactly what
training tokenizes) lands within ~5% under ``target_tokens``; without one, lengths use
:func:`approx_tokens` (4 characters per token plus 5 template tokens per message, close to
Qwen2.5's real tokenizer on English prose).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYNTHETIC_TASKS: tuple[str, ...] = ("qa1", "qa2", "qa3", "qa4", "qa5", "tool")
SPLITS: tuple[str, ...] = ("train", "eval")
APPROX_CHARS_PER_TOKEN = 4
APPROX_TOKENS_PER_MESSAGE = 5  # <|im_start|>, role, newline, <|im_end|>, newline
FILL_MARGIN = 0.02  # fill to 2% under the target: the last sentences are trimmed if counting was off


@dataclass(frozen=True)
class Entities:
    persons: tuple[str, ...]
    places: tuple[str, ...]
    objects: tuple[str, ...]


ENTITIES: dict[str, Entities] = {
    "train": Entities(
        persons=("Mary", "John", "Sandra", "Daniel", "Fred", "Julie", "Bill", "Emma", "Jeff", "Yann", "Lucy", "Peter"),
        places=("kitchen", "garden", "office", "hallway", "bedroom", "bathroom", "cellar", "attic"),
        objects=("apple", "football", "milk", "book", "key", "box", "ticket", "laptop"),
    ),
    "eval": Entities(
        persons=("Alice", "Bob", "Carol", "David", "Ellen", "Frank", "Grace", "Henry", "Irene", "Jack", "Karen", "Leo"),
        places=("library", "garage", "balcony", "studio", "pantry", "lobby", "porch", "basement"),
        objects=("umbrella", "wallet", "camera", "guitar", "pillow", "bottle", "hammer", "candle"),
    ),
}
DIRECTIONS = {"north": "south", "south": "north", "east": "west", "west": "east"}
MOVE_VERBS = ("went to", "moved to", "travelled to", "journeyed to", "went back to")
TAKE_VERBS = ("picked up", "got", "grabbed")
DROP_VERBS = ("dropped", "put down", "discarded")

# Filler prose: no word here names a person, place or object of either split.
_FILLER_SUBJECTS = ("The old river", "A cold wind", "The grey sky", "A lone heron", "The distant bell", "A thin mist")
_FILLER_SUBJECTS += ("The evening light", "A quiet song", "The long road", "An autumn leaf", "The slow tide")
_FILLER_VERBS = ("drifted over", "settled upon", "wandered past", "shimmered above", "rolled across", "faded into")
_FILLER_VERBS += ("lingered near", "echoed through", "curled around", "rested beside")
_FILLER_OBJECTS = ("the silent hills", "the misty valley", "the stony shore", "the pale meadows", "the dark pines")
_FILLER_OBJECTS += ("the empty fields", "the frozen lake", "the winding stream", "the ancient walls", "the low clouds")
_FILLER_TAILS = ("", " at dawn", " as the hours passed", " without a sound", " for a while", " once again")

QA_INSTRUCTION = (
    "Below is a long text. A few facts about people, objects and places are hidden in it. "
    "Answer the question at the end using only those facts."
)
QA_SYSTEM = "You are a helpful assistant."
TOOL_SYSTEM = (
    "You are a research assistant. Tools: search_notes(query) lists matching note ids; "
    "read_note(note_id) returns a note."
)
ANSWER_SUFFIX = "Answer with a single word."


def generate_samples(
    task: str,
    *,
    num_samples: int,
    target_tokens: int,
    split: str = "train",
    seed: int = 0,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """``num_samples`` conversations of about ``target_tokens`` tokens each.

    A sample is ``{"messages", "answer", "task", "target_tokens"}``; its last message is the
    assistant's answer and the question is in the last user message.
    """
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"Unknown synthetic task {task!r}; expected one of {SYNTHETIC_TASKS}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    count = _TokenCounter(tokenizer)
    samples = []
    for index in range(num_samples):
        rng = random.Random(f"focusft-synthetic|{task}|{split}|{seed}|{target_tokens}|{index}")
        draft = _tool_draft(rng, ENTITIES[split]) if task == "tool" else _qa_draft(task, rng, ENTITIES[split])
        messages = _fit(draft, target_tokens, rng, count, f"task {task!r}")
        samples.append({"messages": messages, "answer": draft.answer, "task": task, "target_tokens": target_tokens})
    return samples


def write_jsonl(samples: list[dict[str, Any]], path: str | Path) -> Path:
    """One JSON object per line; parent directories are created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
    return out


def approx_tokens(messages: list[dict[str, Any]]) -> int:
    """Token count of a conversation without a tokenizer: characters / 4 plus template tokens."""
    chars = sum(
        len(m.get("content") or "") + (len(json.dumps(m["tool_calls"])) if m.get("tool_calls") else 0) for m in messages
    )
    return math.ceil(chars / APPROX_CHARS_PER_TOKEN) + APPROX_TOKENS_PER_MESSAGE * len(messages)


# ---------------------------------------------------------------------------------------------
# Drafts: the facts of a sample, hidden later in filler by _fit.


@dataclass
class _Draft:
    """Facts per haystack slot, and how to build the conversation from the slots' texts."""

    facts: list[list[str]]  # per slot, in story order
    compose: Callable[[list[str]], list[dict[str, Any]]]
    answer: str


def _qa_draft(task: str, rng: random.Random, entities: Entities) -> _Draft:
    facts, question, answer = _QA_STORIES[task](rng, entities)

    def compose(texts: list[str]) -> list[dict[str, Any]]:
        user = f"{QA_INSTRUCTION}\n\n<text>\n{texts[0]}\n</text>\n\nQuestion: {question}\n{ANSWER_SUFFIX}"
        return [
            {"role": "system", "content": QA_SYSTEM},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]

    return _Draft(facts=[facts], compose=compose, answer=answer)


def _story_qa1(rng: random.Random, e: Entities) -> tuple[list[str], str, str]:
    """Single supporting fact: where is a person now?"""
    persons, places = rng.sample(e.persons, 4), rng.sample(e.places, 6)
    location: dict[str, str] = {}
    facts = []
    for _ in range(rng.randint(5, 8)):
        person = rng.choice(persons)
        location[person] = rng.choice([p for p in places if p != location.get(person)])
        facts.append(f"{person} {rng.choice(MOVE_VERBS)} the {location[person]}.")
    person = rng.choice(sorted(location))
    return facts, f"Where is {person}?", location[person]


def _story_qa2(rng: random.Random, e: Entities) -> tuple[list[str], str, str]:
    """Two supporting facts: where is an object that someone picked up and carried?"""
    while True:
        world = _World.simulate(rng, e, num_events=rng.randint(10, 14))
        carried = [o for o in sorted(world.history) if world.moved_after_take[o]]
        if carried:
            obj = rng.choice(carried)
            return world.facts, f"Where is the {obj}?", world.history[obj][-1]


def _story_qa3(rng: random.Random, e: Entities) -> tuple[list[str], str, str]:
    """Three supporting facts: where was an object before its current place?"""
    while True:
        world = _World.simulate(rng, e, num_events=rng.randint(12, 16))
        askable = [o for o, h in sorted(world.history.items()) if len(h) >= 3 and h.count(h[-1]) == 1]
        if askable:
            obj = rng.choice(askable)
            history = world.history[obj]
            return world.facts, f"Where was the {obj} before the {history[-1]}?", history[-2]


@dataclass
class _World:
    """People move, pick up and drop objects; each object's trail of places is recorded."""

    facts: list[str]
    history: dict[str, list[str]]  # object -> places it has been in (no immediate repeats)
    moved_after_take: dict[str, bool]

    @classmethod
    def simulate(cls, rng: random.Random, e: Entities, num_events: int) -> _World:
        persons, places, objects = rng.sample(e.persons, 3), rng.sample(e.places, 5), rng.sample(e.objects, 3)
        location: dict[str, str] = {}
        holding: dict[str, str] = {}  # object -> person
        world = cls(facts=[], history={}, moved_after_take={})
        for person in persons:  # everyone is somewhere before anything happens
            location[person] = rng.choice(places)
            world.facts.append(f"{person} {rng.choice(MOVE_VERBS)} the {location[person]}.")
        for _ in range(num_events):
            person = rng.choice(persons)
            held = [o for o, p in holding.items() if p == person]
            free = [o for o in objects if o not in holding]
            kind = rng.choices(["move", "take", "drop"], weights=[5, 3 if free else 0, 2 if held else 0])[0]
            if kind == "move":
                location[person] = rng.choice([p for p in places if p != location[person]])
                world.facts.append(f"{person} {rng.choice(MOVE_VERBS)} the {location[person]}.")
                for obj in held:
                    world.history[obj].append(location[person])
                    world.moved_after_take[obj] = True
            elif kind == "take":
                obj = rng.choice(free)
                trail = world.history.setdefault(obj, [])
                if not trail or trail[-1] != location[person]:
                    trail.append(location[person])
                holding[obj] = person
                world.moved_after_take[obj] = False
                world.facts.append(f"{person} {rng.choice(TAKE_VERBS)} the {obj} there.")
            else:
                obj = rng.choice(held)
                del holding[obj]
                world.facts.append(f"{person} {rng.choice(DROP_VERBS)} the {obj}.")
        return world


def _story_qa4(rng: random.Random, e: Entities) -> tuple[list[str], str, str]:
    """Two-argument relations: which place lies in a direction of another?"""
    while True:
        places = rng.sample(e.places, 4)
        relations = []  # (a, direction, b): a is <direction> of b
        for index in range(1, rng.randint(3, 4)):
            relations.append((places[index], rng.choice(sorted(DIRECTIONS)), rng.choice(places[:index])))
        # Both readings of each fact; a question is fair when exactly one place answers it.
        triples = relations + [(b, DIRECTIONS[d], a) for a, d, b in relations]
        a, d, b = rng.choice(triples)
        if rng.random() < 0.5:
            question, answers = f"What is {d} of the {b}?", {x for x, dd, y in triples if (dd, y) == (d, b)}
            answer = a
        else:
            question, answers = f"What is the {a} {d} of?", {y for x, dd, y in triples if (x, dd) == (a, d)}
            answer = b
        if len(answers) == 1:
            facts = [f"The {x} is {dd} of the {y}." for x, dd, y in relations]
            return facts, question, answer


def _story_qa5(rng: random.Random, e: Entities) -> tuple[list[str], str, str]:
    """Three-argument relations: who gave what to whom?"""
    while True:
        persons, objects, places = rng.sample(e.persons, 4), rng.sample(e.objects, 2), rng.sample(e.places, 3)
        holder = {obj: rng.choice(persons) for obj in objects}
        gives, facts = [], []
        for _ in range(rng.randint(4, 6)):
            if rng.random() < 0.3:
                facts.append(f"{rng.choice(persons)} {rng.choice(MOVE_VERBS)} the {rng.choice(places)}.")
                continue
            obj = rng.choice(objects)
            giver, receiver = holder[obj], rng.choice([p for p in persons if p != holder[obj]])
            holder[obj] = receiver
            gives.append((giver, obj, receiver))
            facts.append(f"{giver} {rng.choice(('gave', 'handed', 'passed'))} the {obj} to {receiver}.")
        if not gives:
            continue
        giver, obj, receiver = rng.choice(gives)
        kind = rng.randrange(3)
        if kind == 0:
            question, answer = f"Who gave the {obj} to {receiver}?", giver
            answers = {g for g, o, r in gives if (o, r) == (obj, receiver)}
        elif kind == 1:
            question, answer = f"Who did {giver} give the {obj} to?", receiver
            answers = {r for g, o, r in gives if (g, o) == (giver, obj)}
        else:
            question, answer = f"What did {giver} give to {receiver}?", obj
            answers = {o for g, o, r in gives if (g, r) == (giver, receiver)}
        if len(answers) == 1:
            return facts, question, answer


_QA_STORIES = {"qa1": _story_qa1, "qa2": _story_qa2, "qa3": _story_qa3, "qa4": _story_qa4, "qa5": _story_qa5}


def _tool_draft(rng: random.Random, e: Entities) -> _Draft:
    """An agent searches an archive, then reads notes; one note holds the record that answers."""
    person, obj, place = rng.choice(e.persons), rng.choice(e.objects), rng.choice(e.places)
    question = f"Where does {person} keep the {obj}?"
    num_notes = rng.randint(2, 3)
    note_ids = [f"note-{n}" for n in rng.sample(range(100, 1000), num_notes)]
    # Distractors share the person or the object, never both, so only one record answers.
    distractors = []
    for _ in range(rng.randint(2, 4)):
        if rng.random() < 0.5:
            other = rng.choice([o for o in e.objects if o != obj])
            distractors.append(f"Record: {person} keeps the {other} in the {rng.choice(e.places)}.")
        else:
            other = rng.choice([p for p in e.persons if p != person])
            distractors.append(f"Record: {other} keeps the {obj} in the {rng.choice(e.places)}.")
    records: list[list[str]] = [[] for _ in note_ids]
    for record in distractors:
        records[rng.randrange(num_notes)].append(record)
    records[rng.randrange(num_notes)].append(f"Record: {person} keeps the {obj} in the {place}.")
    for note in records:
        rng.shuffle(note)

    def compose(texts: list[str]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": TOOL_SYSTEM},
            {"role": "user", "content": f"Question: {question}\n{ANSWER_SUFFIX}"},
            _call("call_0", "search_notes", {"query": f"{person} {obj}"}),
            {"role": "tool", "tool_call_id": "call_0", "content": "Matching notes: " + ", ".join(note_ids)},
        ]
        for n, (note_id, text) in enumerate(zip(note_ids, texts), start=1):
            messages.append(_call(f"call_{n}", "read_note", {"note_id": note_id}))
            messages.append({"role": "tool", "tool_call_id": f"call_{n}", "content": f"[{note_id}]\n{text}"})
        messages.append({"role": "assistant", "content": place})
        return messages

    return _Draft(facts=records, compose=compose, answer=place)


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }


# ---------------------------------------------------------------------------------------------
# Hiding the facts in filler up to the target length.


def _fit(draft: _Draft, target: int, rng: random.Random, count: _TokenCounter, what: str) -> list[dict[str, Any]]:
    """Add filler sentences to the slots, facts at random depths, until the target is nearly reached."""
    slots = len(draft.facts)
    depths = [sorted(rng.random() for _ in facts) for facts in draft.facts]
    filler: list[list[str]] = [[] for _ in range(slots)]

    def build() -> list[dict[str, Any]]:
        return draft.compose([_hide(facts, d, f) for facts, d, f in zip(draft.facts, depths, filler)])

    size = count(build())
    if size > target:
        raise ValueError(f"target_tokens={target} is too small for {what}: its facts and prompt take {size} tokens.")
    budget = int(target * (1 - FILL_MARGIN)) - size
    sentences = _filler_sentences(rng)
    while budget > 0:
        sentence = next(sentences)
        filler[rng.randrange(slots)].append(sentence)
        budget -= count.sentence(sentence)
    while (size := count(build())) > target:
        _trim(filler, size - target, count)
    return build()


def _hide(facts: list[str], depths: list[float], filler: list[str]) -> str:
    """Facts inserted among the filler sentences at their relative depths, in order."""
    sentences = list(filler)
    for fact, depth in reversed(list(zip(facts, depths))):  # deepest first keeps earlier indices valid
        sentences.insert(round(depth * len(filler)), fact)
    return " ".join(sentences)


def _trim(filler: list[list[str]], excess: float, count: _TokenCounter) -> None:
    while excess > 0:
        longest = max(filler, key=len)
        if not longest:
            return
        excess -= count.sentence(longest.pop())


def _filler_sentences(rng: random.Random) -> Iterator[str]:
    while True:
        yield (
            f"{rng.choice(_FILLER_SUBJECTS)} {rng.choice(_FILLER_VERBS)} {rng.choice(_FILLER_OBJECTS)}"
            f"{rng.choice(_FILLER_TAILS)}."
        )


class _TokenCounter:
    """Conversation length (exact with a tokenizer) and a sentence's share of it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._sentence: dict[str, float] = {}

    def __call__(self, messages: list[dict[str, Any]]) -> int:
        if self.tokenizer is None:
            return approx_tokens(messages)
        from focusft.models import family_for_tokenizer  # focusft.models imports this package

        return len(family_for_tokenizer(self.tokenizer).render(messages, self.tokenizer))

    def sentence(self, sentence: str) -> float:
        if sentence not in self._sentence:
            text = " " + sentence  # sentences are joined by a space
            if self.tokenizer is None:
                self._sentence[sentence] = len(text) / APPROX_CHARS_PER_TOKEN
            else:
                self._sentence[sentence] = len(self.tokenizer.encode(text, add_bos=False, add_eos=False))
        return self._sentence[sentence]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m focusft.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=SYNTHETIC_TASKS)
    parser.add_argument("--num-samples", type=int, required=True)
    parser.add_argument("--target-tokens", type=int, required=True)
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output .jsonl file")
    parser.add_argument(
        "--tokenizer-dir", help="directory with Qwen2.5 vocab.json, merges.txt, tokenizer.json (exact lengths)"
    )
    args = parser.parse_args(argv)
    tokenizer = None
    if args.tokenizer_dir:
        from focusft.tiny import load_tiny_tokenizer  # loads any Qwen2.5 tokenizer directory

        folder = Path(args.tokenizer_dir)
        missing = [name for name in ("vocab.json", "merges.txt", "tokenizer.json") if not (folder / name).is_file()]
        if not folder.is_dir():
            parser.error(f"--tokenizer-dir {folder} is not a folder.")
        if missing:
            parser.error(f"--tokenizer-dir {folder} lacks {', '.join(missing)} (a Qwen2.5 tokenizer's files).")
        try:
            tokenizer = load_tiny_tokenizer(folder)
        except Exception as error:  # noqa: BLE001 - files that do not parse
            parser.error(f"--tokenizer-dir {folder}: its tokenizer files cannot be read ({error}).")
    samples = generate_samples(
        args.task,
        num_samples=args.num_samples,
        target_tokens=args.target_tokens,
        split=args.split,
        seed=args.seed,
        tokenizer=tokenizer,
    )
    path = write_jsonl(samples, args.out)
    print(f"Wrote {len(samples)} {args.task} samples ({args.split}, ~{args.target_tokens} tokens) to {path}")


if __name__ == "__main__":
    main()
