"""export_hf.py: transformers' GPT2LMHeadModel on the exported directory computes our logits.

Round trips (atol 1e-4): unshared, shared (one block copied into every layer), --depth < n_layer
(the exit head after layer l), and the GPT-2-equivalent variants (no LN affine, no biases,
sinusoidal / no positions). Variants transformers cannot represent: one error line naming the
field, exit 2, nothing written.
"""
import copy
import dataclasses
import json
import os
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

import checkpoint
from conftest import ROOT, flip_bit_in_largest_tensor, run_py
import export_hf
from model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

TINY = dict(n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=96)


def save_ckpt(path, tokenizer="char", seed=0, **cfg):
    """A checkpoint in the trainer's format (the fields the loaders read) of a random tiny GPT,
    with perturbed LayerNorms and biases so that no parameter is at its init value."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **cfg}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    tok = {"name": tokenizer, "chars": None, "vocab_size": model.config.vocab_size, "eot": None}
    obj = {"model": model.state_dict(), "model_config": dataclasses.asdict(model.config),
           "train_config": {}, "step": 0, "optimizer": {}, "loader": {}, "rng": [],
           "tokenizer": tok}
    obj["digest"] = checkpoint.digest(obj)
    torch.save(obj, path)
    return checkpoint.load_model(path)[0]


def export(argv):
    """export_hf.main(argv) -> exit code (errors exit through SystemExit)."""
    try:
        return export_hf.main(argv)
    except SystemExit as e:
        return e.code


def ours_at_depth(model, idx, depth):
    """Our logits of the exit head after layer `depth`: the same model run with n_layer=depth
    (blocks are looked up by depth, so the first `depth` blocks run, then ln_f and lm_head)."""
    ref = copy.deepcopy(model)
    ref.config.n_layer = depth
    with torch.no_grad():
        return ref(idx)[0]


def hf_logits(out_dir, idx):
    hf = transformers.GPT2LMHeadModel.from_pretrained(out_dir).eval()
    with torch.no_grad():
        return hf(idx).logits


CASES = {   # name: (GPTConfig overrides, --depth)
    "unshared": ({}, None),
    "shared": ({"share_weights": True}, None),
    "depth-2-of-4": ({}, 2),
    "shared-depth-3-of-4": ({"share_weights": True}, 3),
    "ln-without-params-no-bias": ({"ln_learnable": False, "bias": False}, None),
    "sinusoidal": ({"pos_encoding": "sinusoidal"}, None),
    "no-positions": ({"pos_encoding": "none"}, 2),
    "res": ({"block_type": "res"}, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_logits(tmp_path, case):
    overrides, depth = CASES[case]
    ckpt = str(tmp_path / "ckpt.pt")
    model = save_ckpt(ckpt, **overrides)
    out = str(tmp_path / "hf")
    assert export(["--ckpt", ckpt, "--out", out] + ([] if depth is None else
                                                     ["--depth", str(depth)])) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    L = depth or TINY["n_layer"]
    assert (cfg["model_type"], cfg["n_layer"], cfg["architectures"]) == ("gpt2", L, ["GPT2LMHeadModel"])
    torch.manual_seed(1)
    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]))
    ours = ours_at_depth(model, idx, L)
    theirs = hf_logits(out, idx)
    assert theirs.shape == ours.shape == (2, TINY["block_size"], TINY["vocab_size"])
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # independent of the reference above: the model's own per-layer loss at layer L
    with torch.no_grad():
        stats = model(idx[:, :-1], idx[:, 1:], return_stats=True).stats
    ce = F.cross_entropy(theirs[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
    assert abs(float(ce) - float(stats["layer_losses"][L - 1])) < 1e-4


def test_shared_weights_become_identical_copies(tmp_path):
    ckpt = str(tmp_path / "ckpt.pt")
    save_ckpt(ckpt, share_weights=True)
    out = str(tmp_path / "hf")
    assert export(["--ckpt", ckpt, "--out", out]) == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(out)
    h = hf.transformer.h
    assert len(h) == TINY["n_layer"]
    for l in range(1, len(h)):
        for (n0, p0), (n1, p1) in zip(h[0].named_parameters(), h[l].named_parameters()):
            assert n0 == n1 and torch.equal(p0, p1) and p0.data_ptr() != p1.data_ptr()


def test_pretrained_round_trip_is_exact(tmp_path):
    """Our GPT.from_pretrained reads the exported directory back to the same state dict."""
    ckpt = str(tmp_path / "ckpt.pt")
    model = save_ckpt(ckpt)
    out = str(tmp_path / "hf")
    assert export(["--ckpt", ckpt, "--out", out]) == 0
    back = GPT.from_pretrained(out)
    sd, sd_back = model.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    for k in sd:
        assert torch.equal(sd[k], sd_back[k]), k


@pytest.mark.parametrize("overrides,args,field", [
    ({"pos_encoding": "rope"}, [], "pos_encoding='rope'"),
    ({"block_type": "res-attn2"}, [], "block_type='res-attn2'"),
    ({"block_type": "ln-x-attn"}, [], "block_type='ln-x-attn'"),
    ({}, ["--depth", "5"], "--depth must be in 1..4"),
    ({}, ["--depth", "0"], "argument --depth: must be >= 1, got 0"),
])
def test_unrepresentable_is_one_error_line(tmp_path, capsys, overrides, args, field):
    ckpt = str(tmp_path / "ckpt.pt")
    save_ckpt(ckpt, **overrides)
    out = tmp_path / "hf"
    assert export(["--ckpt", ckpt, "--out", str(out)] + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and field in err, err
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]        # no --out, no temp dir


def test_bad_paths(tmp_path, capsys):
    ckpt = str(tmp_path / "ckpt.pt")
    save_ckpt(ckpt)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert export(["--ckpt", ckpt, "--out", str(full)]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert os.listdir(full) == ["keep.txt"]
    assert export(["--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"error: --ckpt {tmp_path / 'nope.pt'}: no such file\n"
    flipped = str(tmp_path / "flipped.pt")
    shutil.copyfile(ckpt, flipped)
    flip_bit_in_largest_tensor(flipped)
    assert export(["--ckpt", flipped, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"error: checkpoint {flipped} is unreadable "
                                       "(content digest mismatch (corrupted data))\n")
    assert not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    empty.mkdir()                                   # an empty directory is filled
    assert export(["--ckpt", ckpt, "--out", str(empty)]) == 0
    assert "model.safetensors" in os.listdir(empty)


@pytest.mark.slow
def test_bpe_tables_equal_the_original_gpt2_files():
    """Merges derived from tiktoken's ranks == OpenAI's vocab.bpe; vocab == encoder.json
    (both lie in tiktoken's cache, seeded by setup.sh)."""
    import hashlib
    import tokenizer
    vocab, merges = export_hf.gpt2_bpe_tables()
    cache = os.environ["TIKTOKEN_CACHE_DIR"]
    path = {n: os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())
            for n, (url, _) in tokenizer._GPT2_FILES.items()}
    with open(path["encoder.json"], encoding="utf-8") as f:
        assert json.load(f) == vocab
    with open(path["vocab.bpe"], encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0].startswith("#version")
    assert [tuple(l.split(" ")) for l in lines[1:] if l] == merges
    assert len(vocab) == 50257 and len(merges) == 50000


SAMPLES = [
    "Hello, I'm a language model,",
    "  leading spaces, trailing spaces   ",
    "Numbers 1234567 and 3.14159; don't, won't, they'll, we've",
    "Unicode: héllo wörld, naïve café, 你好世界, emoji 🤖🎉, ∑ x² ≤ ∞",
    "Tabs\tand\nnewlines\n\n\nand \r\n windows line ends",
    "code: def f(x):\n    return x ** 2  # square",
]


@pytest.mark.slow
def test_gpt2_tokenizer_files_encode_like_tiktoken(tmp_path):
    import tokenizer
    ckpt = str(tmp_path / "ckpt.pt")
    save_ckpt(ckpt, tokenizer="gpt2", n_layer=2, vocab_size=50304)
    out = str(tmp_path / "hf")
    assert export(["--ckpt", ckpt, "--out", out]) == 0
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "vocab.json", "merges.txt"} <= files
    enc = tokenizer.gpt2_encoding()
    for tok in (transformers.AutoTokenizer.from_pretrained(out),
                transformers.GPT2Tokenizer(vocab=os.path.join(out, "vocab.json"),
                                           merges=os.path.join(out, "merges.txt"))):
        for text in SAMPLES:
            ids = tok(text)["input_ids"]
            assert ids == enc.encode_ordinary(text), text
            assert tok.decode(ids) == text
        assert tok.eos_token_id == 50256
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["eos_token_id"], cfg["vocab_size"], cfg["n_positions"]) == (50256, 50304, 32)


@pytest.mark.slow
def test_cli_process(tmp_path):
    """The real script in its own process: exit 2 with one stderr line for rope; 0 otherwise."""
    ckpt = str(tmp_path / "ckpt.pt")
    save_ckpt(ckpt, pos_encoding="rope")
    r = run_py([sys.executable, os.path.join(ROOT, "export_hf.py"), "--ckpt", ckpt,
                        "--out", str(tmp_path / "hf")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1:] == [
        "error: pos_encoding='rope' has no GPT2LMHeadModel equivalent "
        "(exportable: learned, sinusoidal, none)"]
    assert not (tmp_path / "hf").exists()
