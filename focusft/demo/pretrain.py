"""Pre-train the demo's base model until it has an attention sink (``python -m focusft.demo.pretrain OUT``).

The paper's failure mode is attention dilution: a pre-trained model parks much of its
attention on the first tokens (the sink, paper Section 2.2). A freshly initialised tiny model
has none, and brief pre-training on the tokenizer's corpus does not make one (issue 22). Sinks
appear where heads are needed on some tokens and idle on most: an idle head attends to a fixed
first token. So this text is

- every document a chat conversation that opens the way the demo's do
  (``<|im_start|>system\\nYou are a helpful assistant.``): a fixed first token;
- story text: sentences drawn from a grammar of many words (people, places, objects,
  weather, numbers), most predictable from the words just before them, and (``--text mixed``,
  the default) of higher entropy: a share of them words in random order, which nothing earlier
  in the text helps to predict;
- plus back-references ("Mary left the kitchen." after "Mary went to the kitchen.") whose
  last word can only be copied from far back: the heads that copy are busy on those tokens only;
- (``--text backcopy``) a ``--chain-share`` of the pieces token chains of a fixed sparse bigram
  language in which a trigger token is followed by a copy of the token before it
  (:class:`BigramBackcopy`): a head needed on the triggers only, idle everywhere else.

It holds no question about a person's place (the demo's task) and no fact twice.

The loss is on every token. Every ``--measure-every`` steps the sink mass (share of the answer
tokens' attention on key positions [0:5], mean over layers and heads: ``focusft-attention``'s
figure, causal mask) is measured on held-out demo eval conversations and logged, so one run
shows how the sink grows; so is the sink mass on ``--measure-rows`` held-out rows of the
pre-training text itself (fresh rows from the same generator and bigram language, queries at
positions >= ``--text-query-from``), and for both the largest of any single head. The result
is an HF-format checkpoint directory like ``python -m focusft.tiny`` writes (same tokenizer),
plus ``pretrain_log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from statistics import mean

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from focusft.analysis.probabilities import queries_and_keys
from focusft.analysis.segments import SINK_TOKENS
from focusft.tiny import TinyQwenConfig, seeded_tiny_qwen2_5, write_model_files, write_tiny_tokenizer

SYSTEM_PREFIX = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
ASSISTANT_HEADER = "<|im_end|>\n<|im_start|>assistant\n"
OPENINGS = {"header": SYSTEM_PREFIX, "first-token": "<|im_start|>"}  # --opening: what every pre-training row opens with

_PERSONS = ("Mary", "John", "Sandra", "Daniel", "Fred", "Julie", "Bill", "Emma", "Jeff", "Yann")
_PLACES = ("kitchen", "garden", "office", "hallway", "bedroom", "bathroom", "park", "school", "cinema")
_OBJECTS = ("apple", "football", "milk", "book", "key", "box", "ticket", "laptop", "letter")
_ADJECTIVES = ("old", "cold", "grey", "lone", "distant", "thin", "bright", "quiet", "small", "heavy", "green")
_NOUNS = ("river", "wind", "sky", "heron", "bell", "mist", "road", "tree", "cloud", "stone", "door", "lamp")
_VERBS = ("drifted over", "settled upon", "wandered past", "shimmered above", "rolled across", "faded into",
          "stood near", "fell on", "waited by", "turned toward")  # fmt: skip
_SCENES = ("the silent hills", "the misty valley", "the stony shore", "the pale meadows", "the dark pines",
           "the long field", "the small town", "the open sea", "the high wall")  # fmt: skip
_MOVES = ("went to", "moved to", "travelled to", "journeyed to")
_BACK = ("left the", "stayed in the", "cleaned the", "waited in the", "looked around the")
_TIMES = ("Later", "Then", "After a while", "At noon", "In the evening", "Soon")
_WORDS = (*_ADJECTIVES, *_NOUNS, *_OBJECTS, *_PLACES, *(p.lower() for p in _PERSONS), *map(str, range(0, 100, 7)))


class StoryWriter:
    """Sentences of one document; remembers where each person went so back-references can copy it."""

    def __init__(self, rng: random.Random, high_entropy: bool = True) -> None:
        self.rng = rng
        self.high_entropy = high_entropy
        self.where: dict[str, str] = {}

    def sentence(self) -> str:
        rng = self.rng
        kind = rng.random()
        if kind < 0.2:
            person, place = rng.choice(_PERSONS), rng.choice(_PLACES)
            self.where[person] = place
            return f"{person} {rng.choice(_MOVES)} the {place}."
        if kind < 0.32 and self.where:
            person = rng.choice(sorted(self.where))
            return f"{rng.choice(_TIMES)}, {person} {rng.choice(_BACK)} {self.where[person]}."
        if kind < 0.42:
            return f"{rng.choice(_PERSONS)} {rng.choice(('picked up', 'dropped', 'got'))} the {rng.choice(_OBJECTS)}."
        if kind < 0.47:
            return f"The {rng.choice(_OBJECTS)} cost {rng.randrange(100)} and weighed {rng.randrange(1000)}."
        if kind < 0.7 or not self.high_entropy:
            subject = f"{rng.choice(('The', 'A'))} {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
            return f"{subject} {rng.choice(_VERBS)} {rng.choice(_SCENES)}."
        # Words in no order at all: nothing earlier in the text helps to predict them.
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 8))).capitalize() + "."


class BigramBackcopy:
    """Token streams of a fixed sparse bigram language with back-copy triggers (Guo et al. 2024's task).

    Every ordinary token has ``successors`` likely next tokens (drawn once from ``seed``: the
    same language in every document), so most positions are predicted by the current token
    alone and need nothing from the context; after one of ``triggers`` trigger tokens the next
    token is the one before the trigger, which only a head attending back can supply. Such a
    head is needed on trigger tokens only and must stay idle elsewhere: the condition under
    which idle heads park their attention on the first tokens.
    """

    def __init__(self, tokens: list[int], seed: int, successors: int = 3, triggers: int = 12) -> None:
        language = random.Random(f"bigram|{seed}")
        self.tokens = tokens
        self.triggers = set(language.sample(tokens, triggers))
        self.next = {t: language.sample(tokens, successors) for t in tokens}
        self.weights = [0.6, 0.25, 0.15][:successors] if successors <= 3 else [1.0] * successors

    def stream(self, rng: random.Random, length: int) -> list[int]:
        out = [rng.choice(self.tokens)]
        while len(out) < length:
            current = out[-1]
            if current in self.triggers and len(out) >= 2:
                out.append(out[-2])
            else:
                out.append(rng.choices(self.next[current], self.weights)[0])
        return out


class Corpus:
    """Pre-training rows of exactly ``length`` tokens: one conversation each, cut at the end.

    The assistant turn starts after the first sentence that ends past a random 50–90% of the
    row; a row whose last user sentence runs past its end has none.
    """

    def __init__(
        self,
        tokenizer_file: Path,
        length: int,
        seed: int,
        text: str = "mixed",
        chain_share: float = 0.5,
        rows_seed: int | str | None = None,
        triggers: int = 12,
        opening: str = SYSTEM_PREFIX,
    ) -> None:
        """Rows that open with ``opening``; ``seed`` fixes the bigram language (``triggers`` trigger tokens).

        ``seed`` also draws the rows unless ``rows_seed`` is given.
        """
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.length = length
        self.rng = random.Random(seed if rows_seed is None else rows_seed)
        self.high_entropy = text != "grammar"
        ordinary = sorted(self.tokenizer.get_vocab(with_added_tokens=False).values())
        self.chain = BigramBackcopy(ordinary, seed, triggers=triggers) if text == "backcopy" else None
        self.chain_share = chain_share
        self.cache: dict[str, list[int]] = {}
        self.prefix = self.encode(opening)
        self.header = self.encode(ASSISTANT_HEADER)

    def encode(self, text: str) -> list[int]:
        if text not in self.cache:
            self.cache[text] = self.tokenizer.encode(text).ids
        return self.cache[text]

    def row(self) -> list[int]:
        writer = StoryWriter(self.rng, self.high_entropy)
        tokens, space, in_user = list(self.prefix), "", True
        user_end = self.length * self.rng.uniform(0.5, 0.9)
        while len(tokens) <= self.length:
            if in_user and len(tokens) >= user_end:
                tokens += self.header
                space, in_user = "", False
                continue
            if self.chain is not None and self.rng.random() < self.chain_share:
                tokens += self.chain.stream(self.rng, self.rng.randint(8, 32))
            else:
                tokens += self.encode(space + writer.sentence())
            space = " "
        return tokens[: self.length + 1]

    def batch(self, size: int) -> torch.Tensor:
        return torch.tensor([self.row() for _ in range(size)], dtype=torch.long)


def held_out_samples(tokenizer_dir: Path, count: int, length: int) -> list:
    """The demo's own eval conversations (held-out stories) as attention samples."""
    from focusft.analysis.sample import sample_from_row
    from focusft.demo.task import generate
    from focusft.tiny import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer(tokenizer_dir)
    rows = generate("eval", count, length, tokenizer, seed=12345)
    return [sample_from_row(row, tokenizer, f"held-out demo story {i}") for i, row in enumerate(rows)]


def sink_mass(model: torch.nn.Module, samples: list) -> tuple[float, list[float]]:
    """Mean sink mass over ``samples`` (causal mask) and its mean per layer."""
    from focusft.analysis.measure import decoder_forward, measure_attention

    per_layer = []
    model.eval()
    for sample in samples:
        metrics = measure_attention(model.layers, decoder_forward(model), sample, "causal", device="cpu")
        per_layer.append(metrics.sink_mass_per_layer())
    model.train()
    layers = [mean(values) for values in zip(*per_layer)]
    return mean(layers), layers


def head_sink_mass(model: torch.nn.Module, tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``[layers, heads]``: share of the attention of ``queries`` (positions in ``tokens: [s]``) on keys [0:5].

    Causal mask, mean over the queries; probabilities recomputed from each layer's input as
    :mod:`focusft.analysis.probabilities` does.
    """
    shares = []
    causal = torch.arange(tokens.shape[0])[None, :] <= queries[:, None]

    def hook(attn: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        q, k = queries_and_keys(attn, args[0], kwargs.get("input_pos"))
        scores = torch.einsum("hqd,hkd->hqk", q[:, queries].float(), k.float()) * q.shape[-1] ** -0.5
        probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        shares.append(probs[..., :SINK_TOKENS].sum(dim=-1).mean(dim=-1))

    handles = [layer.attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in model.layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(tokens[None])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return torch.stack(shares)


def per_head_record(prefix: str, per_head: torch.Tensor) -> dict:
    """The log's fields for a ``[layers, heads]`` sink mass: mean, largest head and every head."""
    return {
        f"{prefix}sink_mass_mean_heads": per_head.mean().item(),
        f"{prefix}sink_mass_max_head": per_head.max().item(),
        f"{prefix}sink_mass_per_head": [[round(v, 5) for v in layer] for layer in per_head.tolist()],
    }


def pretrain(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    out: Path = args.out_dir
    config = TinyQwenConfig(
        num_layers=args.layers, embed_dim=args.dim, intermediate_dim=2 * args.dim, num_heads=args.heads,
        num_kv_heads=max(1, args.heads // 2),
    )  # fmt: skip
    write_tiny_tokenizer(out, config.vocab_size)
    tokenizer_file = out / "tokenizer.json"
    opening = OPENINGS[args.opening]
    language = {"triggers": args.triggers, "opening": opening}
    corpus = Corpus(tokenizer_file, args.seq_len, args.seed, args.text, args.chain_share, **language)
    samples = held_out_samples(out, args.measure_samples, args.measure_tokens)
    held_out = Corpus(
        tokenizer_file, args.seq_len, args.seed, args.text, args.chain_share, f"held-out|{args.seed}", **language
    )
    text_rows = held_out.batch(args.measure_rows)[:, : args.seq_len]
    text_queries = torch.arange(args.text_query_from, args.seq_len)
    model = seeded_tiny_qwen2_5(args.seed, **asdict(config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    log = (out / "pretrain_log.jsonl").open("w")
    log.write(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "model": asdict(config)}) + "\n")
    start, losses = time.time(), []
    last = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    for step in range(last + 1):
        if step % args.measure_every == 0 or step == last:
            mass, layers = sink_mass(model, samples)
            record = {
                "step": step,
                "tokens": step * args.batch_size * args.seq_len,
                "loss": mean(losses) if losses else None,
                "sink_mass": mass,
                "sink_mass_per_layer": layers,
                **per_head_record(
                    "",
                    torch.stack([head_sink_mass(model, s.tokens, s.response.nonzero()[:, 0]) for s in samples]).mean(0),
                ),
                **per_head_record(
                    "text_", torch.stack([head_sink_mass(model, row, text_queries) for row in text_rows]).mean(0)
                ),
                "seconds": round(time.time() - start, 1),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            write_model_files(out, model, config)  # the latest weights: a usable base at any time
            print(json.dumps(record), flush=True)
            losses = []
        if step == last:
            break
        batch = corpus.batch(args.batch_size)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    log.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=3000, help="length of the learning-rate schedule")
    parser.add_argument("--stop-after", type=int, help="stop at this step (the schedule still spans --steps)")
    parser.add_argument(
        "--text",
        choices=["grammar", "mixed", "backcopy"],
        default="mixed",
        help="grammar: sentences of a small grammar only; mixed: also words in random order (higher entropy); "
        "backcopy: mixed sentences and token chains of a bigram language with back-copy triggers",
    )
    parser.add_argument(
        "--chain-share",
        type=float,
        default=0.5,
        help="backcopy: share of bigram chains among the pieces",
    )
    parser.add_argument(
        "--triggers",
        type=int,
        default=12,
        help="backcopy: number of trigger tokens in the bigram language (each is followed by a copy of the token "
        "before it); the fewer, the longer the heads that copy stay idle",
    )
    parser.add_argument(
        "--opening",
        choices=sorted(OPENINGS),
        default="header",
        help="header: every row opens with the demo's system header (its first user turn's opening tokens); "
        "first-token: with its first token <|im_start|> only, so what follows varies from the second token on",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--layers", type=int, default=TinyQwenConfig.num_layers)
    parser.add_argument("--dim", type=int, default=TinyQwenConfig.embed_dim)
    parser.add_argument("--heads", type=int, default=TinyQwenConfig.num_heads)
    parser.add_argument("--measure-every", type=int, default=250)
    parser.add_argument("--measure-samples", type=int, default=4)
    parser.add_argument("--measure-tokens", type=int, default=256)
    parser.add_argument("--measure-rows", type=int, default=8, help="held-out pre-training rows to measure on")
    parser.add_argument(
        "--text-query-from", type=int, default=32, help="pre-training rows: measure queries at positions >= this"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"Wrote the pre-trained base to {pretrain(args)}")


if __name__ == "__main__":
    main()
