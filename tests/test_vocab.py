"""The model's vocabulary comes from the data's manifest unless vocab_size is set."""
import os

import pytest
import torch

import fineweb
from conftest import make_char_dataset, run_train, tiny_args


@pytest.mark.parametrize("tokenizer,n,want", [("gpt2", 50257, 50304), ("char", 65, 65),
                                              ("char", 221, 221), ("char", 64, 64)])
def test_model_vocab_size_rule(tokenizer, n, want):
    assert fineweb.model_vocab_size({"tokenizer": tokenizer, "vocab_size": n}) == want


def test_char_data_trains_65_symbol_model_without_vocab_size(tmp_path):
    data = make_char_dataset(str(tmp_path / "d65"), vocab=65)
    args = [a for a in tiny_args(data, str(tmp_path / "log"), "v65", "--max_steps=2",
                                 "--sample_interval=0", "--eval_interval=0")
            if not a.startswith("--vocab_size")]
    r = run_train(args)
    assert r.returncode == 0, r.stderr
    ck = torch.load(os.path.join(tmp_path, "log", "v65", "ckpt_000001.pt"), weights_only=True)
    assert ck["model_config"]["vocab_size"] == 65
    assert tuple(ck["model"]["lm_head.weight"].shape) == (65, 32)
    log = (tmp_path / "log" / "v65.txt").read_text()
    assert "# vocab_size 65: the data's char vocabulary, exactly (vocab_size unset)" in log


def test_explicit_vocab_size_below_data_is_one_error(tmp_path):
    data = make_char_dataset(str(tmp_path / "d65"), vocab=65)
    r = run_train(tiny_args(data, str(tmp_path / "log"), "small", "--vocab_size=64"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"error: data vocab_size 65 > model vocab_size 64 "
                                     f"({os.path.join(data, 'meta.json')})"]
    assert not (tmp_path / "log").exists()
