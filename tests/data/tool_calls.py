"""The tools and tool calls that the chat-template tests of every model family render."""

import json

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the notes.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    },
    {"type": "function", "function": {"name": "read_note", "parameters": {"type": "object"}}},
]


def call(name, arguments):
    """An OpenAI tool call: ``arguments`` as a JSON string."""
    return {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
