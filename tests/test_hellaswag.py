"""hellaswag.py: hand-computed acc_norm / acc on a fixture in the original HellaSwag format."""
import json
import math
import os
import sys

import pytest
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import hellaswag  # noqa: E402
from conftest import run_py  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "hellaswag_tiny.jsonl")
LN2 = math.log(2.0)


class WordTokenizer:
    """Whitespace words: good=0, ok=1, bad=2, meh=3, any other word=4."""
    WORDS = {"good": 0, "ok": 1, "bad": 2, "meh": 3}

    def encode(self, text):
        return [self.WORDS.get(w, 4) for w in text.split()]


class UnigramModel(nn.Module):
    """Next-token distribution independent of context: p = (1/2, 1/4, 1/8, 1/16, 1/16), so a token's
    loss is (1, 2, 3, 4, 4) * ln 2. Returns (logits (B, T, 5), None) like GPT."""

    def __init__(self):
        super().__init__()
        self.logp = nn.Parameter(torch.log(torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 16],
                                                         dtype=torch.float64)))

    def forward(self, idx):
        return self.logp.expand(idx.shape[0], idx.shape[1], 5).float(), None


class BigramModel(nn.Module):
    """logits[b, t] = table[idx[b, t]] (scores token t+1 from token t)."""

    def __init__(self, V, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(V, V, generator=g) * 2)

    def forward(self, idx):
        return self.table[idx], None


# Per ending, losses in units of ln 2 (good 1, ok 2, bad 3, meh 4):
#   ex1 label 0: sums (3, 2, 3, 7)  means (1, 2, 3, 3.5)   acc_norm -> 0 (right), acc -> 1 (wrong)
#   ex2 label 3: sums (4, 6, 3, 2)  means (2, 3, 1.5, 2)   acc_norm -> 2 (wrong), acc -> 3 (right)
#   ex3 label 1: sums (3, 1, 2, 4)  means (3, 1, 2, 4)     both -> 1 (right)
#   ex4 label 0: sums (4, 2, 7, 7)  means (1, 2, 3.5, 7/3) acc_norm -> 0 (right), acc -> 1 (wrong)
# => acc_norm 3/4, acc 2/4
HAND_SUMS = [[3, 2, 3, 7], [4, 6, 3, 2], [3, 1, 2, 4], [4, 2, 7, 7]]
HAND_MEANS = [[1, 2, 3, 3.5], [2, 3, 1.5, 2], [3, 1, 2, 4], [1, 2, 3.5, 7 / 3]]


def test_fixture_is_original_format():
    with open(FIXTURE) as f:
        rows = [json.loads(l) for l in f]
    assert len(rows) == 4
    for r in rows:
        assert {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "split", "split_type", "label",
                "endings", "source_id"} <= set(r)
        assert r["ctx"] == r["ctx_a"] + " " + r["ctx_b"] and len(r["endings"]) == 4


def test_hand_computed_losses_and_accuracy():
    examples = hellaswag.load_examples(FIXTURE)
    model, tok = UnigramModel(), WordTokenizer()
    for ex, sums, means in zip(examples, HAND_SUMS, HAND_MEANS):
        s, m, label = hellaswag.score_example(model, ex, "cpu", tok)
        torch.testing.assert_close(s, torch.tensor(sums, dtype=torch.float32) * LN2)
        torch.testing.assert_close(m, torch.tensor(means, dtype=torch.float32) * LN2)
        assert label == ex["label"]
    assert hellaswag.evaluate(model, examples, "cpu", tok) == (3, 2, 4)


def test_sharding_sums_to_one_rank():
    examples = hellaswag.load_examples(FIXTURE)
    model, tok = UnigramModel(), WordTokenizer()
    parts = [hellaswag.evaluate(model, examples, "cpu", tok, rank=r, world_size=2) for r in range(2)]
    assert parts == [(2, 1, 2), (1, 1, 2)]  # rank 0: ex1, ex3; rank 1: ex2, ex4
    assert tuple(map(sum, zip(*parts))) == (3, 2, 4)
    parts3 = [hellaswag.evaluate(model, examples, "cpu", tok, rank=r, world_size=3) for r in range(3)]
    assert tuple(map(sum, zip(*parts3))) == (3, 2, 4)


def test_bigram_matches_bruteforce():
    """Shift and mask: each ending token j is scored by the logits at position j-1 of ctx + ending."""
    examples = hellaswag.load_examples(FIXTURE)
    model, tok = BigramModel(5), WordTokenizer()
    for ex in examples:
        s, m, _ = hellaswag.score_example(model, ex, "cpu", tok)
        ctx = tok.encode(ex["ctx"])
        for i, e in enumerate(ex["endings"]):
            row = ctx + tok.encode(" " + e)
            losses = []
            for j in range(len(ctx), len(row)):
                logp = torch.log_softmax(model.table[row[j - 1]].detach().double(), dim=-1)
                losses.append(-logp[row[j]].item())
            assert s[i].item() == pytest.approx(sum(losses), rel=1e-5)
            assert m[i].item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_context_cut_to_block_size_and_string_label():
    ex = dict(ctx="a b c d e f g", endings=["good", "ok ok", "bad", "meh"], label="2")
    tokens, mask, label = hellaswag.render_example(ex, WordTokenizer(), max_len=4)
    assert label == 2 and tokens.shape == (4, 4)
    assert mask.tolist() == [[0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 1, 0]]
    with pytest.raises(ValueError, match="block_size"):
        hellaswag.render_example(ex, WordTokenizer(), max_len=2)


def test_model_mode_restored():
    m = UnigramModel().train()
    hellaswag.evaluate(m, hellaswag.load_examples(FIXTURE), "cpu", WordTokenizer())
    assert m.training


def test_real_gpt_padding_does_not_change_losses():
    """With the project's GPT (causal), zero-padding the shorter rows leaves each ending's loss equal
    to scoring that row alone."""
    model_mod = pytest.importorskip("model", reason="model.py not present yet")
    import tokenizer as tk
    torch.manual_seed(0)
    chars = sorted(set("".join(open(FIXTURE).read())))
    tok = tk.CharTokenizer(chars)
    cfg = model_mod.GPTConfig(block_size=128, vocab_size=len(chars), n_layer=2, n_head=2, n_embd=32)
    model = model_mod.GPT(cfg).eval()
    ex = hellaswag.load_examples(FIXTURE)[3]
    s, m, _ = hellaswag.score_example(model, ex, "cpu", tok, max_len=128)
    ctx = tok.encode(ex["ctx"])
    for i, e in enumerate(ex["endings"]):
        row = torch.tensor([ctx + tok.encode(" " + e)])
        with torch.no_grad():
            logits = model(row)[0][0, :-1]
        xe = torch.nn.functional.cross_entropy(logits, row[0, 1:], reduction="none")[len(ctx) - 1:]
        torch.testing.assert_close(s[i], xe.sum(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m[i], xe.mean(), rtol=1e-5, atol=1e-5)
    n_norm, n, total = hellaswag.evaluate(model, hellaswag.load_examples(FIXTURE), "cpu", tok)
    assert total == 4 and 0 <= n_norm <= 4 and 0 <= n <= 4


@pytest.mark.slow
def test_bad_input(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"ctx": "x", "endings": ["a", "b"], "label": 0}) + "\n")
    with pytest.raises(ValueError, match="4 endings"):
        hellaswag.load_examples(str(bad))
    r = run_py([sys.executable, os.path.join(ROOT, "hellaswag.py"), "--model", "gpt2",
                        "--data", str(tmp_path / "missing.jsonl")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr == f"error: --data {tmp_path / 'missing.jsonl'}: no such file\n"
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_trainer_hellaswag_lines_one_and_two_ranks(tmp_path):
    """train_gpt2.py with --hellaswag=<fixture>: the step-0 line equals hellaswag.evaluate on the
    same initial model (rebuilt from the trainer's own config and seed), and 2 gloo ranks (each
    scoring half the examples, counts summed) log exactly the lines of 1 process."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import TINY, run_train
    import tokenizer
    import train_gpt2 as tg
    from model import GPT
    text = tmp_path / "text.txt"
    text.write_text("".join(f"Paragraph {i}: the good, the ok and the bad met the meh at noon. "
                            f"It was {'good' if i % 3 else 'bad'} news for number {i * 7}.\n"
                            for i in range(400)))
    r = run_py([sys.executable, os.path.join(ROOT, "fineweb.py"), "--source", str(text),
                        "--tokenizer", "gpt2", "--out", str(tmp_path / "data"), "--quiet",
                        "--procs", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    args = TINY + [f"--dataset={tmp_path / 'data'}", "--vocab_size=50304", "--block_size=32",
                   "--T=32", "--B=2", "--total_batch_size=128", "--max_steps=3", "--eval_interval=2",
                   "--eval_iters=1", "--sample_interval=0", "--size_interval=0",
                   f"--hellaswag={FIXTURE}", f"--img_dir={tmp_path / 'img'}"]
    lines = {}
    for n in (1, 2):
        p = run_train(args + [f"--log_dir={tmp_path / f'log{n}'}", "--run_name=hs"],
                      nproc=n if n > 1 else None, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        lines[n] = [l for l in (tmp_path / f"log{n}" / "hs.txt").read_text().splitlines()
                    if " hellaswag " in l]
    assert [l.split(" hellaswag ")[0] for l in lines[1]] == ["@ 0", "@ 2"]
    assert lines[1] == lines[2]
    cfg, _ = tg.parse_config(args)
    torch.manual_seed(cfg["seed"])
    model = GPT(tg.model_config(cfg))
    n_norm, n_plain, n = hellaswag.evaluate(model, hellaswag.load_examples(FIXTURE), "cpu",
                                            tokenizer.get_tokenizer("gpt2"))
    assert n == 4
    assert lines[1][0] == f"@ 0 hellaswag {n_norm / n:.4f}, acc: {n_plain / n:.4f}, total: {n}"
