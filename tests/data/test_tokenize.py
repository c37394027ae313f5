"""Per-token roles on real Qwen2.5 chat-template output, against hand-written expectations.

Each expectation is the conversation as Qwen2.5's chat template renders it, cut by hand
into pieces labelled context (``C``), assistant header (``H``) or trained (``T``). The
tokens must equal the tokenizer's encoding of the whole rendered text, and each token's
flag must be its piece's.
"""

import json

import pytest
import torch

from focusft.batch import prepare_batch
from focusft.data.collate import collate_focus_batch
from focusft.data.messages import QWEN_DEFAULT_SYSTEM, openai_to_messages, sharegpt_to_messages
from focusft.data.tokenize import tokenize_conversation
from focusft.masks import dense_mask
from focusft.tiny import load_tiny_tokenizer

OPENAI_ROW = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is Mary?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c0", "type": "function", "function": {"name": "search", "arguments": '{"q": "Mary"}'}},
                {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "Bill"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c0", "content": "kitchen"},
        {"role": "tool", "content": "garden"},
        {
            "role": "assistant",
            "content": "I will check.",
            "tool_calls": [
                {"function": {"name": "look", "arguments": {}}},
                {"function": {"name": "ask", "arguments": {"who": "Bill"}}},
            ],
        },
        {"role": "tool", "content": "x"},
        {"role": "assistant", "content": "kitchen"},
    ]
}

SHAREGPT_ROW = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Where is Mary?"},
        {"from": "function_call", "value": '{"name": "search", "arguments": {"q": "Mary"}}'},
        {"from": "observation", "value": "kitchen"},
        {"from": "function_call", "value": '[{"name": "look", "arguments": {}}, {"name": "ask", "arguments": {}}]'},
        {"from": "observation", "value": "x"},
        {"from": "gpt", "value": "kitchen"},
    ]
}
SHAREGPT_AS_OPENAI = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is Mary?"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "search", "arguments": '{"q": "Mary"}'}}]},
        {"role": "tool", "content": "kitchen"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "look", "arguments": {}}}, {"name": "ask", "arguments": "{}"}],
        },
        {"role": "tool", "content": "x"},
        {"role": "assistant", "content": "kitchen"},
    ]
}

# Qwen2.5's rendering of OPENAI_ROW, cut into pieces by role.
PIECES = [
    ("C", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere is Mary?<|im_end|>\n"),
    ("H", "<|im_start|>assistant\n"),
    ("T", '<tool_call>\n{"name": "search", "arguments": {"q": "Mary"}}\n</tool_call>'),
    ("T", '\n<tool_call>\n{"name": "search", "arguments": {"q": "Bill"}}\n</tool_call><|im_end|>'),
    ("C", "\n<|im_start|>user\n<tool_response>\nkitchen\n</tool_response>\n<tool_response>\ngarden\n</tool_response>"),
    ("C", "<|im_end|>\n"),
    ("H", "<|im_start|>assistant\n"),
    ("T", 'I will check.\n<tool_call>\n{"name": "look", "arguments": {}}\n</tool_call>'),
    ("T", '\n<tool_call>\n{"name": "ask", "arguments": {"who": "Bill"}}\n</tool_call><|im_end|>'),
    ("C", "\n<|im_start|>user\n<tool_response>\nx\n</tool_response><|im_end|>\n"),
    ("H", "<|im_start|>assistant\n"),
    ("T", "kitchen<|im_end|>"),
]


def expected(tokenizer, pieces, train_on_header):
    tokens, context = [], []
    for role, text in pieces:
        ids = tokenizer.encode(text, add_bos=False, add_eos=False)
        tokens += ids
        context += [role == "C" or (role == "H" and not train_on_header)] * len(ids)
    full = "".join(text for _, text in pieces)
    assert tokens == tokenizer.encode(full, add_bos=False, add_eos=False), "pieces must cut at token boundaries"
    return tokens, context


@pytest.mark.parametrize("train_on_header", [False, True])
def test_only_assistant_output_and_its_im_end_are_trained(tokenizer, train_on_header):
    conversation = tokenize_conversation(
        openai_to_messages(OPENAI_ROW), tokenizer, train_on_assistant_header=train_on_header
    )
    tokens, context = expected(tokenizer, PIECES, train_on_header)
    assert conversation.tokens == tokens
    assert conversation.context == context
    assert conversation.roles == ["system", "user", "assistant", "ipython", "assistant", "ipython", "assistant"]
    sample = conversation.as_sample()
    assert sample["labels"] == [-100 if c else t for t, c in zip(tokens, context)]


def test_tool_calls_become_the_tokenizers_tool_call_tokens(tokenizer):
    conversation = tokenize_conversation(openai_to_messages(OPENAI_ROW), tokenizer)
    trained = [t for t, c in zip(conversation.tokens, conversation.context) if not c]
    specials = tokenizer.special_tokens
    assert trained.count(specials["<tool_call>"]) == 4 and trained.count(specials["</tool_call>"]) == 4
    assert specials["<tool_call>"] not in [t for t, c in zip(conversation.tokens, conversation.context) if c]
    assert trained.count(specials["<|im_end|>"]) == 3  # one per assistant turn; never <|im_start|>
    assert specials["<|im_start|>"] not in trained


def test_sharegpt_gives_the_same_tokens_and_roles(tokenizer):
    a = tokenize_conversation(openai_to_messages(SHAREGPT_AS_OPENAI), tokenizer)
    b = tokenize_conversation(sharegpt_to_messages(SHAREGPT_ROW), tokenizer)
    assert a.tokens == b.tokens and a.context == b.context
    assert b.roles == ["system", "user", "assistant", "ipython", "assistant", "ipython", "assistant"]


TOOL = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
QWEN_TOOLS_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


@pytest.mark.parametrize("tools", [[TOOL], json.dumps([TOOL])])
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_tools_are_rendered_into_the_system_prompt_as_qwen_does(tokenizer, tools, system):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    conversation = tokenize_conversation(openai_to_messages({"messages": messages, "tools": tools}), tokenizer)
    prompt = system or "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    pieces = [
        ("C", f"<|im_start|>system\n{prompt}{QWEN_TOOLS_PROMPT}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"),
        ("H", "<|im_start|>assistant\n"),
        ("T", "Yo<|im_end|>"),
    ]
    assert (conversation.tokens, conversation.context) == expected(tokenizer, pieces, False)


def test_a_tokenizer_with_max_seq_len_does_not_truncate(tokenizer, tokenizer_dir):
    row = {"messages": [{"role": "user", "content": "Hi " * 50}, {"role": "assistant", "content": "Yo"}]}
    truncating = load_tiny_tokenizer(tokenizer_dir, max_seq_len=8)
    full = tokenize_conversation(openai_to_messages(row), tokenizer)
    assert len(full) > 50
    assert tokenize_conversation(openai_to_messages(row), truncating) == full
    assert truncating.max_seq_len == 8


# Segments of [user "Hi", assistant "Yo", user "Ok", assistant "No"] (after Qwen2.5's default system turn)
# and the mask between them:
# "full" = every key visible, "causal" = keys up to the query, "none" = nothing (but itself).
SEGMENTS = [
    (
        "C",
        f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    ),
    ("T", "Yo<|im_end|>"),
    ("C", "\n<|im_start|>user\nOk<|im_end|>\n<|im_start|>assistant\n"),
    ("T", "No<|im_end|>"),
]
BIDIR_BLOCKS = [
    ["full", "none", "none", "none"],
    ["full", "causal", "none", "none"],
    ["full", "full", "full", "none"],
    ["full", "full", "full", "causal"],
]
CAUSAL_BLOCKS = [
    ["causal", "none", "none", "none"],
    ["full", "causal", "none", "none"],
    ["full", "full", "causal", "none"],
    ["full", "full", "full", "causal"],
]


@pytest.mark.parametrize("mode, blocks", [("bidir_context", BIDIR_BLOCKS), ("causal", CAUSAL_BLOCKS)])
def test_mask_of_a_tokenized_conversation_matches_the_hand_written_one(tokenizer, mode, blocks):
    row = {"messages": [{"role": r, "content": c} for r, c in zip(["user", "assistant"] * 2, ["Hi", "Yo", "Ok", "No"])]}
    sample = tokenize_conversation(openai_to_messages(row), tokenizer).as_sample()
    longer = {key: [0] * (len(sample["tokens"]) + 2) for key in ("tokens", "labels", "context")}
    batch = prepare_batch(collate_focus_batch([sample, longer], padding_idx=tokenizer.pad_id), "cpu")
    mask = dense_mask(batch.layout, mode)[0]

    sizes = [len(tokenizer.encode(text, add_bos=False, add_eos=False)) for _, text in SEGMENTS]
    n = sum(sizes)
    fill = {"full": lambda a, b: torch.ones(a, b), "none": lambda a, b: torch.zeros(a, b)}
    fill["causal"] = lambda a, b: torch.tril(torch.ones(a, b))
    want = torch.cat(
        [torch.cat([fill[kind](sizes[i], sizes[j]) for j, kind in enumerate(row)], 1) for i, row in enumerate(blocks)]
    )
    want = torch.block_diag(want, torch.eye(2))  # the row's two padding tokens see only themselves
    assert mask.shape == (n + 2, n + 2)
    assert torch.equal(mask, want.bool())
