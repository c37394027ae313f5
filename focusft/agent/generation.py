"""Where rollouts' assistant turns come from: vLLM, transformers, or a fixed script.

All three take the same :class:`Request` (a conversation so far, rendered by the checkpoint's
own chat template with the tool schema, as at inference) and return one :class:`Completion`
per request. The script backend replays fixed responses, so the rollout loop, the sandbox
and the scoring can be tested deterministically without a model.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

STOP_STRINGS = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class SamplingSettings:
    """The paper's rollout sampling (Appendix A): temperature 1.0, top-p 0.6."""

    temperature: float = 1.0
    top_p: float = 0.6
    max_new_tokens: int = 2048


@dataclass(frozen=True)
class Request:
    """One assistant turn to generate: ``turn`` counts assistant turns from 0."""

    problem_id: str
    rollout: int
    turn: int
    seed: int
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]


@dataclass(frozen=True)
class Completion:
    """The generated text up to (not including) the stop token; ``finish`` is ``stop``, ``length``
    (``max_new_tokens`` reached) or ``context`` (the prompt alone fills the model's context)."""

    text: str
    finish: str


class Generator(Protocol):
    def complete(self, requests: list[Request]) -> list[Completion]: ...


def request_seed(seed: int, problem_id: str, rollout: int) -> int:
    """A rollout's own seed: the same for the same run seed, problem and rollout index."""
    return zlib.crc32(f"{seed}:{problem_id}:{rollout}".encode()) & 0x7FFFFFFF


def _cut_at_stop(text: str) -> tuple[str, bool]:
    cuts = [text.find(stop) for stop in STOP_STRINGS if stop in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class ScriptedGenerator:
    """Replays responses from a JSON file ``{problem_id: [turn 0 text, turn 1 text, ...]}``.

    A problem missing from the script uses the ``"*"`` entry; a turn past the end of its list
    repeats the last response. Deterministic: the same script gives the same transcripts.
    """

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = script

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedGenerator:
        script = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(script, dict) or not all(
            isinstance(v, list) and v and all(isinstance(t, str) for t in v) for v in script.values()
        ):
            raise ValueError(f"{path}: a script is a JSON object of non-empty lists of strings")
        return cls(script)

    def complete(self, requests: list[Request]) -> list[Completion]:
        completions = []
        for request in requests:
            turns = self.script.get(request.problem_id) or self.script.get("*")
            if turns is None:
                raise ValueError(f"the script has no responses for problem {request.problem_id!r} and no '*' entry")
            completions.append(Completion(turns[min(request.turn, len(turns) - 1)], "stop"))
        return completions


class TransformersGenerator:
    """Batched sampling with ``transformers`` (CPU or one GPU), left-padded prompts.

    ``torch.manual_seed`` is set from the batch's request seeds before each batch, so a run
    repeats exactly with the same seed and batch size (one seed per request needs vLLM).
    """

    def __init__(
        self, checkpoint: str | Path, settings: SamplingSettings, device: str | None = None, dtype: str = "auto"
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=dtype).to(self.device).eval()
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 32768))
        self.stop_ids = [i for i in self.tokenizer.convert_tokens_to_ids(list(STOP_STRINGS)) if i is not None]

    def render(self, request: Request) -> str:
        return self.tokenizer.apply_chat_template(
            request.messages, tools=request.tools, add_generation_prompt=True, tokenize=False
        )

    @torch.inference_mode()
    def complete(self, requests: list[Request]) -> list[Completion]:
        prompts = [self.render(r) for r in requests]
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        room = self.max_length - self.settings.max_new_tokens
        fits = [i for i, ids in enumerate(encoded) if len(ids) <= room]
        results = [Completion("", "context")] * len(requests)
        if not fits:
            return results
        batch = self.tokenizer([prompts[i] for i in fits], return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(zlib.crc32(json.dumps([(r.seed, r.turn) for r in requests]).encode()))
        sampled = self.settings.temperature > 0
        output = self.model.generate(
            **batch.to(self.device),
            do_sample=sampled,
            temperature=self.settings.temperature if sampled else None,
            top_p=self.settings.top_p if sampled else None,
            max_new_tokens=self.settings.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        for row, index in enumerate(fits):
            text, stopped = _cut_at_stop(self.tokenizer.decode(new_tokens[row], skip_special_tokens=False))
            results[index] = Completion(text, "stop" if stopped else "length")
        return results


class VLLMGenerator:
    """vLLM's offline engine (GPU): one seed per request, so every rollout repeats on its own."""

    def __init__(self, checkpoint: str | Path, settings: SamplingSettings, **engine_args: Any) -> None:
        from vllm import LLM

        self.settings = settings
        self.llm = LLM(model=str(checkpoint), **engine_args)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_length = self.llm.llm_engine.model_config.max_model_len

    def complete(self, requests: list[Request]) -> list[Completion]:
        from vllm import SamplingParams

        prompts = [
            self.tokenizer.apply_chat_template(r.messages, tools=r.tools, add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        room = self.max_length - self.settings.max_new_tokens
        fits = [
            i for i, p in enumerate(prompts) if len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) <= room
        ]
        params = [
            SamplingParams(
                temperature=self.settings.temperature,
                top_p=self.settings.top_p,
                max_tokens=self.settings.max_new_tokens,
                seed=requests[i].seed + requests[i].turn,
                stop=list(STOP_STRINGS),
            )
            for i in fits
        ]
        results = [Completion("", "context")] * len(requests)
        for index, output in zip(fits, self.llm.generate([prompts[i] for i in fits], params, use_tqdm=False)):
            choice = output.outputs[0]
            results[index] = Completion(choice.text, "length" if choice.finish_reason == "length" else "stop")
        return results


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()
