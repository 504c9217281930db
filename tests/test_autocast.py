"""bf16 autocast, the CUDA training dtype, run on CPU (torch.autocast("cpu", torch.bfloat16)):
a shared-weight model with a head at every layer and early exit trains like fp32, the fused
head's custom backward handles every dtype mix, and confidences are fp32."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import exits  # noqa: E402
import heads  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# per-layer CE loss (a loss that falls, so 2 % is a statement about training); sampled exits with
# state propagation, so the exit masks change what deeper layers compute
CFG = dict(block_size=32, vocab_size=64, n_layer=3, n_head=2, n_embd=32, share_weights=True,
           layer_heads=True, early_exit=True, exit_mode="sample", exit_propagate=True,
           exit_loss="all-layers", head_impl="fused")


def _data(n, B=4, T=32, V=64, seed=0):
    """A learnable stream (a periodic pattern with 10 % noise) cut into n batches."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n * B * (T + 1)) % 13 + 3
    noise = torch.randint(0, V, base.shape, generator=g)
    s = torch.where(torch.rand(base.shape, generator=g) < 0.1, noise, base).view(n, B, T + 1)
    return [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in s]


def _train(bf16, steps=50):
    torch.manual_seed(0)
    m = GPT(GPTConfig(**CFG))
    opt = m.configure_optimizers(0.1, 3e-3, (0.9, 0.95), "cpu")
    losses = []
    for step, (x, y) in enumerate(_data(steps)):
        m.set_progress(step / steps, step)
        torch.manual_seed(1000 + step)          # the same sampled exits in both runs
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = m(x, y, return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_bf16_losses_within_2_percent_of_fp32_over_50_steps():
    fp32, bf16 = _train(False), _train(True)
    rel = [abs(b - f) / abs(f) for f, b in zip(fp32, bf16)]
    assert max(rel) < 0.02, (max(rel), rel.index(max(rel)))
    assert fp32[-1] < 0.8 * fp32[0]              # it learned: the comparison is not of noise


@pytest.mark.parametrize("impl", sorted(heads.HEAD_IMPLS))
@pytest.mark.parametrize("confidence", sorted(exits.CONFIDENCES))
def test_confidences_are_fp32_under_bf16_autocast(impl, confidence):
    torch.manual_seed(0)
    m = GPT(GPTConfig(**dict(CFG, head_impl=impl, confidence=confidence)))
    x, y = _data(1)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = m._trunk(x, y, early=True, threshold=0.5, mode="sample", heads_on=True)
        _, loss = m(x, y, return_logits=False)
    assert [lo.confidence.dtype for lo in r["layers"]] == [torch.float32] * CFG["n_layer"]
    assert [lo.xe.dtype for lo in r["layers"]] == [torch.float32] * CFG["n_layer"]
    assert loss.dtype == torch.float32
    loss.backward()                               # through the head's backward under autocast
    assert all(p.grad.dtype == torch.float32 for p in m.parameters())


@pytest.mark.parametrize("h_dtype, autocast", [(torch.float32, False), (torch.float32, True),
                                               (torch.bfloat16, True)])
def test_fused_backward_dtypes_and_values_match_naive(h_dtype, autocast):
    """FusedHead.backward returns each gradient in its input's dtype (bf16 h, fp32 W) under
    autocast with fp32 or bf16 hidden states, and matches the naive head computed the same way.
    (bf16 h with fp32 W outside autocast: naive's F.linear refuses the mix; the model never
    produces it.)"""
    torch.manual_seed(0)
    h0 = torch.randn(40, 32).to(h_dtype)
    w0 = torch.randn(64, 32) * 0.3
    t = torch.randint(0, 64, (40,))
    grads = {}
    for impl in ("naive", "fused"):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            o = heads.head_outputs(h, w, t, impl=impl, **({"chunk_size": 16, "vocab_chunk": 24}
                                                          if impl == "fused" else {}))
        assert {o.ce.dtype, o.p_max.dtype, o.p_second.dtype, o.p_target.dtype} == {torch.float32}
        (o.ce.mean() + o.p_max.mean() - 0.5 * o.p_second.mean() + o.p_target.mean()).backward()
        assert (h.grad.dtype, w.grad.dtype) == (h_dtype, torch.float32)
        grads[impl] = (h.grad.float(), w.grad)
    low = autocast or h_dtype == torch.bfloat16
    tol = dict(rtol=2e-2, atol=5e-3) if low else dict(rtol=1e-5, atol=1e-6)
    for f, n in zip(grads["fused"], grads["naive"]):
        torch.testing.assert_close(f, n, **tol)
