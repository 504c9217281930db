"""heads.py: the fused and checkpoint heads against the fp32 naive reference.

Values, argmax and gradients w.r.t. h and the (tied) weight for every differentiable output,
alone and together, over chunk sizes that do and do not divide N; bf16 autocast on CPU; inputs
without requires_grad; and that the fused head saves no (N, V) tensor for backward.
"""
import pytest
import torch

import heads
from model import GPT, GPTConfig

N, C, V = 100, 32, 256
CHUNKS = [1, 7, 64, N - 1, N, N + 5]       # rows per tile; 7, 64, N-1 do not divide N
VOCAB_CHUNKS = [1, 2, 7, 100, V - 1, V, V + 3]   # vocab columns per tile (V = 256)
# (rows, vocab columns) tiles: every row chunk with whole-vocab tiles, every vocab chunk with
# N-1 rows (two row chunks, 99 + 1), and tilings that divide neither
TILES = ([(c, V) for c in CHUNKS] + [(N - 1, vc) for vc in VOCAB_CHUNKS]
         + [(7, 33), (64, 100)])
TOL = dict(atol=1e-5, rtol=1e-5)
OUTPUTS = ["ce", "p_max", "p_second", "p_target"]
COMBOS = [[o] for o in OUTPUTS] + [OUTPUTS]


def make(seed=0, n=N, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, C, generator=g, dtype=dtype)                    # ln_f-like scale
    w = (0.3 * torch.randn(V, C, generator=g)).to(dtype)               # logits O(1..3)
    t = torch.randint(0, V, (n,), generator=g)
    return h.requires_grad_(), w.requires_grad_(), t


def weighted_sum(out, names, seed):
    """sum_k sum_i u_k[i] * out.k[i] with random upstream gradients u_k."""
    g = torch.Generator().manual_seed(1000 + seed)
    total = 0.0
    for name in names:
        x = getattr(out, name)
        total = total + (torch.randn(x.shape, generator=g) * x).sum()
    return total


def assert_outputs_close(a, b, tol=TOL):
    for name in ("ce", "p_max", "p_second", "p_target"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype == torch.float32, name
            torch.testing.assert_close(x, y, **tol, msg=name)
    assert torch.equal(a.argmax, b.argmax)


def tile_kw(tile):
    return dict(chunk_size=tile[0], vocab_chunk=tile[1])


@pytest.mark.parametrize("tile", TILES, ids=str)
@pytest.mark.parametrize("with_targets", [True, False])
def test_fused_outputs_match_naive(tile, with_targets):
    h, w, t = make(tile[0] + tile[1])
    t = t if with_targets else None
    ref = heads.head_outputs(h, w, t, impl="naive")
    out = heads.head_outputs(h, w, t, impl="fused", **tile_kw(tile))
    assert_outputs_close(out, ref)
    if with_targets:       # ce is the usual cross-entropy
        torch.testing.assert_close(out.ce, torch.nn.functional.cross_entropy(
            h @ w.t(), t, reduction="none"), **TOL)


@pytest.mark.parametrize("tile", TILES, ids=str)
@pytest.mark.parametrize("names", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_fused_grads_match_naive(tile, names):
    seed = tile[0] + tile[1]
    h, w, t = make(seed)
    grads = []
    for impl, kw in (("naive", {}), ("fused", tile_kw(tile))):
        out = heads.head_outputs(h, w, t, impl=impl, **kw)
        grads.append(torch.autograd.grad(weighted_sum(out, names, seed), (h, w)))
    for g_fused, g_ref, what in zip(grads[1], grads[0], ("h", "weight")):
        torch.testing.assert_close(g_fused, g_ref, **TOL, msg=what)


@pytest.mark.parametrize("tile", [(7, 100), (N, V)], ids=str)
def test_fused_grads_without_targets(tile):
    h, w, _ = make(3)
    names = ["p_max", "p_second"]
    grads = [torch.autograd.grad(weighted_sum(heads.head_outputs(h, w, None, impl=impl, **kw),
                                              names, 3), (h, w))
             for impl, kw in (("naive", {}), ("fused", tile_kw(tile)))]
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("frozen", ["h", "weight"])
def test_fused_one_input_without_grad(frozen):
    h, w, t = make(4)
    (h if frozen == "h" else w).requires_grad_(False)
    live = w if frozen == "h" else h
    res = []
    for impl, kw in (("naive", {}), ("fused", {"chunk_size": 9, "vocab_chunk": 50})):
        out = heads.head_outputs(h, w, t, impl=impl, **kw)
        res.append(torch.autograd.grad(weighted_sum(out, OUTPUTS, 4), live)[0])
    torch.testing.assert_close(res[1], res[0], **TOL)


def test_fused_no_grad_mode_and_plain_tensors():
    h, w, t = make(5)
    ref = heads.head_outputs(h.detach(), w.detach(), t, impl="naive")
    with torch.no_grad():
        out = heads.head_outputs(h, w, t, impl="fused", chunk_size=13)
    assert not out.ce.requires_grad and not out.p_max.requires_grad
    assert_outputs_close(out, ref)
    out2 = heads.head_outputs(h.detach(), w.detach(), t, impl="fused", chunk_size=13)
    assert_outputs_close(out2, ref)


def test_fused_tied_weight_used_by_embedding_and_several_heads():
    """The weight is the token embedding and the head of two layers: all gradient paths add."""
    g = torch.Generator().manual_seed(6)
    idx = torch.randint(0, V, (N,), generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    m = torch.randn(C, C, generator=g) / C ** 0.5
    grads = []
    for impl, kw in (("naive", {}), ("fused", {"chunk_size": 17, "vocab_chunk": 60})):
        w = (0.3 * torch.randn(V, C, generator=torch.Generator().manual_seed(7))).requires_grad_()
        x1 = w[idx]                                   # embedding lookup (N, C)
        x2 = torch.tanh(x1 @ m) + x1                  # a "layer"
        o1 = heads.head_outputs(x1, w, t, impl=impl, **kw)
        o2 = heads.head_outputs(x2, w, t, impl=impl, **kw)
        loss = o1.ce.mean() + o2.ce.mean() - (o1.p_max * o2.p_target).mean()
        grads.append(torch.autograd.grad(loss, w)[0])
    torch.testing.assert_close(grads[1], grads[0], **TOL)


@pytest.mark.parametrize("tile", [(7, 100), (N, V)], ids=str)
def test_fused_bf16_autocast_cpu(tile):
    """Under bf16 autocast both heads run the matmul in bf16; fused tracks naive closely and
    both stay near the fp32 values."""
    h, w, t = make(8)
    res = []
    for impl, kw in (("naive", {}), ("fused", tile_kw(tile))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = heads.head_outputs(h, w, t, impl=impl, **kw)
        g = torch.autograd.grad(weighted_sum(out, OUTPUTS, 8), (h, w))
        assert g[0].dtype == h.dtype and g[1].dtype == w.dtype
        res.append((out, g))
    (ref, g_ref), (out, g_out) = res
    assert out.p_max.dtype == torch.float32
    assert_outputs_close(out, ref, tol=dict(atol=1e-3, rtol=1e-3))
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    exact = heads.head_outputs(h, w, t, impl="naive")
    torch.testing.assert_close(out.ce, exact.ce, atol=5e-2, rtol=5e-2)


def saved_numels(fn):
    sizes = []

    def pack(x):
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return sizes


@pytest.mark.parametrize("with_targets", [True, False])
def test_fused_saves_no_n_by_v_tensor(with_targets):
    h, w, t = make(9)
    t = t if with_targets else None
    assert N * V > max(N * C, V * C)         # so the bound below can tell (N, V) apart
    naive = saved_numels(lambda: heads.head_outputs(h, w, t, impl="naive").p_max.sum())
    assert max(naive) >= N * V               # the hook does see the naive (N, V) tensors
    fused = saved_numels(lambda: heads.head_outputs(h, w, t, impl="fused", chunk_size=N,
                                                    vocab_chunk=V).p_max.sum())
    assert max(fused) <= max(N * C, V * C)


@pytest.mark.parametrize("names", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_checkpoint_matches_naive(names):
    h, w, t = make(10)
    outs, grads = [], []
    for impl in ("naive", "checkpoint"):
        out = heads.head_outputs(h, w, t, impl=impl)
        outs.append(out)
        grads.append(torch.autograd.grad(weighted_sum(out, names, 10), (h, w)))
    assert_outputs_close(outs[1], outs[0])
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, **TOL)


def test_registry_and_bad_chunk():
    assert {"naive", "checkpoint", "fused"} <= set(heads.HEAD_IMPLS)
    h, w, t = make(11)
    with pytest.raises(ValueError, match="chunk_size"):
        heads.head_outputs(h, w, t, impl="fused", chunk_size=0)
    with pytest.raises(ValueError, match="vocab_chunk"):
        heads.head_outputs(h, w, t, impl="fused", vocab_chunk=0)
    for n_rows, dev, mib in ((512, "cpu", 32), (10 ** 5, "cpu", 32), (65536, "cuda", 256)):
        rows, cols = heads.default_chunk_sizes(n_rows, 50304, dev)
        assert 1 <= rows <= n_rows and rows * cols * 4 <= mib * 2 ** 20
        assert -(-50304 // cols) * cols - 50304 < -(-50304 // cols)   # equal vocab slices


@pytest.mark.parametrize("exit_loss", ["all-layers", "4-test"])
def test_model_fused_equals_naive(exit_loss):
    """GPT with shared weights and a head after every layer: same loss and parameter gradients
    with head_impl fused as with naive."""
    res = []
    for impl in ("naive", "fused"):
        torch.manual_seed(0)
        cfg = GPTConfig(block_size=16, vocab_size=V, n_layer=3, n_head=2, n_embd=C,
                        share_weights=True, layer_heads=True, exit_loss=exit_loss,
                        head_impl=impl)
        model = GPT(cfg)
        g = torch.Generator().manual_seed(1)
        idx = torch.randint(0, V, (3, 16), generator=g)
        tgt = torch.randint(0, V, (3, 16), generator=g)
        _, loss = model(idx, tgt, return_logits=False)
        loss.backward()
        res.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(res[1][0], res[0][0], **TOL)
    for name, g in res[0][1].items():
        torch.testing.assert_close(res[1][1][name], g, **TOL, msg=name)
