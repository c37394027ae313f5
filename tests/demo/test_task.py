"""The demo task's promises, checked on the generated conversations with the tiny tokenizer."""

import math

import pytest

from focusft.data.messages import to_torchtune_messages
from focusft.data.tokenize import tokenize_conversation
from focusft.demo.settings import scaled_fast_weights
from focusft.demo.task import PERSONS, PLACES, generate, is_held_out
from focusft.tiny import load_tiny_tokenizer, write_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tiny_tokenizer(write_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def _encode(tokenizer, text):
    return tokenizer.encode(text, add_bos=False, add_eos=False)


def test_every_person_and_place_is_one_token(tokenizer):
    for word in PERSONS + PLACES:
        assert len(_encode(tokenizer, " " + word)) == 1, word


@pytest.mark.parametrize("split", ["train", "eval"])
@pytest.mark.parametrize("persons", [1, 3])
def test_the_answer_copies_a_token_of_the_story(tokenizer, split, persons):
    for sample in generate(split, 30, 256, tokenizer, seed=3, persons=persons):
        conversation = tokenize_conversation(to_torchtune_messages(sample["messages"]), tokenizer)
        trained = [t for t, c in zip(conversation.tokens, conversation.context) if not c]
        answer_token, end = trained
        assert end == tokenizer.im_end_id
        assert _encode(tokenizer, " " + sample["answer"]) == [answer_token]
        user = sample["messages"][1]["content"]
        story = user[user.index("<text>") + len("<text>") : user.index("</text>")]
        person = user.rsplit("Where is ", 1)[1].rstrip("?")
        # The one fact about the asked person names the answer, with the same leading space.
        facts = [s for s in story.replace("\n", " ").split(". ") if s.strip().startswith(person + " ")]
        assert len(facts) == 1 and facts[0].endswith(f"the {sample['answer']}")
        assert answer_token in conversation.tokens[: len(conversation.tokens) - len(trained)]


def test_held_out_pairs_are_asked_only_in_eval_and_every_answer_is_trained(tokenizer):
    def asked(sample):
        return sample["messages"][1]["content"].rsplit("Where is ", 1)[1].rstrip("?"), sample["answer"]

    train = [asked(s) for s in generate("train", 200, 256, tokenizer, persons=2)]
    held = [asked(s) for s in generate("eval", 100, 256, tokenizer, persons=2)]
    assert not any(is_held_out(*pair) for pair in train)
    assert all(is_held_out(*pair) for pair in held)
    assert {place for _, place in held} <= {place for _, place in train}


@pytest.mark.parametrize("target", [256, 512])
def test_lengths_are_counted_in_the_tiny_models_tokens(tokenizer, target):
    lengths = [
        len(tokenize_conversation(to_torchtune_messages(s["messages"]), tokenizer))
        for s in generate("eval", 20, target, tokenizer)
    ]
    assert max(lengths) <= target
    assert min(lengths) >= target - 40  # within a filler sentence or two


def test_fast_weights_keep_the_papers_proportions():
    paper = scaled_fast_weights(3584)
    assert (paper.rank, paper.alpha, paper.inner_lr) == (32, 64, 1.0)
    tiny = scaled_fast_weights(64)
    assert (tiny.rank, tiny.alpha) == (1, 2)
    assert math.isclose(tiny.inner_lr, math.sqrt(64 / 3584))
