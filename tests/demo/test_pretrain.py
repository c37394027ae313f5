"""The demo base's pre-training text and script, and the shipped base."""

import json
import random
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from focusft.analysis.segments import SINK_TOKENS
from focusft.demo import shipped_base
from focusft.demo.pretrain import (
    ASSISTANT_HEADER,
    OPENINGS,
    SYSTEM_PREFIX,
    BigramBackcopy,
    Corpus,
    StoryWriter,
    head_sink_mass,
    held_out_samples,
    main,
)
from focusft.eval.checkpoint import read_checkpoint
from focusft.tiny import tiny_qwen2_5, write_tiny_tokenizer


def test_back_references_copy_the_place_the_person_last_went_to():
    writer = StoryWriter(random.Random(3))
    where, seen = {}, 0
    for _ in range(400):
        sentence = writer.sentence()
        move = re.fullmatch(r"(\w+) (?:went|moved|travelled|journeyed) to the (\w+)\.", sentence)
        back = re.fullmatch(r"[\w ]+, (\w+) (?:left|stayed in|cleaned|waited in|looked around) the (\w+)\.", sentence)
        if move:
            where[move[1]] = move[2]
        elif back:
            assert where[back[1]] == back[2]
            seen += 1
        assert "Where is" not in sentence  # never the demo's question
    assert seen > 20


def test_rows_open_with_the_fixed_header_and_have_at_most_one_assistant_turn(tmp_path):
    write_tiny_tokenizer(tmp_path)
    corpus = Corpus(tmp_path / "tokenizer.json", 128, seed=0)
    prefix, header = corpus.encode(SYSTEM_PREFIX), corpus.encode(ASSISTANT_HEADER)
    batch = corpus.batch(32)
    assert batch.shape == (32, 129)
    turns = []
    for row in batch.tolist():
        assert row[: len(prefix)] == prefix
        turns.append(sum(row[i : i + len(header)] == header for i in range(len(row))))
    assert set(turns) <= {0, 1} and sum(turns) > 16  # a row may end before its assistant turn


def test_a_short_run_writes_a_loadable_base_and_its_sink_log(tmp_path):
    out = tmp_path / "base"
    main([str(out), "--steps", "2", "--measure-every", "1", "--measure-samples", "1", "--seq-len", "64",
          "--batch-size", "2", "--threads", "1"])  # fmt: skip
    records = [json.loads(line) for line in (out / "pretrain_log.jsonl").read_text().splitlines()]
    assert records[0]["settings"]["steps"] == "2"
    assert [r["step"] for r in records[1:]] == [0, 1, 2]
    for record in records[1:]:
        assert 0 < record["sink_mass"] < 1 and len(record["sink_mass_per_layer"]) == 4
        # Per head, on the demo conversations and on held-out pre-training rows: 4 layers x 4 heads.
        assert record["sink_mass_mean_heads"] == pytest.approx(record["sink_mass"], rel=1e-5)
        for prefix in ("", "text_"):
            heads = record[f"{prefix}sink_mass_per_head"]
            assert len(heads) == 4 and all(len(layer) == 4 for layer in heads)
            assert 0 < record[f"{prefix}sink_mass_mean_heads"] <= record[f"{prefix}sink_mass_max_head"] < 1
    assert read_checkpoint(out).num_layers == 4
    assert not shipped_base.missing_files(out)


def test_the_shipped_base_is_complete_and_installs(tmp_path):
    assert not shipped_base.missing_files()
    assert read_checkpoint(shipped_base.SHIPPED_BASE).num_layers == 4
    shipped_base.install(tmp_path / "copy")
    assert shipped_base.fingerprint(tmp_path / "copy") == shipped_base.fingerprint()
    missing = "FocuSFT demo error: the shipped base .* lacks config.json, model.safetensors"
    with pytest.raises(FileNotFoundError, match=missing):
        shipped_base.install(tmp_path / "again", base=tmp_path / "nowhere")


def test_held_out_rows_share_the_bigram_language_but_not_the_rows(tmp_path):
    write_tiny_tokenizer(tmp_path)
    train = Corpus(tmp_path / "tokenizer.json", 128, seed=0, text="backcopy", chain_share=1.0)
    held_out = Corpus(tmp_path / "tokenizer.json", 128, seed=0, text="backcopy", chain_share=1.0, rows_seed="other")
    assert held_out.chain.next == train.chain.next and held_out.chain.triggers == train.chain.triggers
    assert not torch.equal(held_out.batch(4), train.batch(4))


def test_head_sink_mass_is_the_share_of_attention_on_the_first_five_keys():
    torch.manual_seed(0)
    model = tiny_qwen2_5(num_layers=2, embed_dim=32, intermediate_dim=64, num_heads=4, num_kv_heads=2).eval()
    tokens = torch.randint(0, 1000, (40,))
    queries = torch.arange(10, 40)
    per_head = head_sink_mass(model, tokens, queries)
    assert per_head.shape == (2, 4)
    # Reference: layer 0's probabilities from the softmax of its own q·k with the causal mask.
    from focusft.analysis.probabilities import queries_and_keys

    x = model.layers[0].sa_norm(model.tok_embeddings(tokens[None]))
    q, k = queries_and_keys(model.layers[0].attn, x, None)
    scores = (q @ k.transpose(1, 2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~torch.ones(40, 40, dtype=torch.bool).tril(), float("-inf"))
    expected = scores.softmax(dim=-1)[:, queries, :5].sum(dim=-1).mean(dim=-1)
    assert per_head[0].tolist() == pytest.approx(expected.tolist(), rel=1e-4)


def test_back_copy_triggers_repeat_the_token_before_them():
    chain = BigramBackcopy(list(range(40)), seed=1)
    stream = chain.stream(random.Random(2), 2000)
    copies = [i for i in range(1, len(stream) - 1) if stream[i] in chain.triggers]
    assert len(copies) > 100
    assert all(stream[i + 1] == stream[i - 1] for i in copies)
    others = [(a, b) for a, b in zip(stream, stream[1:]) if a not in chain.triggers]
    assert all(b in chain.next[a] for a, b in others)  # elsewhere: the bigram only


def test_triggers_sets_the_number_of_trigger_tokens(tmp_path):
    write_tiny_tokenizer(tmp_path)
    assert len(Corpus(tmp_path / "tokenizer.json", 128, seed=0, text="backcopy").chain.triggers) == 12  # the default
    corpus = Corpus(tmp_path / "tokenizer.json", 128, seed=0, text="backcopy", chain_share=1.0, triggers=3)
    assert len(corpus.chain.triggers) == 3
    stream = corpus.chain.stream(random.Random(0), 20000)
    copies = [i for i in range(1, len(stream) - 1) if stream[i] in corpus.chain.triggers]
    assert copies and all(stream[i + 1] == stream[i - 1] for i in copies)


def test_first_token_opening_fixes_only_the_first_token(tmp_path):
    write_tiny_tokenizer(tmp_path)
    corpus = Corpus(tmp_path / "tokenizer.json", 128, seed=0, text="backcopy", opening=OPENINGS["first-token"])
    rows = corpus.batch(16)
    assert rows.shape == (16, 129) and corpus.prefix == corpus.encode("<|im_start|>") and len(corpus.prefix) == 1
    assert (rows[:, 0] == corpus.prefix[0]).all() and len(set(rows[:, 1].tolist())) > 1


def test_backcopy_rows_mix_chains_and_stories_after_the_fixed_header(tmp_path):
    write_tiny_tokenizer(tmp_path)
    corpus = Corpus(tmp_path / "tokenizer.json", 256, seed=0, text="backcopy")
    prefix = corpus.encode(SYSTEM_PREFIX)
    rows = corpus.batch(8).tolist()
    assert all(row[: len(prefix)] == prefix for row in rows)
    text = corpus.tokenizer.decode(rows[0], skip_special_tokens=False)
    assert "." in text and any(t in corpus.chain.triggers for row in rows for t in row[len(prefix) :])


def test_the_shipped_base_has_the_sink_mass_its_log_reports():
    """Recomputed independently: transformers' eager attention probabilities of the shipped weights."""
    lines = (shipped_base.SHIPPED_BASE / "pretrain_log.jsonl").read_text().splitlines()
    settings, last = json.loads(lines[0])["settings"], json.loads(lines[-1])
    samples = held_out_samples(
        shipped_base.SHIPPED_BASE, int(settings["measure_samples"]), int(settings["measure_tokens"])
    )
    model = AutoModelForCausalLM.from_pretrained(
        shipped_base.SHIPPED_BASE, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    per_sample = []
    for sample in samples:
        with torch.no_grad():
            attentions = model(sample.tokens[None], output_attentions=True).attentions  # [1, heads, s, s] per layer
        # Share of each response query's attention on keys [0:5]: mean over heads and those queries, per layer.
        layers = [a[0].mean(dim=0)[sample.response][:, :SINK_TOKENS].sum(dim=1).mean() for a in attentions]
        per_sample.append(torch.stack(layers))
    per_layer = torch.stack(per_sample).mean(dim=0)
    assert per_layer.tolist() == pytest.approx(last["sink_mass_per_layer"], rel=1e-4, abs=1e-6)
    assert per_layer.mean().item() == pytest.approx(last["sink_mass"], rel=1e-4)
