"""The configurator and every bad-input check: one `error:` line, exit code 2, nothing in log/."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, make_char_dataset, run_train, tiny_args
import train_gpt2 as tg


def _bad(capsys, tmp_path, args, data):
    """main() in-process -> (code, the one stderr line); asserts nothing was written to log_dir."""
    log_dir = tmp_path / "logs"
    code = tg.main(tiny_args(data, log_dir, "bad") + list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not log_dir.exists() or not any(log_dir.rglob("*")), list(log_dir.rglob("*"))
    return err[0]


def test_parse_config_types_and_order(tmp_path):
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("n_layer = 3\nmax_lr = 1\nrun_name = 'from-file'\nimport math\n_x = 5\n"
                        "n_embd = 16 * 4\n")
    cfg, explicit = tg.parse_config([str(cfg_file), "--n_layer=5", "--run_name=12ab",
                                     "--min_lr=None", "--residual_limit=None", "--lr_find",
                                     "--dataset=data/x y", "--exit_threshold=1", "--resume=auto"])
    assert cfg["n_layer"] == 5 and cfg["max_lr"] == 1.0 and isinstance(cfg["max_lr"], float)
    assert cfg["n_embd"] == 64 and cfg["run_name"] == "12ab" and cfg["dataset"] == "data/x y"
    assert cfg["min_lr"] is None and cfg["residual_limit"] is None and cfg["lr_find"] is True
    assert cfg["exit_threshold"] == 1.0 and cfg["resume"] == "auto"
    assert explicit == {"n_layer", "run_name", "min_lr", "residual_limit", "lr_find", "dataset",
                        "exit_threshold", "resume"}
    # every GPTConfig field is a key, with its type; model constants are GPTConfig's names
    import dataclasses
    from model import GPTConfig
    d = tg.all_defaults()
    for f in dataclasses.fields(GPTConfig):
        assert d[f.name] == f.default
    assert tg.model_config(d) == GPTConfig()                 # defaults = GPT-2 124M
    assert (d["total_batch_size"], d["B"], d["T"], d["max_lr"], d["warmup_steps"], d["max_steps"],
            d["vocab_size"]) == (524288, 64, 1024, 6e-4, 715, 19073, 50304)


def test_preset_scale_applies_unless_explicit(tmp_path):
    cfg, _ = tg.parse_config(["--preset_scale=cpu", "--B=4"])
    assert cfg["B"] == 4 and cfg["T"] == 128 and cfg["dataset"] == "data/builtin"
    assert cfg["n_layer"] == 12                              # preset's depth is kept
    mcfg, accum = tg.validate_config(cfg, 1)
    assert accum == 2 and mcfg.block_size == 128


@pytest.mark.parametrize("argv,msg", [
    (["--lr=0.1"], "unknown config key 'lr' (did you mean: max_lr, min_lr?)"),
    (["--n_layr=2"], "unknown config key 'n_layr' (did you mean: n_layer"),
    (["--n_layer=2.5"], "n_layer expects int, got 2.5 (float)"),
    (["--max_lr=fast"], "bad value for --max_lr: 'fast' is not a Python literal (float expected)"),
    (["--bias=1"], "bias expects bool, got 1 (int)"),
    (["--n_layer"], "--n_layer needs a value"),
    (["--lr_schedule=linear"], "unknown lr_schedule 'linear'; known: cosine, onecycle"),
    (["--block_type=nope"], "unknown block_type 'nope'; known: "),
    (["--n_embd=33"], "n_embd (33) must be divisible by n_head (2)"),
    (["--T=32"], "T (32) > block_size (16)"),
    (["--total_batch_size=100"], "total_batch_size (100) is not divisible by B*T*world_size = 2*16*1 = 32"),
    (["--B=0"], "B must be positive, got 0"),
    (["--preset_scale=gpu"], "unknown preset_scale 'gpu'; known: cpu"),
    (["no/such/config.py"], "no such config file: no/such/config.py"),
    (["--stop_at_step=6"], "stop_at_step must be in [0, max_steps) = [0, 6), got 6"),
    (["--run_name=a/b"], "run_name 'a/b' must be a plain file name"),
])
def test_config_errors(capsys, tmp_path, char_data, argv, msg):
    line = _bad(capsys, tmp_path, argv, char_data)
    assert msg in line, line


def test_config_file_errors(capsys, tmp_path, char_data):
    f = tmp_path / "x.py"
    f.write_text("lr = 3e-4\n")
    assert _bad(capsys, tmp_path, [str(f)], char_data) == \
        f"error: unknown config key 'lr' in {f} (did you mean: max_lr, min_lr?)"
    f.write_text("n_head = 'four'\n")
    assert "n_head expects int, got 'four' (str) in" in _bad(capsys, tmp_path, [str(f)], char_data)
    f.write_text("n_head = (\n")
    assert f"error: {f}:1: syntax error" in _bad(capsys, tmp_path, [str(f)], char_data)


def test_data_errors(capsys, tmp_path, char_data):
    assert "data directory does not exist" in _bad(capsys, tmp_path, [f"--dataset={tmp_path}/none"], char_data)
    assert ("tokenizer 'gpt2' does not match the data's 'char'"
            in _bad(capsys, tmp_path, ["--tokenizer=gpt2"], char_data))
    assert "data vocab_size 40 > model vocab_size 32" in _bad(capsys, tmp_path, ["--vocab_size=32"], char_data)
    small = make_char_dataset(str(tmp_path / "small"), n_train=60, n_val=40)
    line = _bad(capsys, tmp_path, ["--total_batch_size=64"], small)
    assert "dataset smaller than one batch: the train split's largest shard has 30 tokens, " \
           "one step needs total_batch_size + 1 = 65" in line
    bad = make_char_dataset(str(tmp_path / "oov"), vocab=40)
    import numpy as np, json, hashlib
    arr = np.load(os.path.join(bad, "tiny_val_000000.npy"))
    arr[5] = 50
    np.save(os.path.join(bad, "tiny_val_000000.npy"), arr)
    assert "token id 50 >= vocab_size 40" in _bad(capsys, tmp_path, [], bad)


def test_resume_with_other_model_config_is_rejected(capsys, tmp_path, char_data):
    log_dir = tmp_path / "logs"
    assert tg.main(tiny_args(char_data, log_dir, "r", "--max_steps=2", "--sample_interval=0")) == 0
    capsys.readouterr()
    before = sorted(p.name for p in log_dir.rglob("*"))
    code = tg.main(tiny_args(char_data, log_dir, "r", "--n_embd=16", "--n_layer=3", "--resume=auto"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    ck = log_dir / "r" / "ckpt_000001.pt"
    assert err[0] == (f"error: checkpoint {ck} has a different model config: n_embd 32 "
                      f"(checkpoint) vs 16 (this run), n_layer 2 (checkpoint) vs 3 (this run)")
    assert sorted(p.name for p in log_dir.rglob("*")) == before
    # an explicit path that is not a checkpoint
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    code = tg.main(tiny_args(char_data, log_dir, "r", f"--resume={junk}"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: checkpoint {junk} is unreadable")


def test_cli_exit_code_and_single_line(tmp_path, char_data):
    p = run_train(tiny_args(char_data, tmp_path / "logs", "cli", "--lr=1"))
    assert p.returncode == 2
    assert p.stderr == "error: unknown config key 'lr' (did you mean: max_lr, min_lr?)\n"
    assert p.stdout == "" and not (tmp_path / "logs").exists()


def test_dirty_tree_detection(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa
    try:
        git("init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not available")
    (repo / "f.py").write_text("a = 1\n")
    git("add", "f.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    sha, dirty, changed = tg.git_state(str(repo))
    assert len(sha) == 40 and dirty is False
    (repo / "untracked.py").write_text("")                    # untracked files do not count
    assert tg.git_state(str(repo))[1] is False
    (repo / "f.py").write_text("a = 2\n")
    assert tg.git_state(str(repo))[1:] == (True, ["f.py"])
    assert tg.git_state(str(tmp_path / "nogit"))[:2] == (None, None)


def test_dirty_ok_false_refuses_dirty_tree(capsys, tmp_path, char_data, monkeypatch):
    monkeypatch.setattr(tg, "git_state", lambda root=tg.ROOT: ("a" * 40, True, ["model.py"]))
    line = _bad(capsys, tmp_path, ["--dirty_ok=False"], char_data)
    assert line == ("error: dirty_ok=False and tracked files have uncommitted changes (model.py); "
                    "commit them or pass --dirty_ok=True")
