"""The ``focusft`` lm-eval model: this project's checkpoints through torchtune's model and tokenizer of their family.

Importing this module registers the model with lm-eval (``--model focusft``);
``focusft-eval`` does so before handing its arguments to lm-eval's CLI.
Requests are tokenized with torchtune's tokenizer, scored in batches of one
forward pass each, and answered by greedy decoding with a KV cache. The prompt
handling mirrors lm-eval's ``hf`` backend (left truncation, stop sequences,
empty-context prefix, chat template), so both backends give the same metrics.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

import jinja2
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from focusft.bilevel import InnerLoopConfig
from focusft.eval.adaptation import AdaptationConfig, adapt_on_prompt
from focusft.eval.checkpoint import load_model, load_tokenizer, read_checkpoint, resolve_dtype
from focusft.eval.decoding import LayerFastWeights, greedy_generate, score_continuations
from focusft.eval.errors import EvalError
from focusft.eval.prompt_mask import prompt_context
from focusft.fast_weights import FastWeightConfig, attach_fast_weight_slots
from focusft.masks import MASK_MODES
from focusft.models import family_for_tokenizer

logger = logging.getLogger(__name__)

Request = tuple[tuple[str, str] | None, list[int], list[int]]


def _pick_device(device: str | None) -> torch.device:
    """The GPU when there is one, else the CPU; lm-eval's CLI asks for ``cuda:0`` by default."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("Device %s requested but CUDA is not available; running on the CPU.", device)
        return torch.device("cpu")
    return torch.device(device)


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and not value.is_integer()):
        raise EvalError(f"{name} must be a positive integer for the focusft model, got {value!r}.")
    return number


@register_model("focusft")
class FocusftLM(TemplateLM):
    """lm-eval model over a Qwen2/Qwen2.5 checkpoint directory of this project.

    Args:
        checkpoint_dir: HF-format directory (``epoch_N/``, ``step_K/``, a base model, the tiny one).
        tokenizer: directory of the tokenizer files when the checkpoint has none (default: checkpoint_dir).
            lm-eval also hands this name to tasks that size their data with a tokenizer (RULER).
        device: ``cuda``, ``cuda:1``, ``cpu``...; default the GPU when present, else the CPU.
        dtype: ``auto`` (the checkpoint's ``torch_dtype``), ``bfloat16``, ``float16`` or ``float32``.
        batch_size: requests per forward pass (``auto`` is not supported).
        max_length: context window in tokens; default ``max_position_embeddings`` of config.json.
        max_gen_toks: new tokens when a task does not say.
        prefill_chunk_size: prompt tokens per prefill step of generation (bounds the mask's size).
        adapt: inference-time adaptation (paper Appendix B.3): one inner step on each prompt.
        adapt_lr, adapt_grad_clip, adapt_rank, adapt_alpha, adapt_layer_fraction, adapt_seed:
            its inner-loop hyperparameters (paper Table 5 defaults) and the seed that draws A.
        attention: ``causal`` (default, as the paper evaluates) or ``bidir_context``: the prompt's
            context turns prefilled with FocuSFT's training mask, generation causal
            (docs/DESIGN.md section 3b, "Inference with the training mask"; ``generate_until`` only).
    """

    def __init__(
        self,
        checkpoint_dir: str,
        tokenizer: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        prefill_chunk_size: int = 4096,
        adapt: bool = False,
        adapt_lr: float = 1.0,
        adapt_grad_clip: float = 1.0,
        adapt_rank: int = 32,
        adapt_alpha: float = 64.0,
        adapt_layer_fraction: float = 0.35,
        adapt_seed: int = 0,
        attention: str = "causal",
    ) -> None:
        super().__init__()
        if attention not in MASK_MODES:
            raise EvalError(f"attention={attention!r} is not a mask mode; choose one of {', '.join(MASK_MODES)}.")
        if attention != "causal" and adapt:
            raise EvalError("attention=bidir_context with adapt=true is not supported (adaptation is causal).")
        self.attention = attention
        self.checkpoint = read_checkpoint(checkpoint_dir, tokenizer)
        self._batch_size = _positive_int("batch_size", batch_size)
        self._max_length = _positive_int("max_length", max_length or self.checkpoint.max_position_embeddings)
        self._max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self.prefill_chunk_size = _positive_int("prefill_chunk_size", prefill_chunk_size)
        self._device = _pick_device(device)
        self.dtype = resolve_dtype(str(dtype), self.checkpoint)
        self.model = load_model(
            self.checkpoint,
            dtype=self.dtype,
            device=self._device,
            max_seq_len=max(self._max_length, self.checkpoint.max_position_embeddings),
        )
        self.tokenizer = load_tokenizer(self.checkpoint)
        # Embedding rows past the tokenizer's vocabulary (Qwen2.5 pads 151,665 tokens to 152,064)
        # have no text; HF's decode drops them, and so does tok_decode.
        base_ids = getattr(self.tokenizer, "decoder", None) or range(self.tokenizer.base_vocab_size)  # Qwen / Llama
        self._known_ids = frozenset(base_ids) | frozenset(self.tokenizer.special_tokens.values())
        self._family = family_for_tokenizer(self.tokenizer)
        self.stop_token_ids = sorted({self.tokenizer.eos_id, *self.checkpoint.stop_token_ids})
        self.adaptation: AdaptationConfig | None = None
        if adapt:
            self.adaptation = AdaptationConfig(
                inner=InnerLoopConfig(steps=1, lr=float(adapt_lr), grad_clip=float(adapt_grad_clip)),
                fast=FastWeightConfig(
                    rank=int(adapt_rank), alpha=float(adapt_alpha), layer_fraction=float(adapt_layer_fraction)
                ),
                seed=int(adapt_seed),
            )
            self.slots = attach_fast_weight_slots(self.model, self.adaptation.fast)

    # ---- properties lm-eval reads -------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(self.checkpoint.path.resolve()).replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        return {
            "checkpoint_dir": str(self.checkpoint.path.resolve()),
            "adapter_dir": str(self.checkpoint.adapter.resolve()) if self.checkpoint.adapter else None,
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.dtype),
            "inference_time_adaptation": self.adaptation is not None,
            "attention": self.attention,
        }

    # ---- tokenization and chat template -------------------------------------------------------
    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """No BOS is added (Qwen has none; for Llama 3 a chat template writes its own, as in the hf backend)."""
        return self._family.encode_text(self.tokenizer, string)

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        known = [token for token in tokens if token in self._known_ids]
        return self.tokenizer.decode(known, skip_special_tokens=skip_special_tokens)

    @cached_property
    def _hf_chat_tokenizer(self):
        """The checkpoint's HF tokenizer, used only to render its Jinja chat template exactly as lm-eval's hf does."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.checkpoint.tokenizer_path))

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if chat_template is False or chat_template is None:
            return None
        return self._hf_chat_tokenizer.chat_template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not self._hf_chat_tokenizer.chat_template:
            raise EvalError(
                f"{self.checkpoint.tokenizer_path}/tokenizer_config.json has no 'chat_template'; "
                "run without --apply_chat_template."
            )

        def render(history: list[dict[str, str]]) -> str:
            return self._hf_chat_tokenizer.apply_chat_template(
                history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )

        try:
            return render(chat_history)
        except jinja2.exceptions.TemplateError:
            logger.warning("Chat template rejected the history; retrying without the system message.")
            return render([m for m in chat_history if m["role"] != "system"])

    # ---- scoring ------------------------------------------------------------------------------
    def _adapted(self, prompt: list[int]) -> LayerFastWeights | None:
        if self.adaptation is None:
            return None
        return adapt_on_prompt(self.model, self.slots, prompt, self.adaptation)

    def _window(self, context: list[int], continuation: list[int]) -> list[int]:
        """Context + continuation, left-truncated to ``max_length`` inputs (plus the last, scored-only token)."""
        if len(continuation) > self.max_length:
            raise EvalError(f"A continuation of {len(continuation)} tokens does not fit max_length={self.max_length}.")
        tokens = context + continuation
        if len(tokens) > self.max_length + 1:
            logger.warning(
                "Context (%d) + continuation (%d) tokens exceed max_length %d; truncating %d tokens from the left.",
                len(context),
                len(continuation),
                self.max_length,
                len(tokens) - self.max_length - 1,
            )
        return tokens[-(self.max_length + 1) :]

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if self.attention != "causal":
            raise EvalError(
                f"attention={self.attention} applies to generation (generate_until) only; "
                "score loglikelihood tasks with attention=causal."
            )
        collator = Collator(requests, sort_fn=lambda req: (-len(req[1] + req[2]), tuple(req[1] + req[2])))
        batch_size = 1 if self.adaptation is not None else self.batch_size
        results = []
        with tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood (focusft)") as bar:
            for chunk in collator.get_batched(n=batch_size):
                windows = [(self._window(ctx, cont), len(cont)) for _, ctx, cont in chunk]
                # Adaptation reads what the model reads of the context (one request per chunk).
                fast = self._adapted(windows[0][0][: -windows[0][1]]) if self.adaptation is not None else None
                for (key, _, _), answer in zip(chunk, score_continuations(self.model, windows, fast_weights=fast)):
                    if key is not None:
                        self.cache_hook.add_partial("loglikelihood", key, answer)
                    results.append(answer)
                    bar.update(1)
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        if self.adaptation is not None:
            raise EvalError(
                "Inference-time adaptation needs a prompt to adapt on; loglikelihood_rolling (perplexity) "
                "tasks have none. Run them without adapt=true."
            )
        totals = []
        for (string,) in tqdm([req.args for req in requests], disable=disable_tqdm, desc="rolling (focusft)"):
            windows = [
                (None, context, continuation)
                for context, continuation in map(
                    make_disjoint_window,
                    get_rolling_token_windows(
                        token_list=self.tok_encode(string),
                        prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length,
                        context_len=1,
                    ),
                )
            ]
            total = sum(logprob for logprob, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            totals.append(total)
        return totals

    # ---- generation ---------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        encoded = {req.args[0]: self.tok_encode(req.args[0]) for req in requests}  # long contexts: encode once
        collator = Collator(
            [req.args for req in requests],
            sort_fn=lambda req: (-len(encoded[req[0]]), req[0]),
            group_by="gen_kwargs",
            group_fn=lambda req: req[1],
        )
        batch_size = 1 if self.adaptation is not None else self.batch_size
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        results = []
        with tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until (focusft)") as bar:
            for chunk in collator.get_batched(n=batch_size):
                contexts, all_kwargs = zip(*chunk)
                kwargs = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
                if kwargs.get("do_sample"):
                    raise EvalError(
                        f"The focusft model decodes greedily, but generation kwargs {all_kwargs[0]} ask for sampling."
                    )
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                max_gen_toks = int(kwargs.pop("max_gen_toks"))
                prompts = [self._prompt_tokens(encoded[context], max_gen_toks) for context in contexts]

                outputs = greedy_generate(
                    self.model,
                    prompts,
                    max_new_tokens=max_gen_toks,
                    stop_token_ids=self.stop_token_ids,
                    is_done=self._stop_sequence_check(until),
                    prefill_chunk=self.prefill_chunk_size,
                    fast_weights=self._adapted(prompts[0]) if self.adaptation is not None else None,
                    context=[self._context_flags(p) for p in prompts] if self.attention != "causal" else None,
                )
                for context, gen_kwargs, tokens in zip(contexts, all_kwargs, outputs):
                    text = postprocess_generated_text(self.tok_decode(tokens), stop=until, think_end_token=None)
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                    results.append(text)
                    bar.update(1)
        return collator.get_original(results)

    @cached_property
    def _assistant_header(self) -> list[int]:
        return [self.tokenizer.im_start_id, *self.tok_encode("assistant\n")]

    def _context_flags(self, prompt: list[int]) -> list[bool]:
        """Training's context flags of the prompt (after any left truncation)."""
        return prompt_context(prompt, self._assistant_header, self.tokenizer.im_end_id)

    def _stop_sequence_check(self, until: list[str]):
        """Whether generated tokens already contain a stop sequence (special tokens included)."""

        def is_done(tokens: list[int]) -> bool:
            text = self.tok_decode(tokens, skip_special_tokens=False)
            return any(stop and stop in text for stop in until)

        return is_done

    def _prompt_tokens(self, tokens: list[int], max_gen_toks: int) -> list[int]:
        """The context's tokens, left-truncated so that ``max_gen_toks`` new tokens still fit ``max_length``."""
        room = self.max_length - max_gen_toks
        if room < 1:
            raise EvalError(f"max_gen_toks={max_gen_toks} leaves no room for a prompt in max_length={self.max_length}.")
        if len(tokens) > room:
            logger.warning(
                "Prompt of %d tokens exceeds max_length %d minus max_gen_toks %d; keeping its last %d tokens.",
                len(tokens),
                self.max_length,
                max_gen_toks,
                room,
            )
            tokens = tokens[-room:]
        return tokens
