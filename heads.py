"""Per-layer output heads: hidden states -> per-token statistics, without keeping (N, V) logits.

Every per-layer head and the final head of model.py go through `head_outputs` (one place), so
the implementation can be swapped by name:

- "naive":      logits = h @ W.T in fp32, then softmax statistics. Materialises (N, V) and keeps
                it for backward. The reference the others are tested against.
- "checkpoint": the naive computation under torch.utils.checkpoint: only h is saved, the (N, V)
                logits are recomputed in backward, so n_layer heads do not hold n_layer logits
                (but each backward still builds a full (N, V) logits + softmax transiently).
- "fused":      a custom autograd.Function (`FusedHead`) that loops over tiles of rows x vocab:
                forward keeps per row only an online logsumexp, the top-2 logits / indices and the
                target logit; backward recomputes each tile's logits, forms the combined gradient
                of all four outputs w.r.t. the logits, and accumulates grad_h / grad_W tile by
                tile. No (N, V) tensor ever exists; the largest temporary is one tile
                (chunk_size, vocab_chunk), ~32 MiB on CPU and ~256 MiB on CUDA by default.
                Costs one extra logits matmul (the recompute) over naive.

A confidence that needs more than these statistics (exits.register_confidence's `logit_stat`,
e.g. the entropy or the KL to the previous layer) gets it from `logit_statistic`: a per-row
function of the logits, on the whole logits (naive) or in row chunks under checkpoint.

Inputs:  h (N, C) (any float dtype; autocast respected), weight (V, C) (the tied lm_head),
         targets (N,) int64 or None.
Outputs: HeadOut of (N,) float32 tensors (argmax int64); ce / p_target are None without targets.
         ce, p_max, p_second and p_target are differentiable w.r.t. h and weight.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class HeadOut(NamedTuple):
    ce: Optional[torch.Tensor]        # (N,) per-token cross-entropy, fp32
    p_max: torch.Tensor               # (N,) max softmax probability (the journal's confidence)
    p_second: torch.Tensor            # (N,) second-largest softmax probability
    argmax: torch.Tensor              # (N,) int64 most likely next token
    p_target: Optional[torch.Tensor]  # (N,) softmax probability of the target, fp32


def _naive_stats(h, weight, targets):
    logits = F.linear(h, weight).float()                    # (N, V)
    logp = F.log_softmax(logits, dim=-1)                    # (N, V)
    top2, idx2 = logp.topk(2, dim=-1)                       # (N, 2)
    p_max, p_second = top2[:, 0].exp(), top2[:, 1].exp()
    if targets is None:
        return p_max, p_second, idx2[:, 0]
    lp_t = logp.gather(1, targets[:, None]).squeeze(1)      # (N,)
    return p_max, p_second, idx2[:, 0], -lp_t, lp_t.exp()


def _pack(res, targets):
    if targets is None:
        p_max, p_second, am = res
        return HeadOut(None, p_max, p_second, am, None)
    p_max, p_second, am, ce, p_t = res
    return HeadOut(ce, p_max, p_second, am, p_t)


def naive_head_outputs(h, weight, targets=None):
    return _pack(_naive_stats(h, weight, targets), targets)


def checkpoint_head_outputs(h, weight, targets=None):
    if not (torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)):
        return naive_head_outputs(h, weight, targets)
    res = checkpoint(_naive_stats, h, weight, targets, use_reentrant=False)
    return _pack(res, targets)


# ----------------------------------------------------------------------------------------------
# fused: tiled linear + softmax statistics, logits recomputed tile by tile in backward

def default_chunk_sizes(n_rows, vocab_size, device):
    """(rows, vocab columns) of one logits tile. A tile's fp32 logits are at most ~32 MiB on CPU
    and ~256 MiB on CUDA; rows up to 1024 (CPU) / 4096 (CUDA), the vocab split into equal slices.
    Tall tiles keep both matmuls and both gradient accumulators efficient: grad_W is accumulated
    per vocab slice (slice x C) and grad_h per row chunk (rows x C), never (V, C) per row chunk."""
    cuda = torch.device(device).type == "cuda"
    budget = (64 if cuda else 8) * 2 ** 20                     # fp32 elements per tile
    rows = max(1, min(n_rows, 4096 if cuda else 1024))
    cols = max(256, budget // rows)
    n_slices = -(-vocab_size // cols)
    return rows, -(-vocab_size // n_slices)


def _compute_dtype(h, weight):
    """The dtype F.linear(h, weight) would run in here: the autocast dtype if autocast is on for
    this device (and the inputs are ones autocast casts), else the promoted input dtype."""
    dev = h.device.type
    castable = (torch.float32, torch.float16, torch.bfloat16)
    if torch.is_autocast_enabled(dev) and h.dtype in castable and weight.dtype in castable:
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(h.dtype, weight.dtype)


def _tiles(n, step):
    return [(s, min(s + step, n)) for s in range(0, n, step)]


class FusedHead(torch.autograd.Function):
    """(h (N, C), weight (V, C), targets (N,) | None) -> (ce, p_max, p_second, argmax, p_target),
    each (N,) fp32 (argmax int64; ce, p_target None without targets), never holding (N, V).

    Logits are computed tile by tile, (rows, cols) = (chunk_size, vocab_chunk): F.linear in
    `compute_dtype` (the autocast dtype, as naive gets under autocast), upcast to fp32. Forward
    keeps per row an online logsumexp, the running top-2 (value, index) and the target logit.
    With z the fp32 logits of a row, p = softmax(z), t the target and a / a2 the top-2 indices,
    the gradient w.r.t. z of all four differentiable outputs is
        g_z = g_ce (p - e_t) + g_pmax p_max (e_a - p) + g_psecond p_second (e_a2 - p)
              + g_pt p_t (e_t - p)
            = p * coef + e_t (g_pt p_t - g_ce) + e_a g_pmax p_max + e_a2 g_psecond p_second,
        coef = g_ce - g_pmax p_max - g_psecond p_second - g_pt p_t                   (per row)
    Backward recomputes each tile's p = exp(z - lse) and accumulates grad_h += (p coef) @ W and
    grad_W += (p coef)^T @ h (matmuls in compute_dtype, fp32 accumulators, cast at the end); the
    one-hot terms are added once with a gather (grad_h) and an index_add (grad_W)."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_size, vocab_chunk, compute_dtype):
        N, V = h.shape[0], weight.shape[0]
        if V < 2:
            raise ValueError(f"head needs vocab_size >= 2 for p_second, got {V}")
        f32 = dict(device=h.device, dtype=torch.float32)
        lse, top_v = torch.empty(N, **f32), torch.empty(N, 2, **f32)
        top_i = torch.empty(N, 2, device=h.device, dtype=torch.long)
        z_t = torch.empty(N, **f32) if targets is not None else None
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.detach().to(compute_dtype), weight.detach().to(compute_dtype)
            for s, e in _tiles(N, chunk_size):
                n = e - s
                m = torch.full((n,), float("-inf"), **f32)              # running max
                ssum = torch.zeros(n, **f32)                            # sum exp(z - m)
                tv = torch.full((n, 2), float("-inf"), **f32)          # running top-2
                ti = torch.zeros(n, 2, device=h.device, dtype=torch.long)
                zt = torch.zeros(n, **f32)
                for a, b in _tiles(V, vocab_chunk):
                    z = F.linear(hc[s:e], wc[a:b]).float()              # (n, b - a) fp32
                    if targets is not None:
                        col = targets[s:e] - a
                        inside = (col >= 0) & (col < b - a)
                        got = z.gather(1, col.clamp(0, b - a - 1)[:, None]).squeeze(1)
                        zt = torch.where(inside, got, zt)
                    v, i = z.topk(min(2, b - a), dim=1)                 # (n, <=2)
                    tv, j = torch.cat([tv, v], 1).topk(2, dim=1)
                    ti = torch.cat([ti, i + a], 1).gather(1, j)
                    m_new = torch.maximum(m, v[:, 0])
                    ssum = ssum * (m - m_new).exp() + z.sub_(m_new[:, None]).exp_().sum(1)
                    m = m_new
                lse[s:e], top_v[s:e], top_i[s:e] = m + ssum.log(), tv, ti
                if targets is not None:
                    z_t[s:e] = zt
        p_max, p_second = (top_v[:, 0] - lse).exp(), (top_v[:, 1] - lse).exp()
        argmax = top_i[:, 0].clone()
        ce = p_t = None
        if targets is not None:
            ce, p_t = lse - z_t, (z_t - lse).exp()
        ctx.mark_non_differentiable(argmax)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h, weight, targets, lse, top_i, p_max, p_second, p_t)
        ctx.tile, ctx.compute_dtype = (chunk_size, vocab_chunk), compute_dtype
        return ce, p_max, p_second, argmax, p_t

    @staticmethod
    def backward(ctx, g_ce, g_pmax, g_psecond, g_argmax, g_pt):
        h, weight, targets, lse, top_i, p_max, p_second, p_t = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        coef = torch.zeros_like(lse)                # per-row coefficient of p
        onehot = []                                 # (column (N,), value (N,)) terms of g_z
        if g_ce is not None:
            coef += g_ce
            onehot.append((targets, -g_ce))
        if g_pmax is not None:
            coef -= g_pmax * p_max
            onehot.append((top_i[:, 0], g_pmax * p_max))
        if g_psecond is not None:
            coef -= g_psecond * p_second
            onehot.append((top_i[:, 1], g_psecond * p_second))
        if g_pt is not None:
            coef -= g_pt * p_t
            onehot.append((targets, g_pt * p_t))
        if not onehot or not (need_h or need_w):
            return None, None, None, None, None, None
        (N, C), V = h.shape, weight.shape[0]
        cd, (rows, cols) = ctx.compute_dtype, ctx.tile
        f32 = dict(device=h.device, dtype=torch.float32)
        grad_h = torch.zeros(N, C, **f32) if need_h else None
        grad_w = torch.zeros(V, C, **f32) if need_w else None
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.detach().to(cd), weight.detach().to(cd)
            for a, b in _tiles(V, cols):                # vocab slice outer: grad_W[a:b] stays hot
                for s, e in _tiles(N, rows):
                    z = F.linear(hc[s:e], wc[a:b]).float()              # (n, b - a) recomputed
                    g = z.sub_(lse[s:e, None]).exp_().mul_(coef[s:e, None]).to(cd)   # p * coef
                    if cd == torch.float32:
                        if need_h:
                            grad_h[s:e].addmm_(g, wc[a:b])              # (n, C)
                        if need_w:
                            grad_w[a:b].addmm_(g.t(), hc[s:e])          # (b - a, C)
                    else:
                        if need_h:
                            grad_h[s:e] += g @ wc[a:b]
                        if need_w:
                            grad_w[a:b] += g.t() @ hc[s:e]
            for col, val in onehot:                     # the e_t / e_a / e_a2 terms
                val = val.float()[:, None]
                if need_h:
                    grad_h += val * wc[col].float()
                if need_w:
                    grad_w.index_add_(0, col, val * hc.float())
        grad_h = grad_h.to(h.dtype) if need_h else None
        grad_w = grad_w.to(weight.dtype) if need_w else None
        return grad_h, grad_w, None, None, None, None


def fused_head_outputs(h, weight, targets=None, chunk_size=None, vocab_chunk=None):
    """Tiled head without (N, V) logits (see FusedHead): tiles of chunk_size rows x vocab_chunk
    vocabulary columns, defaults from default_chunk_sizes."""
    rows, cols = default_chunk_sizes(h.shape[0], weight.shape[0], h.device)
    chunk_size = rows if chunk_size is None else int(chunk_size)
    vocab_chunk = cols if vocab_chunk is None else int(vocab_chunk)
    if chunk_size < 1 or vocab_chunk < 1:
        raise ValueError(f"chunk_size and vocab_chunk must be >= 1, got {chunk_size}, "
                         f"{vocab_chunk}")
    ce, p_max, p_second, am, p_t = FusedHead.apply(h, weight, targets, chunk_size, vocab_chunk,
                                                   _compute_dtype(h, weight))
    return HeadOut(ce, p_max, p_second, am, p_t)


# ----------------------------------------------------------------------------------------------
# a per-row statistic of the logits (a confidence's `logit_stat`, exits.register_confidence)


def _logit_stat_rows(fn, h, weight, h_prev):
    z = F.linear(h, weight).float()                                     # (n, V)
    return fn(z, None if h_prev is None else F.linear(h_prev, weight).float())


def logit_statistic(fn, h, weight, h_prev=None, impl="fused", rows=None):
    """fn(z (n, V) fp32, z_prev (n, V) | None) -> (n,) for the logits z = h @ W.T of h (N, C)
    (and z_prev of h_prev (N, C), e.g. the previous layer's head input) -> (N,) fp32, with
    autograd gradients w.r.t. h, h_prev and weight. naive: on the whole (N, V) logits;
    checkpoint / fused: row chunks of `rows` (default: the fused tile budget / V, so one chunk
    is as large as one fused tile) under torch.utils.checkpoint, so no (N, V) tensor is kept
    (each chunk's logits are recomputed in backward: one extra head matmul over naive)."""
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (h, weight, h_prev))
    if impl == "naive":
        return _logit_stat_rows(fn, h, weight, h_prev)
    r, c = default_chunk_sizes(h.shape[0], weight.shape[0], h.device)
    rows = max(1, (r * c) // weight.shape[0]) if rows is None else int(rows)
    out = []
    for s, e in _tiles(h.shape[0], rows):
        hp = None if h_prev is None else h_prev[s:e]
        if grad:
            out.append(checkpoint(_logit_stat_rows, fn, h[s:e], weight, hp, use_reentrant=False))
        else:
            out.append(_logit_stat_rows(fn, h[s:e], weight, hp))
    return torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)


HEAD_IMPLS = {
    "naive": naive_head_outputs,
    "checkpoint": checkpoint_head_outputs,
    "fused": fused_head_outputs,
}


def head_outputs(h, weight, targets=None, impl="fused", **kwargs):
    """Per-token head statistics for h (N, C); see the module docstring."""
    return HEAD_IMPLS[impl](h, weight, targets, **kwargs)
