"""Every bad input to train_gpt2.py: exit code 2, exactly one `error:` line naming the problem,
and no file in the log directory or the data directory changed (an earlier run's log, jsonl
and checkpoint sit in the log directory and must stay byte-identical, not even moved)."""
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT, make_char_dataset, run_train, tiny_args
import checkpoint
import train_gpt2 as tg


def _snapshot(*dirs):
    """{path: (size, mtime_ns, sha256)} of every file under dirs (the dirs themselves too)."""
    out = {}
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            out[root] = ("dir", sorted(subdirs), sorted(files))
            for f in files:
                p = os.path.join(root, f)
                st = os.stat(p)
                with open(p, "rb") as fh:
                    out[p] = (st.st_size, st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


@pytest.fixture(scope="module")
def earlier_run(char_data, tmp_path_factory):
    """A log dir holding a finished 2-step run named "bad" (txt, jsonl, checkpoint)."""
    d = tmp_path_factory.mktemp("earlier") / "logs"
    p = run_train(tiny_args(char_data, d, "bad", "--max_steps=2", "--sample_interval=0"))
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(d / "bad")) == ["ckpt_000001.pt"]
    return d


@pytest.fixture
def env(tmp_path, char_data, earlier_run):
    """(log dir with the earlier run, a private copy of the dataset)."""
    logs, data = tmp_path / "logs", tmp_path / "data"
    shutil.copytree(earlier_run, logs)
    shutil.copytree(char_data, data)
    return logs, data


def _bad(capsys, env, *args, data=None):
    """main() in-process -> the one `error:` line; asserts exit 2 and nothing changed on disk."""
    logs, d = env
    data = data or d
    before = _snapshot(logs, data)
    code = tg.main(tiny_args(data, logs, "bad", "--resume=auto") + [str(a) for a in args])
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert code == 2, (code, cap.err[-2000:])
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert _snapshot(logs, data) == before, "a bad start changed files"
    return err[0]


def _rewrite_meta(data, fn):
    p = os.path.join(data, "meta.json")
    meta = json.load(open(p))
    fn(meta)
    json.dump(meta, open(p, "w"))


def _edit_shard(data, name, fn, fix_sha=False):
    p = os.path.join(data, name)
    arr = np.load(p)
    arr = fn(arr)
    np.save(p, arr)
    if fix_sha:
        sha = hashlib.sha256(open(p, "rb").read()).hexdigest()
        def upd(meta):
            for s in meta["shards"]:
                if s["file"] == name:
                    s["sha256"], s["tokens"] = sha, int(arr.size)
        _rewrite_meta(data, upd)
    return p


# ---------------------------------------------------------------------------------------------
# data

def test_missing_data_directory(capsys, env, tmp_path):
    line = _bad(capsys, env, data=tmp_path / "nope")
    assert line == f"error: data directory does not exist: {tmp_path / 'nope'} (build it with fineweb.py)"


def test_missing_manifest(capsys, env):
    logs, data = env
    os.remove(data / "meta.json")
    assert _bad(capsys, env) == f"error: no manifest meta.json in {data} (build it with fineweb.py)"


def test_manifest_token_count_differs_from_shard(capsys, env):
    logs, data = env
    _rewrite_meta(data, lambda m: m["shards"][1].update(tokens=m["shards"][1]["tokens"] + 7))
    line = _bad(capsys, env)
    assert line == f"error: shard has 3000 tokens, manifest says 3007: {data / 'tiny_train_000001.npy'}"


def test_shard_sha256_differs_from_manifest(capsys, env):
    logs, data = env
    p = _edit_shard(data, "tiny_train_000002.npy", lambda a: np.where(np.arange(a.size) == 9, (a + 1) % 40, a).astype(np.uint16))
    assert _bad(capsys, env) == f"error: shard sha256 mismatch (file changed or corrupted): {p}"


def test_truncated_shard(capsys, env):
    logs, data = env
    p = data / "tiny_val_000000.npy"
    p.write_bytes(p.read_bytes()[:-100])
    line = _bad(capsys, env)
    assert line.startswith("error: ") and str(p) in line and "truncated" in line, line


def test_missing_shard(capsys, env):
    logs, data = env
    os.remove(data / "tiny_train_000001.npy")
    assert _bad(capsys, env) == f"error: shard file missing: {data / 'tiny_train_000001.npy'}"


def test_dataset_smaller_than_one_batch(capsys, env, tmp_path):
    small = make_char_dataset(str(tmp_path / "small"), n_train=60, n_val=40)
    line = _bad(capsys, env, data=small)
    assert "dataset smaller than one batch: the train split's largest shard has 30 tokens, " \
           "one step needs total_batch_size + 1 = 65" in line, line


def test_token_id_beyond_model_vocab(capsys, env):
    logs, data = env
    assert _bad(capsys, env, "--vocab_size=32") == \
        f"error: data vocab_size 40 > model vocab_size 32 ({data / 'meta.json'})"


def test_token_id_beyond_manifest_vocab(capsys, env):
    logs, data = env
    p = _edit_shard(data, "tiny_val_000000.npy",
                    lambda a: np.where(np.arange(a.size) == 5, 50, a).astype(np.uint16), fix_sha=True)
    assert _bad(capsys, env) == f"error: shard holds token id 50 >= manifest vocab_size 40: {p}"


def test_tokenizer_differs_from_manifest(capsys, env):
    logs, data = env
    assert _bad(capsys, env, "--tokenizer=gpt2") == \
        f"error: tokenizer 'gpt2' does not match the data's 'char' ({data / 'meta.json'})"


def test_incomplete_build(capsys, env):
    logs, data = env
    _rewrite_meta(data, lambda m: m.update(complete=False))
    assert "data build is incomplete (interrupted?)" in _bad(capsys, env)


# ---------------------------------------------------------------------------------------------
# configuration

@pytest.mark.parametrize("argv,msg", [
    (["--lr=0.1"], "error: unknown config key 'lr' (did you mean: max_lr, min_lr?)"),
    (["--n_layr=2"], "error: unknown config key 'n_layr' (did you mean: n_layer"),
    (["--n_layer=2.5"], "error: n_layer expects int, got 2.5 (float)"),
    (["--max_lr=fast"], "error: bad value for --max_lr: 'fast' is not a Python literal (float expected)"),
    (["--bias=1"], "error: bias expects bool, got 1 (int)"),
    (["--n_layer"], "error: --n_layer needs a value"),
    (["--n_embd=33"], "error: n_embd (33) must be divisible by n_head (2)"),
    (["--T=32"], "error: T (32) > block_size (16)"),
    (["--total_batch_size=100"], "error: total_batch_size (100) is not divisible by B*T*world_size = 2*16*1 = 32"),
    (["--B=0"], "error: B must be positive, got 0"),
    (["--lr_schedule=linear"], "error: unknown lr_schedule 'linear'; known: cosine, onecycle"),
    (["--block_type=nope"], "error: unknown block_type 'nope'; known: "),
    (["--exit_loss=nope"], "error: unknown exit_loss 'nope'; known: "),
    (["--pos_encoding=nope"], "error: unknown pos_encoding 'nope'; known: "),
    (["--confidence=nope"], "error: unknown confidence 'nope'; known: "),
    (["--exit_token_frac=0.0"], "error: exit_token_frac must be a number in (0, 1], got 0.0"),
    (["--exit_token_frac=1.5"], "error: exit_token_frac must be a number in (0, 1], got 1.5"),
    (["--exit_layer_frac=-0.5"], "error: exit_layer_frac must be a number in (0, 1], got -0.5"),
    (["--preset_scale=gpu"], "error: unknown preset_scale 'gpu'; known: none, cpu, tiny"),
    (["no/such/config.py"], "error: no such config file: no/such/config.py"),
    (["--stop_at_step=6"], "error: stop_at_step must be in [0, max_steps) = [0, 6), got 6"),
    (["--run_name=a/b"], "error: run_name 'a/b' must be a plain file name"),
    (["--resume=/no/such.pt"], "error: resume checkpoint not found: /no/such.pt"),
])
def test_config_errors(capsys, env, argv, msg):
    line = _bad(capsys, env, *argv)
    assert line.startswith(msg), line
    if "known: " in msg and msg.endswith("known: "):        # the known names are listed
        assert len(line[len(msg):].split(", ")) >= 2, line


def test_config_file_errors(capsys, env, tmp_path):
    f = tmp_path / "x.py"
    f.write_text("lr = 3e-4\n")
    assert _bad(capsys, env, f) == f"error: unknown config key 'lr' in {f} (did you mean: max_lr, min_lr?)"
    f.write_text("n_head = 'four'\n")
    assert "n_head expects int, got 'four' (str) in" in _bad(capsys, env, f)
    f.write_text("n_head = (\n")
    assert _bad(capsys, env, f).startswith(f"error: {f}:1: syntax error")


def test_resume_checkpoint_with_other_model_config(capsys, env):
    logs, _ = env
    ck = logs / "bad" / "ckpt_000001.pt"
    assert _bad(capsys, env, "--n_embd=16", "--n_layer=3") == (
        f"error: checkpoint {ck} has a different model config: n_embd 32 (checkpoint) vs 16 "
        f"(this run), n_layer 2 (checkpoint) vs 3 (this run)")
    junk = logs.parent / "junk.pt"
    junk.write_bytes(b"not a zip")
    assert _bad(capsys, env, f"--resume={junk}").startswith(f"error: checkpoint {junk} is unreadable")


@pytest.mark.slow
def test_cli_prints_one_line_and_exits_2(env):
    logs, data = env
    before = _snapshot(logs, data)
    p = run_train(tiny_args(data, logs, "bad", "--lr=1"))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == "error: unknown config key 'lr' (did you mean: max_lr, min_lr?)\n"
    assert _snapshot(logs, data) == before


# ---------------------------------------------------------------------------------------------
# no code runs from data: weights_only loads, literal_eval overrides

def test_loads_are_weights_only_and_overrides_never_eval(tmp_path):
    offenders = []
    for name in sorted(os.listdir(ROOT)):
        if name.endswith(".py"):
            src = open(os.path.join(ROOT, name)).read()
            for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", src):
                if "weights_only=True" not in m.group(0):
                    offenders.append(f"{name}: {m.group(0)[:80]}")
            for m in re.finditer(r"(?<![\w.])eval\(", src):
                offenders.append(f"{name}: bare eval( at {m.start()}")
    assert not offenders, offenders
    # an override that would run code is rejected as a literal, not executed
    with pytest.raises(tg.ConfigError, match=r"bad value for --n_layer: '__import__\(\"os\"\)"):
        tg.parse_config(['--n_layer=__import__("os").getpid()'])
    # a checkpoint carrying a pickled object is refused by torch.load(weights_only=True)
    import io
    buf = io.BytesIO()
    torch.save({"x": _Evil()}, buf)
    path = tmp_path / "evil.pt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(checkpoint.CheckpointError, match=r"^UnpicklingError"):
        checkpoint.load(str(path))


class _Evil:
    def __reduce__(self):
        return (os.getpid, ())
