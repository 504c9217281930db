"""bench/memory_model.py: the accounting on closed-form cases, against measured CPU peaks, and
`bench.py --memory` end to end."""
import os
import sys

import pytest

from conftest import run_py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)

import memory_model as mm  # noqa: E402

SHAPE = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, B=8, T=256)


def test_naive_per_layer_heads_keep_one_fp32_log_softmax_per_layer():
    """naive minus checkpoint head buffers, per layer: (a + f) N C - f N C + f N V (+ the
    autocast W cast once) - exactly what the docstring says the naive head keeps."""
    L, C, V, N = 12, 768, 50304, 64 * 1024
    naive = mm.estimate(mm.GPT2_124M, dict(share_weights=True, exit_loss="all-layers",
                                           head_impl="naive"))
    ckpt = mm.estimate(mm.GPT2_124M, dict(share_weights=True, exit_loss="all-layers",
                                          head_impl="checkpoint"))
    assert naive["head_buffers"] - ckpt["head_buffers"] == L * (2 * N * C + 4 * N * V - 4 * N * C)
    assert naive["params"] == 4 * naive["n_params"] and naive["adamw"] == 2 * naive["params"]


def test_activations_scale_with_batch_and_shared_weights_cast_once():
    a64 = mm.estimate(mm.GPT2_124M, dict(head_impl="fused"))
    a32 = mm.estimate(dict(mm.GPT2_124M, B=32), dict(head_impl="fused"))
    shared = mm.estimate(mm.GPT2_124M, dict(share_weights=True, layer_heads=True, head_impl="fused"))
    # per-layer activations are linear in B; only the bf16 weight casts are not
    casts_plain = a64["activations"] - 2 * (a64["activations"] - a32["activations"])
    casts_shared = shared["activations"] - (a64["activations"] - casts_plain)
    assert casts_plain == pytest.approx(12 * casts_shared)   # 12 stored blocks vs 1
    assert 2 * 7_077_888 <= casts_shared <= 2 * 7_100_000   # one block's matmul weights, bf16


def test_default_batch_fits_80gb_only_without_naive_all_layer_heads():
    rows = {label: mm.estimate(mm.GPT2_124M, ov) for label, ov in mm.CASES}
    assert rows["shared + all heads, fused"]["peak"] <= mm.BUDGET_80GB
    assert rows["shared + all heads, naive"]["peak"] > mm.BUDGET_80GB
    best = mm.max_batch(mm.GPT2_124M, dict(share_weights=True, exit_loss="all-layers", head_impl="naive"))
    assert mm.estimate(dict(mm.GPT2_124M, B=best), dict(share_weights=True, exit_loss="all-layers",
                                                       head_impl="naive"))["peak"] <= mm.BUDGET_80GB
    assert mm.estimate(dict(mm.GPT2_124M, B=best + 1), dict(share_weights=True, exit_loss="all-layers",
                                                           head_impl="naive"))["peak"] > mm.BUDGET_80GB


def test_live_peak_counts_torch_cpu_allocations_exactly():
    import torch

    def fn():
        a = torch.ones(1000, 1000)          # 4 MB
        b = a * 2                           # 8 MB live
        del a
        c = torch.ones(2000, 1000)          # 12 MB live: the peak
        return float(b.sum() + c.sum())

    peak, final = mm.live_peak(fn)
    assert 12_000_000 <= peak <= 12_000_000 + 4096
    assert final <= 4096                    # everything freed but scalars


@pytest.mark.slow
@pytest.mark.parametrize("label", ["plain, naive head", "shared + all heads, checkpoint",
                                   "shared + early exit (4-test, sample), fused"])
def test_model_matches_measured_cpu_peak_within_15_percent(label):
    """One small shape, bf16 autocast on CPU: predicted / measured peak in [0.85, 1.15].
    (`bench.py --memory --validate` runs all cases at 3 shapes.)"""
    ov = dict(mm.CASES)[label]
    got = mm.measure(SHAPE, ov, "bf16")
    pred = mm.estimate(SHAPE, ov, "bf16", device="cpu")["peak"]
    assert 0.85 <= pred / got <= 1.15, (label, got, pred)


@pytest.mark.slow
def test_bench_memory_prints_the_124m_table():
    p = run_py([sys.executable, os.path.join(ROOT, "bench.py"), "--memory"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = [l for l in p.stdout.splitlines() if l.startswith("| ") and "GiB" not in l]
    assert len(rows) == 1 + len(mm.CASES)
    assert "B=64, T=1024, bf16" in p.stdout
    bad = run_py([sys.executable, os.path.join(ROOT, "bench.py"), "--memory", "--B", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --B and --T must be >= 1"
