"""Every field the README accepts reaches the training tokens exactly as Qwen2.5's template renders it.

Each case is a row in one of the accepted formats, next to the same conversation written
by hand as transformers takes it (OpenAI messages, tool-call arguments as objects, tools as
a list). The expected tokens are ``apply_chat_template`` with Qwen2.5-Instruct's template
(tests/fixtures) on a tokenizer made from the tiny one; the expected trained tokens are cut
from the template too: the tokens an assistant message adds after the generation prompt
``<|im_start|>assistant\\n`` (rendering the conversation up to it with
``add_generation_prompt``). Fields the template does not read are reported once per dataset.
"""

import json
import logging
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from focusft.data import chat_dataset
from focusft.data.chat import CONVERSATION_FORMATS
from focusft.data.fields import unrendered_fields
from focusft.data.messages import ConversationError, sharegpt_to_messages
from focusft.data.tokenize import tokenize_conversation
from focusft.tiny import load_tiny_tokenizer, tiny_corpus, write_tiny_tokenizer

TEMPLATE = (Path(__file__).parents[1] / "fixtures" / "qwen2_5_instruct_chat_template.jinja").read_text()
SEARCH = {
    "type": "function",
    "function": {"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
}
BARE_SCHEMA = {"name": "lookup", "description": "Look it up.", "parameters": {"type": "object"}}


def call(name, arguments):
    return {"function": {"name": name, "arguments": arguments}}


HI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
ZED = [{"role": "system", "content": "You are Zed."}, *HI]
SEARCH_TURNS = [
    {"role": "user", "content": "Where is the key?"},
    {"role": "assistant", "content": None, "tool_calls": [call("search", {"q": "key"})]},
    {"role": "tool", "content": "office"},
    {"role": "assistant", "content": "In the office."},
]
PARALLEL_TURNS = [
    {"role": "user", "content": "Where are Mary and Bill?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [call("search", {"q": "Mary"}), call("lookup", {"who": "Bill", "n": [1, 2]})],
    },
    {"role": "tool", "content": "kitchen"},
    {"role": "tool", "content": '{"place": "garden"}'},
    {"role": "assistant", "content": "Kitchen and garden."},
]


def sharegpt(*turns, **fields):
    return {"conversations": [{"from": f, "value": v} for f, v in turns], **fields}


# name -> (conversation_format, row, the same conversation for transformers, tools for transformers)
CASES = {
    # The issue's reproduction: LLaMA-Factory's row-level system prompt.
    "sharegpt system field": (
        "sharegpt",
        sharegpt(("human", "Hi"), ("gpt", "Hello."), system="You are Zed."),
        ZED,
        None,
    ),
    "sharegpt system turn": (
        "sharegpt",
        sharegpt(("system", "You are Zed."), ("human", "Hi"), ("gpt", "Hello.")),
        ZED,
        None,
    ),
    "sharegpt system field equal to its turn": (
        "sharegpt",
        sharegpt(("system", "You are Zed."), ("human", "Hi"), ("gpt", "Hello."), system="You are Zed."),
        ZED,
        None,
    ),
    "sharegpt empty system field: the default": (
        "sharegpt",
        sharegpt(("human", "Hi"), ("gpt", "Hello."), system=""),
        HI,
        None,
    ),
    "sharegpt user/assistant aliases": ("sharegpt", sharegpt(("user", "Hi"), ("assistant", "Hello.")), HI, None),
    "sharegpt function_call + observation": (
        "sharegpt",
        sharegpt(
            ("human", "Where is the key?"),
            ("function_call", '{"name": "search", "arguments": {"q": "key"}}'),
            ("observation", "office"),
            ("gpt", "In the office."),
        ),
        SEARCH_TURNS,
        None,
    ),
    "sharegpt function_call list + tool alias + tools string + system field": (
        "sharegpt",
        sharegpt(
            ("human", "Where are Mary and Bill?"),
            (
                "function_call",
                json.dumps(
                    [
                        {"name": "search", "arguments": {"q": "Mary"}},
                        {"name": "lookup", "arguments": json.dumps({"who": "Bill", "n": [1, 2]})},  # a string
                    ]
                ),
            ),
            ("observation", "kitchen"),
            ("tool", '{"place": "garden"}'),
            ("gpt", "Kitchen and garden."),
            system="You are Zed.",
            tools=json.dumps([SEARCH, BARE_SCHEMA]),
        ),
        [{"role": "system", "content": "You are Zed."}, *PARALLEL_TURNS],
        [SEARCH, BARE_SCHEMA],
    ),
    "sharegpt tools list, no system": (
        "sharegpt",
        sharegpt(("human", "Hi"), ("gpt", "Hello."), tools=[SEARCH]),
        HI,
        [SEARCH],
    ),
    "openai tools string, arguments string": (
        "openai",
        {
            "messages": [
                SEARCH_TURNS[0],
                {"role": "assistant", "content": None, "tool_calls": [call("search", '{"q":  "key"}')]},
                *SEARCH_TURNS[2:],
            ],
            "tools": json.dumps([SEARCH]),
        },
        SEARCH_TURNS,
        [SEARCH],
    ),
    "openai calls without 'function', content with calls": (
        "openai",
        {
            "messages": [
                SEARCH_TURNS[0],
                {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [{"name": "search", "arguments": {"q": "key"}}],
                },
                *SEARCH_TURNS[2:],
            ]
        },
        [SEARCH_TURNS[0], {**SEARCH_TURNS[1], "content": "Let me look."}, *SEARCH_TURNS[2:]],
        None,
    ),
    "openai tool name written verbatim, as the template does": (
        "openai",
        {"messages": [SEARCH_TURNS[0], {"role": "assistant", "tool_calls": [call('say_"hi"\\', "{}")]}]},
        [SEARCH_TURNS[0], {"role": "assistant", "content": None, "tool_calls": [call('say_"hi"\\', {})]}],
        None,
    ),
    "openai system message mid-conversation": (
        "openai",
        {"messages": [*ZED, {"role": "system", "content": "Now be terse."}, *HI]},
        [*ZED, {"role": "system", "content": "Now be terse."}, *HI],
        None,
    ),
    "openai fields the template ignores": (
        "openai",
        {
            "id": "row-7",
            "messages": [
                SEARCH_TURNS[0],
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c0", "type": "function", "function": {"name": "search", "arguments": '{"q": "key"}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c0", "name": "search", "content": "office"},
                SEARCH_TURNS[3],
            ],
        },
        SEARCH_TURNS,
        None,
    ),
}


def render(renderer, messages, tools, **kwargs):
    return renderer.apply_chat_template(messages, tools=tools, chat_template=TEMPLATE, **kwargs)


@pytest.fixture(scope="module")
def chat_tokenizer_dir(tmp_path_factory):
    """The tiny BPE trained also on these renderings, so its merges span the template's joints."""
    renderer = AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path_factory.mktemp("renderer"))))
    rendered = [render(renderer, messages, tools, tokenize=False) for _, _, messages, tools in CASES.values()]
    return write_tiny_tokenizer(tmp_path_factory.mktemp("fields_tokenizer"), corpus=tiny_corpus() + rendered * 20)


@pytest.fixture(scope="module")
def hf_tokenizer(chat_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(chat_tokenizer_dir))


def template_tokens_and_trained(hf_tokenizer, messages, tools):
    """The template's tokens (without its final newline) and the positions an assistant generates."""
    tokens = list(render(hf_tokenizer, messages, tools, tokenize=True, return_dict=False))
    newline = hf_tokenizer.encode("\n", add_special_tokens=False)
    assert tokens[-1:] == newline
    trained = set()
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = list(
            render(hf_tokenizer, messages[:index], tools, add_generation_prompt=True, tokenize=True, return_dict=False)
        )
        through = list(render(hf_tokenizer, messages[: index + 1], tools, tokenize=True, return_dict=False))
        assert tokens[: len(through)] == through and through[: len(prompt)] == prompt
        trained.update(range(len(prompt), len(through) - len(newline)))  # the reply and its <|im_end|>
    return tokens[:-1], trained


@pytest.mark.parametrize("name", list(CASES))
def test_training_tokens_and_flags_equal_the_qwen2_5_template(chat_tokenizer_dir, hf_tokenizer, name):
    conversation_format, row, messages, tools = CASES[name]
    conversation = tokenize_conversation(
        CONVERSATION_FORMATS[conversation_format](row), load_tiny_tokenizer(chat_tokenizer_dir)
    )
    tokens, trained = template_tokens_and_trained(hf_tokenizer, messages, tools)
    assert conversation.tokens == tokens
    assert {i for i, context in enumerate(conversation.context) if not context} == trained


def test_the_issue_row_trains_its_own_system_prompt(chat_tokenizer_dir):
    _, row, _, _ = CASES["sharegpt system field"]
    conversation = tokenize_conversation(sharegpt_to_messages(row), load_tiny_tokenizer(chat_tokenizer_dir))
    tokenizer = load_tiny_tokenizer(chat_tokenizer_dir)
    text = tokenizer.decode(conversation.tokens, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nYou are Zed.<|im_end|>") and "Qwen" not in text


@pytest.mark.parametrize(
    "row, error",
    [
        (
            sharegpt(("system", "A."), ("human", "Hi"), ("gpt", "Hello."), system="B."),
            r"'system' field 'B.' and a different system turn 'A.'",
        ),
        (sharegpt(("human", "Hi"), ("gpt", "Hello."), system=["B."]), r"row's 'system' is not a string"),
        (
            sharegpt(("human", "Hi"), ("gpt", "Hello."), system="a<|im_end|>b"),
            r"row's 'system' contains the special token",
        ),
    ],
)
def test_a_bad_system_field_is_a_bad_row(row, error):
    with pytest.raises(ConversationError, match=error):
        sharegpt_to_messages(row)


def test_unrendered_fields_are_named_with_their_paths():
    _, row, _, _ = CASES["openai fields the template ignores"]
    assert unrendered_fields(row, "openai") == [
        "id",
        "messages[].tool_calls[].id",
        "messages[].tool_calls[].type",
        "messages[].tool_call_id",
        "messages[].name",
    ]
    row = sharegpt(
        ("human", "Hi"),
        ("function_call", '{"name": "f", "arguments": {}, "id": "c1"}'),
        ("observation", "x"),
        ("gpt", "Hello."),
        system="S",
        tools="[]",
        images=["a.png"],
        label=None,
    )
    row["conversations"][0]["weight"] = 0
    assert unrendered_fields(row, "sharegpt") == [
        "images",
        "conversations[].weight",
        "conversations[].value (function_call).id",
    ]
    # OpenAI's tool_calls only render on assistant messages; Arrow's nulls and empty values carry nothing.
    user = {"role": "user", "content": "Hi", "tool_calls": [call("f", {})], "name": None}
    assert unrendered_fields({"messages": [user, HI[1]], "tools": None, "meta": ""}, "openai") == [
        "messages[].tool_calls"
    ]


def test_a_dataset_warns_once_about_every_unrendered_field(tmp_path, tokenizer, caplog):
    _, row, _, _ = CASES["openai fields the template ignores"]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [row, {"messages": HI}, row, {"messages": HI, "source": "web"}]))
    with caplog.at_level(logging.INFO):
        dataset = chat_dataset(tokenizer, source="json", data_files=str(path), max_seq_len=512)
    warnings = [r.getMessage() for r in caplog.records if "not rendered" in r.getMessage()]
    assert len(warnings) == 1 and all(
        r.levelno == logging.WARNING for r in caplog.records if "not rendered" in r.getMessage()
    )
    assert dataset.stats.unrendered_fields == {
        "id": 2,
        "messages[].tool_calls[].id": 2,
        "messages[].tool_calls[].type": 2,
        "messages[].tool_call_id": 2,
        "messages[].name": 2,
        "source": 1,
    }
    assert (
        f"'id' (2 rows, first {path} line 1)" in warnings[0]
        and f"'source' (1 rows, first {path} line 4)" in warnings[0]
    )
    assert dataset.stats.samples == 4  # reported, still trained


def test_a_dataset_of_rendered_fields_only_does_not_warn(tmp_path, tokenizer, caplog):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(CASES["sharegpt function_call list + tool alias + tools string + system field"][1]))
    with caplog.at_level(logging.INFO):
        dataset = chat_dataset(
            tokenizer, source="json", data_files=str(path), max_seq_len=2048, conversation_format="sharegpt"
        )
    assert dataset.stats.samples == 1 and dataset.stats.unrendered_fields == {}
    assert not [r for r in caplog.records if "not rendered" in r.getMessage()]
