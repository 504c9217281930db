"""Per-layer output heads: hidden states -> per-token statistics, without keeping (N, V) logits.

Every per-layer head and the final head of model.py go through `head_outputs` (one place), so
the implementation can be swapped by name:

- "naive":      logits = h @ W.T in fp32, then softmax statistics. Materialises (N, V) and keeps
                it for backward. The reference the others are tested against.
- "checkpoint": the naive computation under torch.utils.checkpoint: only h is saved, the (N, V)
                logits are recomputed in backward, so n_layer heads do not hold n_layer logits.

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


def head_logits(h, weight):
    """(…, C) x (V, C) -> (…, V) logits in the autocast dtype (for sampling and eval)."""
    return F.linear(h, weight)


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


HEAD_IMPLS = {
    "naive": naive_head_outputs,
    "checkpoint": checkpoint_head_outputs,
}


def head_outputs(h, weight, targets=None, impl="checkpoint", **kwargs):
    """Per-token head statistics for h (N, C); see the module docstring."""
    return HEAD_IMPLS[impl](h, weight, targets, **kwargs)
