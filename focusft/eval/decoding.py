"""Batched scoring and greedy decoding on a torchtune decoder, optionally with fast weights.

Only the positions whose next-token distribution is needed go through the output
projection: with a 150K vocabulary the logits of a long context would dwarf the
rest of the forward pass. Generation keeps a KV cache sized to the batch
(prompt + new tokens) and fills it chunk by chunk, so the attention mask of one
step is at most ``[batch, chunk, cache]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchtune.generation import get_position_ids_from_padding_mask
from torchtune.modules import TransformerDecoder, local_kv_cache

from focusft.fast_weights import FastWeights, run_layer
from focusft.masks import TokenLayout, dense_mask

LayerFastWeights = dict[int, FastWeights]


def final_hidden(
    model: TransformerDecoder,
    tokens: torch.Tensor,
    *,
    input_pos: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    fast_weights: LayerFastWeights | None = None,
) -> torch.Tensor:
    """Normalised last hidden states ``[b, s, d]``: the decoder's forward without the output projection.

    Layers listed in ``fast_weights`` run with those tensors filled into their
    :class:`~focusft.fast_weights.FastLoRALinear` slots for this call only.
    """
    h = model.tok_embeddings(tokens)
    for index, layer in enumerate(model.layers):
        fast = fast_weights.get(index) if fast_weights is not None else None
        h = run_layer(layer, h, fast, mask=mask, input_pos=input_pos)
    return model.norm(h)


def log_probs(model: TransformerDecoder, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities in float32 for the given hidden states."""
    return torch.log_softmax(model.output(hidden).float(), dim=-1)


@torch.no_grad()
def score_continuations(
    model: TransformerDecoder,
    windows: Sequence[tuple[Sequence[int], int]],
    *,
    fast_weights: LayerFastWeights | None = None,
) -> list[tuple[float, bool]]:
    """``(sum of log p(continuation), continuation is the greedy one)`` for each window.

    A window is ``(tokens, n)``: the model reads ``tokens[:-1]`` and is scored on
    the last ``n`` tokens. Rows are right-padded into one forward pass; causal
    attention keeps padding from reaching the scored positions.
    """
    device = model.tok_embeddings.weight.device
    width = max(len(tokens) - 1 for tokens, _ in windows)
    batch = torch.zeros((len(windows), width), dtype=torch.long, device=device)
    for row, (tokens, _) in enumerate(windows):
        batch[row, : len(tokens) - 1] = torch.as_tensor(tokens[:-1], device=device)
    hidden = final_hidden(model, batch, fast_weights=fast_weights)
    results = []
    for row, (tokens, n) in enumerate(windows):
        end = len(tokens) - 1
        lp = log_probs(model, hidden[row, end - n : end])
        target = torch.as_tensor(tokens[-n:], device=device)
        picked = lp.gather(-1, target[:, None]).squeeze(-1)
        results.append((float(picked.sum()), bool((lp.argmax(-1) == target).all())))
    return results


@torch.no_grad()
def greedy_generate(
    model: TransformerDecoder,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_token_ids: Sequence[int],
    is_done: Callable[[list[int]], bool] | None = None,
    prefill_chunk: int = 4096,
    fast_weights: LayerFastWeights | None = None,
    context: Sequence[Sequence[bool]] | None = None,
) -> list[list[int]]:
    """Greedy continuations of left-padded ``prompts`` with a KV cache.

    A row stops at a token in ``stop_token_ids`` (not returned) or when
    ``is_done(generated_tokens)`` is true (the tokens so far are returned, for the
    caller to cut the text at its stop sequence). The batch stops when all rows have.

    ``context`` (one flag per prompt token, True: context as in training) prefills the
    prompts with the training mask's ``bidir_context`` mode in one chunk, since a context
    token sees the later tokens of its turn (docs/DESIGN.md section 3b, "Inference with the
    training mask"); the new tokens stay causal. Default: the prompts causal too.
    """
    if max_new_tokens < 1:
        return [[] for _ in prompts]
    device = model.tok_embeddings.weight.device
    batch_size, prompt_len = len(prompts), max(len(p) for p in prompts)
    total = prompt_len + max_new_tokens
    tokens = torch.zeros((batch_size, prompt_len), dtype=torch.long, device=device)
    valid = torch.ones((batch_size, total), dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        pad = prompt_len - len(prompt)
        tokens[row, pad:] = torch.as_tensor(prompt, device=device)
        valid[row, :pad] = False
    positions = get_position_ids_from_padding_mask(valid).long()
    slots = torch.arange(total, device=device)
    prefill_mask = None
    if context is not None:
        prefill_mask = _bidir_prefill_mask(prompts, context, valid[:, :prompt_len], total)
        prefill_chunk = prompt_len

    def step(chunk: torch.Tensor, start: int) -> torch.Tensor:
        """Run cache slots ``start .. start+len-1``; returns the next token of each row."""
        query_slots = slots[start : start + chunk.shape[1]]
        # Causal over cache slots, never onto left padding; each slot always sees itself,
        # so a padding query has a non-empty row and cannot produce NaN.
        mask = (slots[None, None, :] <= query_slots[None, :, None]) & valid[:, None, :]
        mask |= slots[None, None, :] == query_slots[None, :, None]
        if prefill_mask is not None and start == 0:
            mask = prefill_mask
        hidden = final_hidden(
            model,
            chunk,
            input_pos=positions[:, start : start + chunk.shape[1]],
            mask=mask,
            fast_weights=fast_weights,
        )
        return model.output(hidden[:, -1]).float().argmax(-1)

    stops = set(stop_token_ids)
    generated: list[list[int]] = [[] for _ in prompts]
    finished = [False] * batch_size
    dtype = model.tok_embeddings.weight.dtype
    with local_kv_cache(model, batch_size=batch_size, device=device, dtype=dtype, decoder_max_seq_len=total):
        for start in range(0, prompt_len, prefill_chunk):
            next_tokens = step(tokens[:, start : start + prefill_chunk], start)
        for index in range(max_new_tokens):
            for row, token in enumerate(next_tokens.tolist()):
                if finished[row]:
                    continue
                if token in stops:
                    finished[row] = True
                    continue
                generated[row].append(token)
                finished[row] = is_done is not None and is_done(generated[row])
            if all(finished) or index == max_new_tokens - 1:
                break
            next_tokens = step(next_tokens[:, None], prompt_len + index)
    return generated


def _bidir_prefill_mask(
    prompts: Sequence[Sequence[int]], context: Sequence[Sequence[bool]], valid: torch.Tensor, total: int
) -> torch.Tensor:
    """Bool ``[b, prompt_len, total]``: the training mask's ``bidir_context`` mode over the left-padded prompts.

    Built from the same ``mask_mod`` as training (``focusft.masks``); padding is an invalid token,
    and cache slots after the prompt (not yet written) are hidden.
    """
    if len(context) != len(prompts) or any(len(c) != len(p) for c, p in zip(context, prompts)):
        raise ValueError("greedy_generate: context needs one flag per prompt token.")
    batch_size, prompt_len = valid.shape
    flags = torch.zeros((batch_size, prompt_len), dtype=torch.bool, device=valid.device)
    for row, row_flags in enumerate(context):
        if row_flags:
            flags[row, prompt_len - len(row_flags) :] = torch.as_tensor(list(row_flags), device=valid.device)
    layout = TokenLayout(context=flags, doc=torch.zeros_like(flags, dtype=torch.long), valid=valid)
    mask = torch.zeros((batch_size, prompt_len, total), dtype=torch.bool, device=valid.device)
    mask[:, :, :prompt_len] = dense_mask(layout, "bidir_context")
    return mask
