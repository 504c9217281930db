"""bench.py: the ratio arithmetic on known numbers, a tiny real run end to end, bad input."""
import json
import os
import sys

import pytest

from conftest import run_py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bench  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def _ok(tok_per_s, fpt, delta_rss):
    return {"status": "ok", "tok_per_s": tok_per_s, "flops_per_token": fpt, "delta_rss_mb": delta_rss}


def test_summarize_ratios_on_known_numbers():
    """plain: 1000 tok/s at 1 GFLOP/token -> the FLOP-bound rate at 2 GFLOP/token is 500 tok/s;
    the fused case runs 450 tok/s -> 0.9 of it. Memory ratios are plain quotients."""
    results = {"plain": _ok(1000.0, 1e9, 100.0), "plain-fused": _ok(1200.0, 1e9, 80.0),
               "shared-naive": _ok(300.0, 2e9, 400.0), "shared-fused": _ok(450.0, 2e9, 110.0),
               "shared-checkpoint": _ok(350.0, 2e9, 220.0), "broken": {"status": "oom"}}
    r = bench.summarize(results, "cpu")
    assert r["flop_bound_tok_per_s[plain]"] == pytest.approx(500.0)
    assert r["fused_tput_over_flop_bound[plain]"] == pytest.approx(0.9)
    assert r["flop_bound_tok_per_s[plain-fused]"] == pytest.approx(600.0)
    assert r["fused_tput_over_flop_bound[plain-fused]"] == pytest.approx(0.75)
    assert r["fused_mem_over_plain[plain]"] == pytest.approx(1.1)
    assert r["fused_mem_over_plain[plain-fused]"] == pytest.approx(110 / 80)
    assert r["fused_mem_over_naive"] == pytest.approx(110 / 400)
    assert r["fused_tput_over_naive"] == pytest.approx(1.5)
    assert r["fused_mem_over_checkpoint"] == pytest.approx(0.5)
    # a failed reference case gives no ratio rather than a wrong one
    assert bench.summarize({"shared-fused": _ok(450.0, 2e9, 110.0), "plain": {"status": "error"}},
                           "cpu") == {}


def test_flops_per_token_counts_every_head():
    """The benchmark's FLOP count is the model's, and per-layer heads add 6*C*V per extra head."""
    kw = dict(n_layer=3, n_head=2, n_embd=32, vocab_size=96, block_size=16)
    plain = GPT(GPTConfig(**kw, share_weights=False, layer_heads=False))
    heads = GPT(GPTConfig(**kw, share_weights=True, layer_heads=True, exit_loss="all-layers"))
    assert bench.flops_per_token(plain, 16) == plain.flops_per_token(16)
    assert bench.flops_per_token(heads, 16) - bench.flops_per_token(plain, 16) == 6 * 32 * 96 * 2


@pytest.mark.slow
def test_tiny_run_writes_results(tmp_path):
    """Two cases at a tiny shape: both run, the report names the CPU, ratios are present and
    consistent with the per-case numbers, and LATEST.md is the same table."""
    out = tmp_path / "res"
    r = run_py([sys.executable, os.path.join(ROOT, "bench.py"), "--quick", "--device", "cpu",
                        "--cases", "plain,shared-fused", "--n_layer", "2", "--n_embd", "32",
                        "--n_head", "2", "--vocab_size", "256", "--B", "2", "--T", "16",
                        "--warmup", "0", "--steps", "2", "--threads", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("device: cpu — ")
    files = sorted(os.listdir(out))
    jsons = [f for f in files if f.endswith(".json")]
    assert len(jsons) == 1 and jsons[0].startswith("cpu-") and "-quick-" in jsons[0]
    assert files == sorted([jsons[0], jsons[0][:-5] + ".md", "LATEST.md"])
    rep = json.loads((out / jsons[0]).read_text())
    assert rep["device"] == "cpu" and rep["shape"]["n_layer"] == 2 and rep["shape"]["vocab_size"] == 256
    p, f = rep["results"]["plain"], rep["results"]["shared-fused"]
    assert p["status"] == f["status"] == "ok" and len(p["step_s"]) == 2
    bound = p["tok_per_s"] * p["flops_per_token"] / f["flops_per_token"]
    assert rep["ratios"]["fused_tput_over_flop_bound[plain]"] == pytest.approx(f["tok_per_s"] / bound)
    assert f["flops_per_token"] > p["flops_per_token"]
    md = (out / jsons[0].replace(".json", ".md")).read_text()
    assert rep["device_info"]["name"] in md
    assert (out / "LATEST.md").read_text().startswith(md)


@pytest.mark.slow
@pytest.mark.parametrize("args,msg", [
    (["--cases", "plain,nope"], "unknown case(s) ['nope']"),
    (["--exit-loss", "bogus"], "unknown --exit-loss 'bogus'"),
    (["--n_embd", "30", "--n_head", "4"], "n_embd 30 not divisible by n_head 4"),
    (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
])
def test_bad_arguments_one_error_line(tmp_path, args, msg):
    out = tmp_path / "res"
    r = run_py([sys.executable, os.path.join(ROOT, "bench.py"), "--quick", "--device", "cpu",
                        "--out", str(out)] + args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: ")
    assert msg in r.stderr
    assert not out.exists()


def test_peak_flops_table_shared_with_trainer():
    """bench.py and train_gpt2.py's MFU read one table; the more specific name wins."""
    import runlog
    assert bench.peak_flops("cuda", {"name": "NVIDIA H100 PCIe"}, "bf16") == \
        (756e12, "H100 PCIe dense bf16 data sheet")
    assert bench.peak_flops("cuda", {"name": "NVIDIA H100 80GB HBM3"}, "bf16")[0] == 989e12
    assert runlog.peak_bf16_flops("NVIDIA L40S") == ("L40S", 362e12)
    assert runlog.peak_bf16_flops("NVIDIA L4") == ("L4", 121e12)
    assert runlog.peak_bf16_flops("cpu") is None
