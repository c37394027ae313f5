"""A small memorisation set for recipe tests: chat samples with exact per-token roles."""

from __future__ import annotations

from torchtune.data import Message

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
