"""A small memorisation set for recipe tests: chat samples with exact per-token roles."""

from __future__ import annotations

import os

from torchtune.data import Message

from focusft.data import collate_focus_batch
from focusft.data.packing import pack_samples
from focusft.split_decoder import IGNORE_INDEX

FACTS = [
    ("Where is Mary?", "Mary is in the kitchen."),
    ("Where is John?", "John went to the garden."),
    ("What did Sandra drop?", "Sandra dropped the apple."),
    ("Where is the football?", "The football is in the office."),
    ("Who picked up the milk?", "Daniel picked up the milk."),
    ("Where did Fred travel?", "Fred travelled to the park."),
    ("Where is the key?", "The key is in the bedroom."),
    ("What did Julie get?", "Julie got the ticket."),
]


def memorisation_dataset(
    tokenizer, num_samples: int = 8, story_repeats: int = 3, packed: bool = False, sample_indices: bool = True
) -> list[dict]:
    """Samples with a system prompt, a story, a question and the answer to memorise.

    ``packed``: two samples per row (rows of twice the longest sample), in order.
    ``sample_indices=False``: items without ``sample_index``, as a custom dataset might be.
    """
    samples = []
    for index in range(num_samples):
        question, answer = FACTS[index % len(FACTS)]
        story = " ".join(a for _, a in FACTS) * story_repeats
        messages = [
            Message(role="system", content="Answer from the story.", masked=True),
            Message(role="user", content=f"{story}\n{question}", masked=True),
            Message(role="assistant", content=answer, masked=False),
        ]
        tokens, masked = tokenizer.tokenize_messages(messages)
        samples.append(
            {
                "tokens": tokens,
                "labels": [IGNORE_INDEX if m else t for t, m in zip(tokens, masked)],
                "context": list(masked),
                **({"sample_index": [index]} if sample_indices else {}),
            }
        )
    if packed:
        return pack_samples(samples, 2 * max(len(s["tokens"]) for s in samples), padding_idx=tokenizer.pad_id)
    return samples


# A file that recording_collate appends to (set in the environment of the run).
TRAINED_LOG = "FOCUSFT_TEST_TRAINED_LOG"


def recording_collate(samples: list[dict], **kwargs) -> dict:
    """``collate_focus_batch`` that appends each trained document's ``sample_index`` to $FOCUSFT_TEST_TRAINED_LOG.

    A document is trained when one of its labels is not ignored (zero-weight padding is not).
    """
    trained = []
    for sample in samples:
        docs = sample.get("doc", [0] * len(sample["labels"]))
        for doc, index in enumerate(sample["sample_index"]):
            if any(d == doc and label != IGNORE_INDEX for d, label in zip(docs, sample["labels"])):
                trained.append(index)
    with open(os.environ[TRAINED_LOG], "a") as log:
        log.write("".join(f"{index}\n" for index in trained))
    return collate_focus_batch(samples, **kwargs)
