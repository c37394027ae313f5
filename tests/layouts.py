"""Random per-token layouts (multi-turn, packed, padded) for mask and bilevel tests."""

from __future__ import annotations

import torch

from focusft.masks import TokenLayout


def random_layout(batch: int, seq_len: int, generator: torch.Generator, max_docs: int = 3) -> TokenLayout:
    """Rows of several packed documents, each a run of alternating context/response turns, then padding."""
    context = torch.zeros(batch, seq_len, dtype=torch.bool)
    doc = torch.zeros(batch, seq_len, dtype=torch.long)
    valid = torch.zeros(batch, seq_len, dtype=torch.bool)
    for row in range(batch):
        pos = 0
        used = int(torch.randint(seq_len // 2, seq_len + 1, (1,), generator=generator))
        for d in range(int(torch.randint(1, max_docs + 1, (1,), generator=generator))):
            doc_len = min(int(torch.randint(4, max(5, used // 2), (1,), generator=generator)), used - pos)
            end = pos + doc_len
            is_context = True  # a conversation starts with its system/user turn
            while pos < end:
                turn_len = min(int(torch.randint(1, 8, (1,), generator=generator)), end - pos)
                context[row, pos : pos + turn_len] = is_context
                doc[row, pos : pos + turn_len] = d
                valid[row, pos : pos + turn_len] = True
                pos += turn_len
                is_context = not is_context
            if pos >= used:
                break
        doc[row, pos:] = d + 1  # padding gets a document id of its own
        context[row, pos:] = bool(torch.randint(0, 2, (1,), generator=generator))
    return TokenLayout(context=context, doc=doc, valid=valid)


IGNORE_INDEX = -100


def shifted_labels(tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Position t predicts token t+1 when t+1 is a response token of the same document."""
    labels = torch.full_like(tokens, IGNORE_INDEX)
    trained = ~layout.context[:, 1:] & layout.valid[:, 1:] & (layout.doc[:, 1:] == layout.doc[:, :-1])
    labels[:, :-1] = torch.where(trained, tokens[:, 1:], IGNORE_INDEX)
    return labels


def random_batch(batch: int, seq_len: int, seed: int, vocab: int = 500):
    """Tokens, shifted labels and layout of a random multi-turn packed batch."""
    generator = torch.Generator().manual_seed(seed)
    layout = random_layout(batch, seq_len, generator)
    tokens = torch.randint(0, vocab, layout.shape, generator=generator)
    return tokens, shifted_labels(tokens, layout), layout


def documents_layout(rows: list[list[int]], width: int, generator: torch.Generator) -> TokenLayout:
    """Rows of packed documents of the given lengths, each alternating context/response turns, then padding."""
    context = torch.ones(len(rows), width, dtype=torch.bool)
    doc = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for row, lengths in enumerate(rows):
        pos = 0
        for d, length in enumerate(lengths):
            end, is_context = pos + length, True  # a conversation starts with its system/user turn
            while pos < end:
                turn = min(int(torch.randint(2, 7, (1,), generator=generator)), end - pos)
                context[row, pos : pos + turn] = is_context
                pos, is_context = pos + turn, not is_context
            doc[row, end - length : end] = d
        valid[row, :pos] = True
        doc[row, pos:] = len(lengths)
    return TokenLayout(context=context, doc=doc, valid=valid)


def brute_force_documents(layout: TokenLayout) -> torch.Tensor:
    """Document index of each token by walking the rows: a new document at every valid run start."""
    b, s = layout.shape
    out = torch.full((b, s), -1, dtype=torch.long)
    count = -1
    for row in range(b):
        previous = None
        for t in range(s):
            if not layout.valid[row, t]:
                previous = None
                continue
            if previous is None or layout.doc[row, t] != previous:
                count += 1
            out[row, t] = count
            previous = layout.doc[row, t]
    return out
