"""The demo's task: find where a person went in a long text and copy that place, token for token.

Built so that a 4-layer, 64-dimensional model with the tiny tokenizer learns it on a CPU in minutes:

- every person and place is one token of the tiny tokenizer (with its leading space, as the
  story writes it), and the answer is that same token: `` kitchen`` in "Mary went to the
  kitchen." is answered `` kitchen``, so the skill is copying from the context;
- the sets of persons and places are closed and every place is a training answer, so no
  token an eval answer needs is left untrained;
- what is held out is the story (its own random stream) and the (person, place) pair that
  is asked about: pairs with ``(person + place) % HELD_OUT_EVERY == 0`` are never a training
  question, only eval ones (with ``persons > 1`` they appear as other people's facts);
- lengths are counted in the tiny model's own tokens (the whole chat-formatted conversation).

A story holds one fact per person (``persons`` of them, different places), each at a random
depth among filler sentences that name no person or place; the question asks about one.
With one person it is a needle in a haystack; more persons make it an association.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any, Literal

from focusft.data.messages import to_torchtune_messages
from focusft.data.tokenize import tokenize_conversation

# One token each in the tiny tokenizer (focusft/tiny.py trains it on these words).
PERSONS: tuple[str, ...] = ("Mary", "John", "Sandra", "Daniel", "Fred", "Julie", "Bill", "Emma", "Jeff", "Yann")
PLACES: tuple[str, ...] = (
    "kitchen", "garden", "office", "hallway", "bedroom", "bathroom", "park", "school", "cinema",
)  # fmt: skip
MOVE_VERBS: tuple[str, ...] = ("went to", "moved to", "travelled to", "journeyed to")
HELD_OUT_EVERY = 5
SYSTEM = "You are a helpful assistant."
INSTRUCTION = "Read the text and answer with the place."

_FILLER_SUBJECTS = ("The old river", "A cold wind", "The grey sky", "A lone heron", "The distant bell", "A thin mist")
_FILLER_VERBS = ("drifted over", "settled upon", "wandered past", "shimmered above", "rolled across", "faded into")
_FILLER_OBJECTS = ("the silent hills", "the misty valley", "the stony shore", "the pale meadows", "the dark pines")

Split = Literal["train", "eval"]
SPLITS: tuple[str, ...] = ("train", "eval")


def is_held_out(person: str, place: str) -> bool:
    """Whether (person, place) is an eval-only question."""
    return (PERSONS.index(person) + PLACES.index(place)) % HELD_OUT_EVERY == 0


def answer_text(place: str) -> str:
    """The answer as the story spells the place: with its leading space, so it is the same token."""
    return f" {place}"


def generate(
    split: Split, num_samples: int, target_tokens: int, tokenizer: Any, seed: int = 0, persons: int = 1
) -> list[dict[str, Any]]:
    """``num_samples`` conversations of at most ``target_tokens`` tokens (within a filler sentence of it).

    A sample is ``{"messages", "answer", "target_tokens"}``; ``answer`` is the place without its
    leading space, for exact-match scoring.
    """
    if not 1 <= persons <= len(PLACES):
        raise ValueError(f"persons must be between 1 and {len(PLACES)}, got {persons}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    samples = []
    for index in range(num_samples):
        rng = random.Random(f"focusft-demo|{split}|{seed}|{target_tokens}|{persons}|{index}")
        samples.append(_sample(split, rng, target_tokens, tokenizer, persons))
    return samples


def _sample(split: Split, rng: random.Random, target_tokens: int, tokenizer: Any, count: int) -> dict[str, Any]:
    while True:  # redraw until the asked pair belongs to the split (eval: held out; else: not)
        persons, places = rng.sample(PERSONS, count), rng.sample(PLACES, count)
        asked = [i for i in range(count) if is_held_out(persons[i], places[i]) == (split == "eval")]
        if asked:
            break
    facts = [f"{person} {rng.choice(MOVE_VERBS)} the {place}." for person, place in zip(persons, places)]
    i = rng.choice(asked)

    def compose(story: str) -> list[dict[str, Any]]:
        user = f"{INSTRUCTION}\n<text>\n{story}\n</text>\nQuestion: Where is {persons[i]}?"
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer_text(places[i])},
        ]

    messages = _fill(facts, compose, target_tokens, rng, tokenizer)
    return {"messages": messages, "answer": places[i], "target_tokens": target_tokens}


def _fill(facts: list[str], compose: Any, target_tokens: int, rng: random.Random, tokenizer: Any) -> list[dict]:
    """Filler sentences around the facts (kept in order, at random depths) up to ``target_tokens``."""

    def length(sentences: list[str]) -> int:
        conversation = to_torchtune_messages(compose(" ".join(sentences)))
        return len(tokenize_conversation(conversation, tokenizer))

    base = length(facts)
    if base > target_tokens:
        raise ValueError(f"target_tokens={target_tokens} is too small for the demo task: its facts take {base}.")
    filler: list[str] = []
    budget = target_tokens - base
    while True:
        sentence = f"{rng.choice(_FILLER_SUBJECTS)} {rng.choice(_FILLER_VERBS)} {rng.choice(_FILLER_OBJECTS)}."
        cost = len(tokenizer.encode(" " + sentence, add_bos=False, add_eos=False))
        if cost > budget:
            break
        filler.append(sentence)
        budget -= cost
    slots = sorted(rng.randrange(len(filler) + 1) for _ in facts)
    sentences = list(filler)
    for fact, slot in reversed(list(zip(facts, slots))):
        sentences.insert(slot, fact)
    while length(sentences) > target_tokens:  # sentence costs are close, not exact, at the joins
        sentences.remove(next(s for s in sentences if s not in facts))
    return compose(" ".join(sentences))


def write_data(
    out_dir: Path, tokenizer_dir: Path, *, train: int, train_tokens: int, eval_samples: int,
    eval_tokens: list[int], persons: int = 1, seed: int = 0,
) -> list[Path]:  # fmt: skip
    """``train.jsonl`` (``train_tokens`` long) and ``eval_<tokens>.jsonl`` per eval length."""
    from focusft.data.synthetic import write_jsonl
    from focusft.tiny import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer(tokenizer_dir)
    paths = [write_jsonl(generate("train", train, train_tokens, tokenizer, seed, persons), out_dir / "train.jsonl")]
    for tokens in eval_tokens:
        samples = generate("eval", eval_samples, tokens, tokenizer, seed, persons)
        paths.append(write_jsonl(samples, out_dir / f"eval_{tokens}.jsonl"))
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m focusft.demo.task OUT_DIR --tokenizer DIR ...``: write the demo's data files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory of the tiny tokenizer files")
    parser.add_argument("--train", type=int, required=True, help="fine-tuning conversations")
    parser.add_argument("--train-tokens", type=int, required=True, help="length of training conversations")
    parser.add_argument("--eval-samples", type=int, required=True, help="held-out conversations per length")
    parser.add_argument("--eval-tokens", type=int, nargs="+", required=True, help="eval lengths in tokens")
    parser.add_argument("--persons", type=int, default=1, help="facts per story, one per person (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_data(
        args.out_dir,
        args.tokenizer,
        train=args.train,
        train_tokens=args.train_tokens,
        eval_samples=args.eval_samples,
        eval_tokens=args.eval_tokens,
        persons=args.persons,
        seed=args.seed,
    )
    print("Wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
