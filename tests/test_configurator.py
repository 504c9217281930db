"""The configurator: files then --key=value, types, preset scaling, git state (bad inputs:
test_bad_input.py)."""
import subprocess

import pytest

from conftest import tiny_args
import runlog
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
    for f in dataclasses.fields(GPTConfig):                  # vocab_size None: the data's
        assert d[f.name] == (None if f.name == "vocab_size" else f.default)
    assert tg.model_config(d) == GPTConfig()                 # defaults = GPT-2 124M
    assert (d["total_batch_size"], d["B"], d["T"], d["max_lr"], d["warmup_steps"], d["max_steps"],
            d["vocab_size"]) == (524288, 64, 1024, 6e-4, 715, 19073, None)


def test_preset_scale_applies_unless_explicit(tmp_path):
    cfg, _ = tg.parse_config(["--preset_scale=cpu", "--B=4"])
    assert cfg["B"] == 4 and cfg["T"] == 128 and cfg["dataset"] == "data/builtin"
    assert cfg["n_layer"] == 12                              # preset's depth is kept
    mcfg, accum = tg.validate_config(cfg, 1)
    assert accum == 1 and cfg["total_batch_size"] == 4 * 128 and mcfg.block_size == 128
    assert cfg["n_embd"] == 64 and cfg["n_head"] == 4 and cfg["dataset_source"] == "builtin"
    cfg, _ = tg.parse_config(["--preset_scale=cpu", "--n_embd=48"])   # heads refit to the width
    assert cfg["n_embd"] == 48 and 48 % cfg["n_head"] == 0


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
    sha, dirty, changed = runlog.git_state(str(repo))
    assert len(sha) == 40 and dirty is False
    (repo / "untracked.py").write_text("")                    # untracked files do not count
    assert runlog.git_state(str(repo))[1] is False
    (repo / "f.py").write_text("a = 2\n")
    assert runlog.git_state(str(repo))[1:] == (True, ["f.py"])
    assert runlog.git_state(str(tmp_path / "nogit"))[:2] == (None, None)


def test_dirty_ok_false_refuses_dirty_tree(capsys, tmp_path, char_data, monkeypatch):
    monkeypatch.setattr(runlog, "git_state", lambda root=runlog.ROOT: ("a" * 40, True, ["model.py"]))
    line = _bad(capsys, tmp_path, ["--dirty_ok=False"], char_data)
    assert line == ("error: dirty_ok=False and tracked files have uncommitted changes (model.py); "
                    "commit them or pass --dirty_ok=True")


def test_every_model_field_is_a_constant_and_no_test_hooks():
    """"Edit the constants at the top" finds every GPTConfig field, with its default; fault
    injection for the guard tests lives in tests/nonfinite.py, not among the constants."""
    import dataclasses
    from model import GPTConfig
    missing = [f.name for f in dataclasses.fields(GPTConfig) if f.name not in tg.DEFAULTS]
    assert not missing, f"GPTConfig fields not listed among train_gpt2.py's constants: {missing}"
    assert all(tg.DEFAULTS[f.name] == f.default for f in dataclasses.fields(GPTConfig)
               if f.name != "vocab_size")
    assert tg.DEFAULTS["vocab_size"] is None                  # the data's (tests/test_vocab.py)
    assert not [k for k in tg.DEFAULTS if "debug" in k or "inject" in k]


def test_no_module_imports_one_above_it():
    """The trainer does not import the tools that launch or read it (sweep.py, bench.py,
    eval_exit.py); the infrastructure modules do not import the trainer."""
    import ast
    import os

    def imports(name):
        tree = ast.parse(open(os.path.join(os.path.dirname(tg.__file__), name + ".py")).read())
        out = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                out |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module:
                out.add(n.module.split(".")[0])
        return out
    assert not imports("train_gpt2") & {"sweep", "bench", "eval_exit"}
    for low in ("configurator", "config_checks", "checkpoint", "runlog", "runlock", "dataloader",
                "distributed", "lr_finder", "run_summary", "stop_signal", "model", "exits", "heads",
                "fineweb", "hellaswag", "plot", "tokenizer"):
        assert "train_gpt2" not in imports(low) and "sweep" not in imports(low), low
