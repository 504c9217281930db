"""checkpoint.py: the one loader. A model round-trips; a corrupted checkpoint (one real bit flipped
inside tensor data, which torch.load alone accepts) is one `error:` line, exit 2, in every script
that reads checkpoints: the trainer (--resume), eval_exit.py and hellaswag.py."""
import dataclasses
import os
import shutil

import pytest
import torch

import checkpoint
import eval_exit
import hellaswag
import train_gpt2 as tg
from conftest import ROOT, flip_bit_in_largest_tensor, tiny_args
from model import GPT, GPTConfig

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "hellaswag_tiny.jsonl")


def _full(model, step=1):
    return {"model": model.state_dict(), "model_config": dataclasses.asdict(model.config),
            "train_config": {"T": 8}, "step": step, "optimizer": {}, "loader": {}, "rng": []}


def test_load_model_roundtrip_and_prune(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32,
                    share_weights=True, block_type="res-attn2", pos_encoding="rope")
    m = GPT(cfg)
    for step in (1, 2, 3):
        path = checkpoint.save(_full(m, step), str(tmp_path), step, keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [2, 3]
    m2, ck = checkpoint.load_model(path)
    assert not m2.training and m2.config == cfg and ck["step"] == 3
    idx = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        assert torch.equal(m.eval()(idx)[0], m2(idx)[0])
    # DDP / torch.compile key prefixes are stripped by the one stripper
    sd = {"module._orig_mod.transformer.wte.weight": 1, "transformer.h.0._orig_mod.mlp.w": 2}
    assert checkpoint.strip_prefixes(sd) == {"transformer.wte.weight": 1, "transformer.h.0.mlp.w": 2}


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory, char_data):
    """(a trainer checkpoint with one bit flipped, the data directory, the run's log dir)."""
    out = tmp_path_factory.mktemp("ckpt")
    threads = torch.get_num_threads()
    try:
        assert tg.main(tiny_args(char_data, out, "c", "--max_steps=1", "--sample_interval=0")) == 0
    finally:
        torch.set_num_threads(threads)
    good = out / "c" / "ckpt_000000.pt"
    bad = out / "bad" / "ckpt_000000.pt"
    bad.parent.mkdir()
    shutil.copy(good, bad)
    flip_bit_in_largest_tensor(bad)
    torch.load(bad, weights_only=True)          # torch alone does not notice
    with pytest.raises(checkpoint.CheckpointError, match=r"^content digest mismatch"):
        checkpoint.load(str(bad))
    return bad, char_data, out


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.slow
def test_trainer_resume_from_corrupted(corrupted, capsys, tmp_path):
    bad, data, _ = corrupted
    code = tg.main(tiny_args(data, tmp_path, "r", f"--resume={bad}"))
    assert code == 2
    assert _one_error_line(capsys) == (f"error: checkpoint {bad} is unreadable "
                                       "(content digest mismatch (corrupted data))")
    assert not (tmp_path / "r.txt").exists()


@pytest.mark.slow
def test_eval_exit_corrupted(corrupted, capsys, tmp_path):
    bad, data, _ = corrupted
    with pytest.raises(SystemExit) as e:
        eval_exit.main(["--ckpt", str(bad), "--data", str(data), "--out", str(tmp_path / "x.md"),
                        "--img-dir", str(tmp_path)])
    assert e.value.code == 2
    assert _one_error_line(capsys) == (f"error: checkpoint {bad} is unreadable "
                                       "(content digest mismatch (corrupted data))")
    assert not (tmp_path / "x.md").exists()


@pytest.mark.slow
def test_hellaswag_corrupted(corrupted, capsys):
    bad, _, _ = corrupted
    with pytest.raises(SystemExit) as e:
        hellaswag.main(["--ckpt", str(bad), "--data", FIXTURE, "--device", "cpu"])
    assert e.value.code == 2
    assert _one_error_line(capsys) == (f"error: checkpoint {bad} is unreadable "
                                       "(content digest mismatch (corrupted data))")
