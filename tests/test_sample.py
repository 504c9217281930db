"""sample.py on a real trainer checkpoint: greedy output equals model.generate (with and without
early exit), --show_depth markers, run-name lookup, and one-line errors for bad input."""
import os
import re
import sys

import pytest
import torch

from conftest import ROOT, run_train, tiny_args, run_py

import sample
from model import GPT

RUN = "sample_tiny"


@pytest.fixture(scope="module")
def ckpt(char_data, tmp_path_factory):
    """A shared-weight 3-layer char model with a head per layer, trained 6 steps with early exit
    on (its config says early_exit=True; sample.py decodes full depth unless told otherwise)."""
    log = str(tmp_path_factory.mktemp("samplelog"))
    r = run_train(tiny_args(char_data, log, RUN, "--n_layer=3", "--share_weights=True",
                            "--layer_heads=True", "--exit_loss=all-layers", "--early_exit=True",
                            "--exit_threshold=0.2"))
    assert r.returncode == 0, r.stderr
    path = os.path.join(log, RUN, "ckpt_000005.pt")
    assert os.path.isfile(path)
    return path


def run_main(capsys, *argv):
    rc = sample.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def reference(path, prompt, n, **kw):
    """Text of model.generate on the same checkpoint (greedy; full depth unless kw say else)."""
    model, tok = sample.load_from_ckpt(path)
    assert model.config.early_exit
    model.config.early_exit = False
    idx = sample.encode_prompt(tok, prompt, model.config.block_size)
    out = model.generate(idx, n, temperature=0, **kw)
    return sample.decode(tok, out[0].tolist()), model


@pytest.mark.parametrize("threshold", [None, 0.0, 0.3])
def test_greedy_equals_generate(ckpt, capsys, threshold):
    extra = [] if threshold is None else ["--exit_threshold", str(threshold)]
    rc, out, err = run_main(capsys, "--ckpt", ckpt, "--prompt", "abc", "--temperature", "0",
                            "--num_samples", "1", "--max_new_tokens", "12", *extra)
    assert rc == 0, err
    kw = {} if threshold is None else {"exit_threshold": threshold}
    want, _ = reference(ckpt, "abc", 12, **kw)
    assert out == want + "\n---------------\n"


@pytest.mark.parametrize("draft", [1, 2])
def test_self_speculative_equals_full_depth_greedy(ckpt, capsys, draft):
    rc, out, err = run_main(capsys, "--ckpt", ckpt, "--prompt", "abc", "--temperature", "0",
                            "--num_samples", "1", "--max_new_tokens", "12",
                            "--draft_layers", str(draft), "--draft_tokens", "3")
    assert rc == 0, err
    want, _ = reference(ckpt, "abc", 12)
    assert out == want + "\n---------------\n"
    assert want == reference(ckpt, "abc", 12, draft_layers=draft, draft_tokens=3)[0]


def test_show_depth_plain_markers(ckpt, capsys):
    """Not a terminal: every new token is `token[d]`; the tokens are generate's greedy ones and
    the depths average to generate's own avg_exit_depth (1 at threshold 0: layer 1 exits all)."""
    for thr, n in ((0.3, 10), (0.0, 6)):
        rc, out, err = run_main(capsys, "--ckpt", ckpt, "--prompt", "abc", "--temperature", "0",
                                "--num_samples", "1", "--max_new_tokens", str(n),
                                "--exit_threshold", str(thr), "--show_depth")
        assert rc == 0, err
        body, avg_line, sep = out.rstrip("\n").split("\n")
        assert sep == "---------------"
        assert body.startswith("abc")
        marks = re.findall(r"(.)\[(\d+)\]", body[3:], flags=re.S)
        assert len(marks) == n
        want, model = reference(ckpt, "abc", n, exit_threshold=thr)
        assert "abc" + "".join(c for c, _ in marks) == want
        depths = [int(d) for _, d in marks]
        assert all(1 <= d <= 3 for d in depths)
        assert sum(depths) / n == pytest.approx(model.last_generate_stats["avg_exit_depth"])
        if thr == 0.0:
            assert depths == [1] * n
        assert avg_line == f"(average exit layer {sum(depths) / n:.2f} of 3)"


def test_colour_render():
    """On a terminal each token is wrapped in the colour of its depth (shallow blue, deep red)."""
    from tokenizer import CharTokenizer
    tok = CharTokenizer("abc")
    s = sample.render(tok, [0, 1, 2], 1, [1, 3], 3, colour=True)
    assert s == "a\033[34mb\033[0m\033[35mc\033[0m"
    assert sample.render(tok, [0, 1, 2], 1, [1, 3], 3, colour=False) == "ab[1]c[3]"


def test_run_name_takes_latest(ckpt, capsys):
    log_dir = os.path.dirname(os.path.dirname(ckpt))
    assert sample.resolve_ckpt(RUN, log_dir) == ckpt
    assert sample.resolve_ckpt(os.path.dirname(ckpt), "nowhere") == ckpt
    rc, out, _ = run_main(capsys, "--ckpt", RUN, "--log_dir", log_dir, "--prompt", "ab",
                          "--seed", "3", "--max_new_tokens", "5", "--num_samples", "2")
    assert rc == 0 and out.count("---------------\n") == 2


def test_seed_reproducible(ckpt, capsys):
    args = ["--ckpt", ckpt, "--prompt", "ab", "--max_new_tokens", "20", "--num_samples", "2"]
    a = run_main(capsys, *args, "--seed", "1")[1]
    b = run_main(capsys, *args, "--seed", "1")[1]
    c = run_main(capsys, *args, "--seed", "2")[1]
    assert a == b and a != c


def one_error(capsys, *argv):
    try:
        rc = sample.main(list(argv))
    except SystemExit as e:          # refused while parsing the arguments
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_checkpoint(capsys, tmp_path):
    assert "checkpoint not found: nope" in one_error(capsys, "--ckpt", "nope", "--log_dir", str(tmp_path))
    (tmp_path / "emptyrun").mkdir()
    assert "no checkpoint ckpt_*.pt in" in one_error(capsys, "--ckpt", "emptyrun",
                                                     "--log_dir", str(tmp_path))


def test_corrupt_checkpoint(ckpt, capsys, tmp_path):
    """A flipped bit inside tensor data (the digest notices) and a truncated file."""
    data = bytearray(open(ckpt, "rb").read())
    ck = torch.load(ckpt, weights_only=True)
    needle = ck["model"]["lm_head.weight"].numpy().tobytes()[:64]
    at = bytes(data).index(needle) + 17
    data[at] ^= 0x10
    flipped = tmp_path / "ckpt_000001.pt"
    flipped.write_bytes(bytes(data))
    assert one_error(capsys, "--ckpt", str(flipped)) == \
        f"error: checkpoint {flipped} is unreadable (content digest mismatch (corrupted data))"
    cut = tmp_path / "ckpt_000002.pt"
    cut.write_bytes(open(ckpt, "rb").read()[:5000])
    assert one_error(capsys, "--ckpt", str(cut)).startswith(f"error: checkpoint {cut} is unreadable (")


def test_bad_prompt_file(ckpt, capsys, tmp_path):
    msg = one_error(capsys, "--ckpt", ckpt, "--prompt", f"FILE:{tmp_path}/absent.txt")
    assert msg == f"error: cannot read prompt file '{tmp_path}/absent.txt': No such file or directory"
    p = tmp_path / "p.txt"
    p.write_text("ab\u20ac")
    assert "prompt: character '€' is not in the char vocabulary" in one_error(
        capsys, "--ckpt", ckpt, "--prompt", f"FILE:{p}")


def test_prompt_file_read(ckpt, capsys, tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("cab")
    rc, out, _ = run_main(capsys, "--ckpt", ckpt, "--prompt", f"FILE:{p}", "--temperature", "0",
                          "--num_samples", "1", "--max_new_tokens", "4")
    assert rc == 0 and out == reference(ckpt, "cab", 4)[0] + "\n---------------\n"


def test_bad_numbers(ckpt, capsys):
    assert "--max_new_tokens: must be >= 1, got 0" in one_error(capsys, "--ckpt", ckpt, "--max_new_tokens", "0")
    assert "--exit_threshold: must be a finite number >= 0" in one_error(capsys, "--ckpt", ckpt, "--exit_threshold", "-1")
    assert "--draft_tokens: must be in [1, 1024], got 0" in one_error(capsys, "--ckpt", ckpt, "--draft_layers", "1",
                                                             "--draft_tokens", "0")
    assert one_error(capsys, "--ckpt", ckpt, "--draft_layers", "3") == \
        "error: --draft_layers must be in 1..2 (n_layer 3), got 3"
    assert "goes with neither --exit_threshold nor --show_depth" in one_error(
        capsys, "--ckpt", ckpt, "--draft_layers", "1", "--exit_threshold", "0.5")


@pytest.mark.slow
def test_init_from_unknown_and_offline(tmp_path):
    """Unknown names fail before any download; a real name with the hub offline and no cache is
    one line too (subprocess: HF_HUB_OFFLINE must be set before transformers is imported)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    for name, want in (("gpt3", "error: unknown --init_from 'gpt3': one of gpt2, gpt2-medium, "
                                "gpt2-large, gpt2-xl or a directory saved by transformers"),
                       ("gpt2", "error: cannot load 'gpt2' through transformers (offline and not "
                                "in the Hugging Face cache?)")):
        r = run_py([sys.executable, os.path.join(ROOT, "sample.py"), "--init_from", name],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(want), r.stderr


@pytest.mark.slow
def test_init_from_saved_transformers_dir(capsys, tmp_path):
    """--init_from a directory saved by transformers (a tiny random GPT-2 with GPT-2's 50257
    vocabulary): the sample is model.generate's greedy output, decoded by the GPT-2 tokenizer."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hc = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50257, n_positions=64)
    transformers.GPT2LMHeadModel(hc).save_pretrained(tmp_path / "hf")
    rc, out, err = run_main(capsys, "--init_from", str(tmp_path / "hf"), "--prompt", "Hello",
                            "--temperature", "0", "--num_samples", "1", "--max_new_tokens", "6")
    assert rc == 0, err
    from tokenizer import GPT2Tokenizer
    tok = GPT2Tokenizer()
    model = GPT.from_pretrained(str(tmp_path / "hf")).eval()
    want = model.generate(torch.tensor([tok.encode("Hello")]), 6, temperature=0)[0].tolist()
    assert out == tok.decode(want) + "\n---------------\n"
