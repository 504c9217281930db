"""eval_exit.py end to end on a tiny random model saved in the checkpoint format."""
import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

import eval_exit
from model import GPT, GPTConfig

L = 3
THRESHOLDS = [1.01, 0.9, 0.7, 0.5, 0.3, 0.1, 0.0]    # falling


def write_data(root, vocab=64, n_val=2000, n_train=500):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards = []
    for split, n in (("val", n_val), ("train", n_train)):
        name = f"tiny_{split}_000000.npy"
        np.save(root / name, rng.integers(0, vocab, n).astype(np.uint16))
        sha = hashlib.sha256((root / name).read_bytes()).hexdigest()
        shards.append({"file": name, "split": split, "tokens": n, "sha256": sha})
    meta = {"source": "test", "tokenizer": "char", "vocab_size": vocab, "eot": None,
            "dtype": "uint16", "chars": "".join(chr(33 + i) for i in range(vocab)),
            "shards": shards, "complete": True}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def write_ckpt(path, share_weights=True, sharpen=8.0):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, vocab_size=64, n_layer=L, n_head=2, n_embd=32,
                    share_weights=share_weights, layer_heads=True, early_exit=True,
                    exit_threshold=0.9, exit_loss="4-test")
    model = GPT(cfg)
    with torch.no_grad():                 # peaky heads: confidences spread over (0, 1)
        model.lm_head.weight.mul_(sharpen)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_config": dataclasses.asdict(cfg),
                "train_config": {"T": 16, "B": 2}, "step": 0, "optimizer": {}, "loader": {},
                "rng": [], "tokenizer": {"name": "char", "chars": None}}, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalexit")
    ckpt = write_ckpt(tmp / "log" / "tinyrun" / "ckpt_000000.pt")
    data = write_data(tmp / "data" / "tiny")
    return tmp, ckpt, data


def argv(tmp, ckpt, data, *extra):
    return ["--ckpt", str(ckpt), "--data", str(data),
            "--thresholds", ",".join(map(str, THRESHOLDS)), "--batches", "3",
            "--batch-size", "2", "--decode-tokens", "4", "--img-dir", str(tmp / "img"), *extra]


@pytest.mark.slow
def test_eval_exit_table(setup, capsys):
    tmp, ckpt, data = setup
    rows, ref, md, run_name = eval_exit.run(eval_exit.parse_args(argv(tmp, ckpt, data)))
    assert run_name == "tinyrun" and len(rows) == len(THRESHOLDS)
    assert [r["threshold"] for r in rows] == THRESHOLDS
    # threshold > 1: full depth, nothing saved, the full-depth loss exactly
    assert rows[0]["exit_depth"] == L and rows[0]["flops_saved"] == 0.0
    assert rows[0]["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-6)
    # threshold 0: everybody exits at layer 1; saved = 1 - 1/L (no propagated kv beyond)
    assert rows[-1]["exit_depth"] == 1.0
    depths = [r["exit_depth"] for r in rows]
    assert all(a >= b for a, b in zip(depths, depths[1:])), depths
    assert any(1.0 < d < L for d in depths), depths        # the test exercises partial exits
    for r in rows:
        assert sum(r["earlystopdict"]) == pytest.approx(1.0)
        assert r["tok_s"] is not None and r["tok_s"] > 0
    saved = [r["flops_saved"] for r in rows]
    assert all(a <= b + 1e-12 for a, b in zip(saved, saved[1:]))
    # main writes the same table, and the plot
    eval_exit.main(argv(tmp, ckpt, data))
    text = (tmp / "log" / "tinyrun" / "exit_eval.md").read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| threshold")]
    assert len(table) == len(THRESHOLDS)
    first = [c.strip() for c in table[0].strip("|").split("|")]
    assert first[0] == "1.01" and first[3] == "3.000" and first[5] == "0.0 %"
    assert (tmp / "img" / "tinyrun_pareto.png").stat().st_size > 1000
    assert "| threshold |" in capsys.readouterr().out


def test_forward_flops():
    block, head, kv = 1000.0, 300.0, 70.0
    flops, full, plain = eval_exit.forward_flops([0, 0, 0, 1.0], True, block, head, kv)
    assert flops == full == 4 * (block + head) and plain == 4 * block + head
    flops, _, _ = eval_exit.forward_flops([0.5, 0, 0.5, 0], True, block, head, kv)
    assert flops == pytest.approx(0.5 * (block + head + kv) + 0.5 * (3 * (block + head) + kv))
    flops, _, _ = eval_exit.forward_flops([1.0, 0, 0, 0], False, block, head, kv)  # kv per layer
    assert flops == pytest.approx(block + head + 3 * kv)


def test_layer_costs_match_model_flops_per_token():
    """forward block + head FLOPs = a third of model.flops_per_token (fwd+bwd = 3 x fwd)."""
    for share in (True, False):
        cfg = GPTConfig(block_size=32, vocab_size=64, n_layer=L, n_head=2, n_embd=32,
                        share_weights=share, layer_heads=True)
        model = GPT(cfg)
        block, head, kv = eval_exit.layer_costs(model, 16)
        assert L * (block + head) * 3 == pytest.approx(model.flops_per_token(16))
        assert kv == 4 * 32 * 32


def test_pareto_front():
    pts = [(3.0, 2.0), (2.0, 2.5), (2.5, 2.6), (1.0, 4.0), (1.5, 3.0)]
    assert eval_exit.pareto_front(pts) == [3, 4, 1, 0]


@pytest.mark.parametrize("bad,msg", [
    (["--thresholds", "0.5,x"], "thresholds"),
    (["--thresholds", "-1"], "thresholds"),
    (["--ckpt", "nope.pt"], "--ckpt nope.pt: no such file"),
    (["--data", "no/such/dir"], "does not exist"),
    (["--seq-len", "16", "--batch-size", "500"], "lower --batch-size"),
    (["--ckpt", "CORRUPT"], "is unreadable (UnpicklingError"),
])
def test_bad_input_is_one_error_line(setup, capsys, bad, msg, tmp_path):
    tmp, ckpt, data = setup
    out = tmp_path / "x.md"
    if "CORRUPT" in bad:
        bad = ["--ckpt", str(tmp_path / "bad.pt")]
        (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        eval_exit.main(argv(tmp, ckpt, data, "--out", str(out)) + bad)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    assert not out.exists()


def test_decode_speeds_interleaved_median(monkeypatch):
    """Timing runs go A B C A B C ... after one warm-up each; tok/s is the per-threshold median."""
    calls = []
    fake = iter([5.0, 50.0, 500.0, 1.0, 10.0, 100.0, 3.0, 30.0, 300.0])

    def decode(model, prompt, n_new, th):
        calls.append((th, n_new))
        return (0.0 if n_new == 2 else next(fake)), th
    monkeypatch.setattr(eval_exit, "decode", decode)
    got = eval_exit.decode_speeds(None, None, 8, [None, 0.5, 0.9], rounds=3)
    assert calls == [(None, 2), (0.5, 2), (0.9, 2)] + [(None, 8), (0.5, 8), (0.9, 8)] * 3
    assert got == [(3.0, None), (30.0, 0.5), (300.0, 0.9)]


def test_format_summary():
    ref = {"val_loss": 2.0, "tok_s": 100.0}
    rows = [{"threshold": 0.5, "val_loss": 2.02, "exit_depth": 2.5, "tok_s": 150.0},
            {"threshold": 0.9, "val_loss": 2.0, "exit_depth": 3.75, "tok_s": None}]
    assert eval_exit.format_summary(rows, ref, 4).splitlines() == [
        "threshold  val CE  vs full  avg exit depth  decode speedup",
        "      off   2.000                4.00 / 4            1.00x",
        "      0.5   2.020    +1.0%       2.50 / 4            1.50x",
        "      0.9   2.000    +0.0%       3.75 / 4              n/a"]


def test_parse_measures_all_and_unknown():
    import exits
    assert eval_exit.parse_measures("all") == sorted(set(exits.CONFIDENCES) - {"target-prob"})
    with pytest.raises(eval_exit.EvalError, match="unknown measure 'target-prob'; valid: all, "):
        eval_exit.parse_measures("max-prob,target-prob")


@pytest.mark.slow
def test_measures_compared_with_calibrated_thresholds(setup):
    """--measures: one Pareto curve per measure (quantile thresholds + never; argmax-stable
    sweeps k); the calibrated row is the shallowest within tolerance on the calibration half;
    1.01 reproduces full depth on both halves; one table row per measure and the plot.
    ('all' is every measure but target-prob, and learned only with a classifier: the
    parse test.)"""
    tmp, ckpt, data = setup
    args = eval_exit.parse_args(argv(tmp, ckpt, data, "--measures", "argmax-stable,kl-prev",
                                     "--batches", "2", "--batch-size", "1"))
    rows, ref, md, _, img = eval_exit.evaluate_and_write(args)
    names = {r["measure"] for r in rows}
    assert names == {"argmax-stable", "kl-prev"}
    assert [r["setting"] for r in rows if r["measure"] == "argmax-stable"] == [
        "argmax_stable_k=1", "argmax_stable_k=2"]
    for name in names - {"argmax-stable"}:
        never = [r for r in rows if r["measure"] == name][-1]
        assert never["threshold"] == 1.01 and never["exit_depth"] == L
        assert never["cal_loss"] == pytest.approx(ref["cal"], rel=1e-6)
        assert never["val_loss"] == pytest.approx(ref["rep"], rel=1e-6)
    for name in names:
        mine = [r for r in rows if r["measure"] == name]
        c = eval_exit.calibrated(mine, ref["cal"], 0.01)
        ok = [r for r in mine if r["cal_loss"] <= 1.01 * ref["cal"]]
        assert c["cal_depth"] == min(r["cal_depth"] for r in ok)
        assert f"| {name} | {c['setting']} |" in md
    assert "Lowest average depth at <= 1 % loss (report half)" in md
    assert (tmp / "img" / "tinyrun_measures.png").stat().st_size > 1000
    assert img.endswith("tinyrun_measures.png")


def test_depths_table_and_plot(setup, tmp_path):
    """--depths: val loss per depth (depth n_layer == the plain full-depth loss), the shared
    block applied past n_layer; beside --depths-vs; a non-shared checkpoint past n_layer is
    one error line naming the valid depths."""
    tmp, ckpt, data = setup
    base = argv(tmp, ckpt, data, "--batches", "2")
    model, _, batches, _, _, _ = eval_exit.load(eval_exit.parse_args(base), str(ckpt))
    full = eval_exit.evaluate(model, batches, None, "cpu")["val_loss"]
    args = eval_exit.parse_args(base + ["--depths", "1,3,6", "--depths-vs", str(ckpt)])
    runs, _, md, out, img = eval_exit.evaluate_and_write(args)
    (name, n_layer, sampling, losses), twin = runs
    assert (name, n_layer, sampling) == ("tinyrun", L, "fixed") and twin == runs[0]
    assert losses[1] == pytest.approx(full, rel=1e-6) and len(set(losses)) == 3
    assert "| 3 | " in md and "+0.00 %" in md and img.endswith("tinyrun_depths.png")
    plain = write_ckpt(tmp_path / "log" / "plain" / "ckpt_000000.pt", share_weights=False)
    with pytest.raises(eval_exit.EvalError, match=r"depth 6 > n_layer 3 needs share_weights.*valid: 1..3"):
        eval_exit.run_depths(eval_exit.parse_args(
            argv(tmp, plain, data, "--batches", "1", "--depths", "2,6")))
