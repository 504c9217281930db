"""Confidence-based early exit: confidences, exit rules, exit masks, and the journal's losses.

Everything here is a pure function of per-layer tensors; nothing touches the model. model.py
loops over layers l = 0..L-1, builds one `LayerOut` per layer (all tensors (B, T)) and calls

    trigger = EXIT_RULES[exit_mode](confidence.detach(), exit_threshold)   # bool (B, T)
    just_triggered, next_mask = step_masks(mask_BT, trigger, is_last)      # float (B, T)
    terms = EXIT_LOSSES[exit_loss](layers, LossContext(config, progress, targets))

Names follow the journal (../shared/seeds/000): `confidence`, `mask_BT` (1 = token still running
when it enters this layer), `just_triggered` (1 = token exits at this layer; at the last layer
every still-running token), `xe` (per-token cross-entropy), `earlystop`, `earlystopdict`.

Loss terms (`LossTerms(loss, confloss, targetloss)`, the journal's log fields):
- `targetloss`: an ordinary cross-entropy against the targets that is *added* to the loss
  (the last layer's mean CE in 1-noise, 2-test, confidence-penalty, reward-prev-token; the
  weighted last-layer CE in layerskip); 0 where the loss has no such separate term.
- `confloss`: every other term (the per-layer confidence / exit / feedback part).
- For every experiment loss `loss == confloss + targetloss`. The plain baselines `final` and
  `all-layers` report confloss = targetloss = 0, as the journal's baseline logs do
  (`confloss: 0.0000, targetloss: 0.0000`).

Deeper layers of exited tokens: the losses read whatever the model put in LayerOut for them.
The journal computed every layer for every token ("we always multiply them in at every layer
(even if it is not sampled)"), i.e. model exit_propagate=False in training; with propagation
their deeper-layer xe / confidence are those of the frozen exit state.

Numerics: log(1 - x) terms clamp 1 - x at `ctx.eps` (default 1e-6) so they stay finite; below
the clamp the term is constant and has no gradient.
"""
import heapq
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# confidences: fn(out: ConfIn) -> (N,) fp32, higher = more ready to exit. Registered with what
# they need beyond the head statistics (p_max, p_second, argmax, p_target, ce); the model and
# the decoder provide exactly that (model._trunk, decode._Measure):
#   logit_stat=f   f(z (n, V) fp32 logits, z_prev (n, V) | None) -> (n,): a per-row statistic
#                  of the layer's logits, computed by heads.logit_statistic (tiled in the fused
#                  impl, gradients by autograd) and read as out.stat;
#   prev=True      z_prev is the previous layer's logits (out.stat is None at layer 0);
#   state=True     out.x_in, out.x_out (n, C): the residual stream entering / leaving the layer;
#   history=True   out.hist: argmax (n,) of the earlier layers, oldest first (no exit_layer_frac);
#   learned=True   out.exit_logit (n,): the model's exit classifier on the stop-gradient head
#                  input (GPT.exit_classifier), trained by `exit_classifier_loss`;
#   knob="field"   a 0/1 measure whose trade-off is set by this int GPTConfig field rather than
#                  the threshold (eval_exit.py sweeps it over 1..n_layer-1);
#   from_logits=g  g(z (n, V) fp32 logits) -> (n,): the value the decoder reads (no targets)
#                  from the logits alone, its per-layer check without a ConfIn (tests: equal);
#   from_row=h     h(zs: list of V floats, one row's logits) -> float: the same value in Python
#                  float64 arithmetic, what the decoder reads for a single row of at most
#                  decode._ROW_MAX_VALUES logits on CPU (one tolist() instead of a chain of
#                  tensor ops; decode._row_fired), compared with the threshold where it is
#                  clear of it (tests: within 1e-6);
#   head=False     reads no head statistic (out.head is None): the decoder runs the head only
#                  for the tokens that exit, not at every layer.

CONFIDENCES: Dict[str, Callable] = {}
CONFIDENCE_MAX: Dict[str, float] = {}    # name -> the largest value the confidence can take


def register_confidence(name, logit_stat=None, prev=False, state=False, history=False,
                        learned=False, knob=None, max_value=1.0, from_logits=None, from_row=None,
                        head=True):
    if from_row is not None and from_logits is None:
        raise ValueError(f"confidence {name!r}: from_row needs from_logits (its fp32 form)")

    def wrap(fn):
        CONFIDENCES[name] = fn
        CONFIDENCE_MAX[name] = max_value
        fn.logit_stat, fn.prev, fn.state, fn.history, fn.learned, fn.knob = (
            logit_stat, prev, state, history, learned, knob)
        fn.from_logits, fn.from_row, fn.head = from_logits, from_row, head
        return fn
    return wrap


class ConfIn:
    """What a confidence reads at one layer: the head statistics (attributes of `head`, a
    heads.HeadOut or anything with p_max, p_second, argmax, p_target, ce) and, as its
    registration asks, stat / x_in / x_out / hist / exit_logit (see above). All rows (n,)."""

    def __init__(self, head, layer=0, config=None, stat=None, x_in=None, x_out=None, hist=(),
                 exit_logit=None):
        self.head, self.layer, self.config, self.stat = head, layer, config, stat
        self.x_in, self.x_out, self.hist, self.exit_logit = x_in, x_out, list(hist), exit_logit

    def __getattr__(self, name):
        if name == "head":                  # not set yet (copy / unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.head, name)


def _p_max(z):
    return torch.softmax(z, dim=-1).amax(dim=-1)


def _p_max_row(zs):
    """max_v softmax(zs)_v = exp(max zs) / sum_v exp(zs_v) of one row zs (list of floats);
    shifted by max zs first only where exp could overflow or underflow (slower)."""
    m, exp = max(zs), math.exp
    if -600.0 < m < 600.0:
        return exp(m) / sum(map(exp, zs))
    return 1.0 / sum([exp(z - m) for z in zs])


@register_confidence("max-prob", from_logits=_p_max, from_row=_p_max_row)
def max_prob(out):
    """p_max: largest softmax probability of the layer's head (the journal's confidence)."""
    return out.p_max


def _top2_margin(z):
    top = torch.softmax(z, dim=-1).topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def _top2_margin_row(zs):
    """p_max - p_second of one row zs (list of floats): (1 - exp(z2 - z1)) / sum exp(zs - z1)
    with z1 >= z2 the two largest logits."""
    z1, z2 = heapq.nlargest(2, zs)
    exp = math.exp
    if -600.0 < z1 < 600.0:
        return (exp(z1) - exp(z2)) / sum(map(exp, zs))
    return (1.0 - exp(z2 - z1)) / sum([exp(z - z1) for z in zs])


@register_confidence("top2-margin", from_logits=_top2_margin, from_row=_top2_margin_row)
def top2_margin(out):
    """p_max - p_second: margin between the two most likely next tokens."""
    return out.p_max - out.p_second


@register_confidence("target-prob", from_logits=_p_max,            # no targets when decoding
                     from_row=_p_max_row)
def target_prob(out):
    """p_target: probability of the true next token (the journal's "confidence of target",
    6-test). Without targets (generation, HellaSwag) the target is the token the model would
    emit greedily, so its probability is p_max: the same measure with the model's own
    prediction as the target."""
    return out.p_max if out.p_target is None else out.p_target


def _entropy(z, z_prev=None):
    """H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v of logits z (n, V) -> (n,)."""
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)


@register_confidence("entropy", logit_stat=_entropy)
def entropy(out):
    """1 - H / log V in [0, 1]: 1 for a one-hot distribution, 0 for the uniform one (H is the
    entropy of the layer's next-token distribution; clamped against roundoff)."""
    V = out.config.vocab_size
    return (1.0 - out.stat / math.log(V)).clamp(0.0, 1.0)


def _kl_prev(z, z_prev):
    """KL(p || q) = sum_v p_v (log p_v - log q_v), p = softmax(z), q = softmax(z_prev) -> (n,)."""
    logp, logq = torch.log_softmax(z, dim=-1), torch.log_softmax(z_prev, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


@register_confidence("kl-prev", logit_stat=_kl_prev, prev=True)
def kl_prev(out):
    """exp(-KL(p_l || p_{l-1})) in (0, 1]: 1 when layer l's next-token distribution equals the
    previous layer's; the threshold rule exits when KL <= -log(threshold). Layer 0 has no
    previous layer: 0 (never exits there). KL clamped at 0 against roundoff."""
    if out.stat is None:
        return out.p_max.new_zeros(out.p_max.shape, dtype=torch.float32)
    return torch.exp(-out.stat.float().clamp_min(0.0))


@register_confidence("argmax-stable", history=True, knob="argmax_stable_k")
def argmax_stable(out):
    """1 when the argmax of this layer equals that of each of the k = config.argmax_stable_k
    layers before it (it has not changed for k consecutive layers), else 0; 0 for the first k
    layers. No gradient."""
    k = out.config.argmax_stable_k
    same = torch.zeros(out.argmax.shape, dtype=torch.bool, device=out.argmax.device)
    if len(out.hist) >= k:
        same = ~same
        for a in out.hist[-k:]:
            same &= a == out.argmax
    return same.float()


@register_confidence("state-cosine", state=True, head=False)
def state_cosine(out):
    """cos(x_in, x_out) in [-1, 1]: cosine similarity of the residual stream entering and
    leaving the layer (CALM's state-propagation measure: no head needed, O(C) per token)."""
    return F.cosine_similarity(out.x_in.float(), out.x_out.float(), dim=-1).clamp(-1.0, 1.0)


@register_confidence("learned", learned=True, head=False)
def learned(out):
    """sigmoid(exit classifier(stop-gradient head input)) (CALM's meta measure): the predicted
    probability that this layer's argmax equals the last layer's; trained jointly by
    `exit_classifier_loss`, whose stop-gradient leaves the trunk exactly as without it."""
    return torch.sigmoid(out.exit_logit.float())


# ----------------------------------------------------------------------------------------------
# exit rules: fn(confidence, threshold) -> bool, same shape as confidence

EXIT_RULES: Dict[str, Callable] = {}


def register_exit_rule(name, never_fires=lambda threshold, max_confidence: False, scalar=None):
    """never_fires(threshold, max_confidence) -> True when the rule cannot fire whatever the
    confidence (at most max_confidence): see never_exits. scalar(c, t) -> bool: the same
    decision for one confidence c and the threshold t as Python floats (their fp32 values),
    monotone in c (if it fires for c it fires for every larger c): the decoder compares a
    single row's confidence, or a batch's largest one to see whether any row fires."""
    def wrap(fn):
        EXIT_RULES[name] = fn
        fn.never_fires, fn.scalar = never_fires, scalar
        return fn
    return wrap


def never_exits(rule, confidence, threshold):
    """True when exit rule `rule` (an EXIT_RULES entry) at `threshold` cannot fire on
    confidence `confidence` (a CONFIDENCES name) for any head output; decoding then skips the
    per-layer heads (the threshold rule above the confidence's maximum, e.g. max-prob > 1)."""
    return rule.never_fires(threshold, CONFIDENCE_MAX[confidence])


@register_exit_rule("threshold", never_fires=lambda threshold, max_confidence:
                    threshold > max_confidence, scalar=lambda c, t: c >= t)
def threshold_rule(confidence, threshold):
    """Exit when confidence >= threshold (threshold > 1 never exits, 0 always exits)."""
    return confidence >= threshold


@register_exit_rule("sample")
def sample_rule(confidence, threshold=None):
    """Exit with probability = confidence (the journal's "some probability of terminating"):
    u ~ U[0, 1) per token from the global RNG, exit when u < confidence. `threshold` is ignored."""
    u = torch.rand(confidence.shape, device=confidence.device, dtype=torch.float32)
    return u < confidence.float()


def check_name(kind, name):
    """Raise ValueError listing the known names unless `name` is registered in registry `kind`
    ("confidence" | "exit_mode" | "exit_loss")."""
    reg = {"confidence": CONFIDENCES, "exit_mode": EXIT_RULES, "exit_loss": EXIT_LOSSES}[kind]
    if name not in reg:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(reg))}")


# ----------------------------------------------------------------------------------------------
# masks


def step_masks(mask_BT, trigger, is_last):
    """One layer of exit bookkeeping.

    mask_BT (B, T) float: 1 = token still running when entering this layer.
    trigger (B, T) bool: the exit rule fired at this layer.
    Returns (just_triggered, next_mask), float (B, T), no grad:
      just_triggered = mask_BT * trigger   (at the last layer: = mask_BT, everyone left exits)
      next_mask      = mask_BT - just_triggered
    """
    mask_BT = mask_BT.detach().float()
    if is_last:
        just_triggered = mask_BT.clone()
    else:
        just_triggered = mask_BT * trigger.detach().to(mask_BT.dtype)
    return just_triggered, mask_BT - just_triggered


@dataclass
class LayerOut:
    """Per-layer record; every tensor (B, T). xe / p_target are None without targets."""
    layer: int                          # 0-based layer index
    xe: Optional[torch.Tensor]          # per-token cross-entropy of this layer's head (grad)
    confidence: torch.Tensor            # CONFIDENCES[cfg.confidence] of this layer (grad)
    p_max: torch.Tensor                 # max softmax probability (grad)
    p_second: torch.Tensor              # second-largest softmax probability (grad)
    argmax: torch.Tensor                # int64 most likely next token
    p_target: Optional[torch.Tensor]    # probability of the target (grad)
    mask_BT: torch.Tensor               # float, 1 = still running when entering this layer
    just_triggered: torch.Tensor        # float, 1 = exits at this layer
    exit_logit: Optional[torch.Tensor] = None   # confidence "learned": the exit classifier's
                                                # logit (grad into the classifier only)


@dataclass
class LossContext:
    """What a loss may need besides the per-layer tensors. Any other attribute is read from
    `config` (the model's GPTConfig: ctx.n_layer, ctx.layerskip_scale, ctx.prev_token_shift, ...),
    so a new loss hyper-parameter is one GPTConfig field plus its use in the loss."""
    config: Any                             # GPTConfig (or any object with its fields)
    progress: float = 0.0                   # training progress in [0, 1] (LayerSkip curriculum)
    targets: Optional[torch.Tensor] = None  # (B, T) int64 or None
    step: int = 0                           # training step (LayerSkip rotational curriculum)
    final_xe: Optional[torch.Tensor] = None  # exit_token_frac < 1: last layer's xe on EVERY
                                            # token (B*T,); the LayerOuts hold sampled columns
    eps: float = 1e-6                       # clamp for log(1 - x)

    def __getattr__(self, name):
        if name == "config":                # not set yet (copy / unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.config, name)


class LossTerms(NamedTuple):
    loss: torch.Tensor          # () what is backpropagated
    confloss: torch.Tensor      # () confidence / exit part (see module docstring)
    targetloss: torch.Tensor    # () ordinary target-CE part that is added (0 when none)


# ----------------------------------------------------------------------------------------------
# statistics


def layer_losses(layers, n_layer=None, final_xe=None):
    """(n_layer,) detached mean CE of each layer's head (stats["layer_losses"]); needs targets.
    Under exit sampling (model.py): the mean over the sampled token columns, the last layer's
    over every token (final_xe), NaN for a layer whose head was not sampled (exit_layer_frac)."""
    _need_xe(layers, "layer_losses")
    n_layer = len(layers) if n_layer is None else n_layer
    out = torch.full((n_layer,), float("nan"), device=layers[-1].xe.device)
    for o in layers:
        out[o.layer] = _ce(o, n_layer, final_xe).detach()
    return out


def exit_summary(layers, early_exit=True):
    """Exit statistics from just_triggered (detached).

    earlystopdict (L,): fraction of tokens exiting at each layer (last entry: ran to the end);
                        sums to 1. All zeros when early_exit is False (the journal's logs).
    earlystop ():       fraction exiting before the last layer.
    exit_depth ():      mean 1-based exit layer (= L when nothing exits early).
    exit_ce ():         mean over tokens of the CE of the head at each token's exit layer: the
                        loss of what an early-exit model predicts (the last layer's CE without
                        early exit; NaN without targets).
    """
    L = layers[-1].layer + 1
    jt = torch.stack([o.just_triggered.detach().float() for o in layers])   # (L, B, T)
    device = jt.device
    if any(o.xe is None for o in layers):
        exit_ce = torch.tensor(float("nan"), device=device)
    elif early_exit:
        exit_ce = (torch.stack([o.xe.detach().float() for o in layers]) * jt).sum(0).mean()
    else:
        exit_ce = layers[-1].xe.detach().float().mean()
    if not early_exit:
        z = torch.zeros(L, device=device)
        return {"earlystop": z.new_zeros(()), "earlystopdict": z,
                "exit_depth": torch.tensor(float(L), device=device), "exit_ce": exit_ce}
    esd = jt.flatten(1).mean(1)                                             # (L,)
    depth = (esd * torch.arange(1, L + 1, device=device, dtype=esd.dtype)).sum()
    return {"earlystop": esd[:-1].sum(), "earlystopdict": esd, "exit_depth": depth,
            "exit_ce": exit_ce}


def exit_classifier_loss(layers):
    """The learned confidence's own loss (CALM's meta measure), added to the exit loss:
      label_l = 1[argmax_l == argmax_{L-1}]               (no grad)
      loss    = (1/(L-1)) sum_{l<L-1} mean_{b,t} BCE(sigmoid(exit_logit_l), label_l)
    exit_logit reads the head input through a stop-gradient, so only the classifier learns
    from it. 0 with one layer."""
    if len(layers) < 2:
        return _zero(layers)
    last = layers[-1].argmax
    terms = [F.binary_cross_entropy_with_logits(o.exit_logit.float(), (o.argmax == last).float())
             for o in layers[:-1]]
    return sum(terms) / len(terms)


# ----------------------------------------------------------------------------------------------
# losses: fn(layers: list[LayerOut], ctx: LossContext) -> LossTerms

EXIT_LOSSES: Dict[str, Callable] = {}


def register_exit_loss(name, token_sampling=True, layer_sampling=False):
    """token_sampling: the loss is a function of per-token columns (any token subset estimates
    it); layer_sampling: it is a sum of per-layer terms (a subset of layers estimates it)."""
    def wrap(fn):
        EXIT_LOSSES[name] = fn
        fn.token_sampling, fn.layer_sampling = token_sampling, layer_sampling
        return fn
    return wrap


def _need_xe(layers, name):
    if any(o.xe is None for o in layers):
        raise ValueError(f"exit loss {name!r} needs targets (xe is None)")


def _check(layers, ctx, name):
    """Every layer present, or (a layer-sampling loss) a subset ending at the last layer."""
    subset = EXIT_LOSSES[name].layer_sampling and layers and layers[-1].layer == ctx.n_layer - 1
    if len(layers) != ctx.n_layer and not subset:
        raise ValueError(f"exit loss {name!r}: got {len(layers)} layers, n_layer={ctx.n_layer}")
    _need_xe(layers, name)


def _ce(o, n_layer, final_xe=None):
    """CE_l = mean xe of layer o: of the last layer over every token when final_xe is given
    (token sampling computes the last head everywhere), else over o's (sampled) columns."""
    xe = final_xe if final_xe is not None and o.layer == n_layer - 1 else o.xe
    return xe.float().mean()


def _layer_sum(layers, ctx, term):
    """sum_{l=0}^{L-1} term(o_l). With a subset of k early layers plus the last (exit_layer_frac
    < 1) each early term is scaled by (L-1)/k: unbiased over the uniform choice of the subset."""
    early = sum(term(o) for o in layers[:-1])
    k = len(layers) - 1
    if k < ctx.n_layer - 1:
        early = early * ((ctx.n_layer - 1) / k)
    return early + term(layers[-1])


def _zero(layers):
    return layers[-1].p_max.new_zeros((), dtype=torch.float32)


def _log1m(x, eps):
    """log(1 - x) with 1 - x clamped at eps (finite; no gradient below the clamp)."""
    return torch.log((1.0 - x).clamp_min(eps))


@register_exit_loss("final")
def loss_final(layers, ctx):
    """Ordinary GPT loss: loss = mean_{b,t} xe_{L-1}. confloss = targetloss = 0."""
    _check(layers, ctx, "final")
    loss = _ce(layers[-1], ctx.n_layer, ctx.final_xe)
    return LossTerms(loss, _zero(layers), _zero(layers))


@register_exit_loss("all-layers", layer_sampling=True)
def loss_all_layers(layers, ctx):
    """Every layer's head trained on the targets (the journal's "all layer loss"):
    loss = (1/L) sum_l mean_{b,t} xe_l. confloss = targetloss = 0."""
    _check(layers, ctx, "all-layers")
    loss = _layer_sum(layers, ctx, lambda o: _ce(o, ctx.n_layer, ctx.final_xe)) / ctx.n_layer
    return LossTerms(loss, _zero(layers), _zero(layers))


def _final_ce_plus(layers, ctx, conf):
    """LossTerms of CE_{L-1} + conf (targetloss = the last layer's mean CE, confloss = conf)."""
    target = _ce(layers[-1], ctx.n_layer, ctx.final_xe)
    return LossTerms(target + conf, conf, target)


@register_exit_loss("1-noise", layer_sampling=True)
def loss_1_noise(layers, ctx):
    """1-noise: "for each layer, -1 * crossentropy / n_layers" added to the ordinary loss.
    CE_l = mean_{b,t} xe_l.
      targetloss = CE_{L-1}
      confloss   = sum_{l=0}^{L-1} -CE_l / L      (pushes every layer's CE up: the "noise")
      loss       = targetloss + confloss
    """
    _check(layers, ctx, "1-noise")
    return _final_ce_plus(layers, ctx, _layer_sum(
        layers, ctx, lambda o: -_ce(o, ctx.n_layer, ctx.final_xe) / ctx.n_layer))


@register_exit_loss("2-test", layer_sampling=True)
def loss_2_test(layers, ctx):
    """2-test: `losses += log(1 - exp(-CE_l)) / n_layer` with CE_l = F.cross_entropy of layer l
    (mean over all tokens), "positive feedback only"; added to the ordinary loss.
      targetloss = CE_{L-1}
      confloss   = sum_{l=0}^{L-1} log(max(1 - exp(-CE_l), eps)) / L
      loss       = targetloss + confloss
    exp(-CE_l) is the geometric-mean target probability; confidence is not used (no grad).
    """
    _check(layers, ctx, "2-test")

    def term(o):
        ce = _ce(o, ctx.n_layer, ctx.final_xe)
        return torch.log((-torch.expm1(-ce)).clamp_min(ctx.eps)) / ctx.n_layer
    return _final_ce_plus(layers, ctx, _layer_sum(layers, ctx, term))


@register_exit_loss("3-test")
def loss_3_test(layers, ctx):
    """3-test: per layer `loss_ = (xe * confidence * mask_BT).mean()`, summed over layers:
      loss = confloss = sum_{l=0}^{L-1} mean_{b,t}(xe_l * confidence_l * mask_BT_l)
      targetloss = 0
    "If targets exist, for now we always multiply them in at every layer (even if it is not
    sampled)": the targets enter only through xe inside this product, at every layer a token
    is still running — no separate final CE is added (4-test's remark "we don't use the true
    loss ... until the network is actually ready" only makes sense without one).
    """
    _check(layers, ctx, "3-test")
    conf = sum((o.xe.float() * o.confidence.float() * o.mask_BT).mean() for o in layers)
    return LossTerms(conf, conf, _zero(layers))


def _xe_factor_loss(layers, conf_of):
    """sum_l mean((xe_l - 1) * just_triggered_l + 1) * conf_of(l) * mask_BT_l)."""
    total = 0.0
    for o in layers:
        xe_factor = (o.xe.float() - 1.0) * o.just_triggered + 1.0
        total = total + (xe_factor * conf_of(o).float() * o.mask_BT).mean()
    return total


@register_exit_loss("4-test")
def loss_4_test(layers, ctx):
    """4-test: the true loss only where the token exits:
      xe_factor = (xe - 1) * just_triggered + 1        (= xe at the exit layer, 1 before it)
      loss = confloss = sum_l mean_{b,t}(xe_factor_l * confidence_l * mask_BT_l)
      targetloss = 0      (no separate final CE; the last layer's just_triggered covers every
                           token still running, so every token's CE enters exactly once)
    Before its exit layer a token's term is its confidence ("punishes confidence early on").
    """
    _check(layers, ctx, "4-test")
    conf = _xe_factor_loss(layers, lambda o: o.confidence)
    return LossTerms(conf, conf, _zero(layers))


@register_exit_loss("5-test")
def loss_5_test(layers, ctx):
    """5-test: the previous layer's xe / just_triggered / mask with the current confidence
    ("ask the next layer if wrong or not wrong"):
      xe_factor_prev = (xe_{l-1} - 1) * just_triggered_{l-1} + 1
      loss = confloss = sum_{l=1}^{L-1} mean_{b,t}(xe_factor_prev * confidence_l * mask_BT_{l-1})
      targetloss = 0
    Layer 0 has no previous layer and contributes nothing; tokens exiting at the last layer
    have no next layer and so get no CE term (the journal: "Maybe I should really penalize the
    last layer..."). xe_{l-1} keeps its gradient.
    Journal-faithful with model exit_propagate=False (every layer computes every token): with
    propagation, a token that exited at l-1 keeps its state at layer l, so the "next layer's"
    confidence_l is just confidence_{l-1} again.
    """
    _check(layers, ctx, "5-test")
    conf = _zero(layers)
    for prev, cur in zip(layers[:-1], layers[1:]):
        xe_factor_prev = (prev.xe.float() - 1.0) * prev.just_triggered + 1.0
        conf = conf + (xe_factor_prev * cur.confidence.float() * prev.mask_BT).mean()
    return LossTerms(conf, conf, _zero(layers))


@register_exit_loss("6-test")
def loss_6_test(layers, ctx):
    """6-test, "confidence of target": the 4-test form with the target's probability as the
    confidence, whatever cfg.confidence is (set confidence="target-prob" too for the exit masks):
      xe_factor = (xe - 1) * just_triggered + 1
      loss = confloss = sum_l mean_{b,t}(xe_factor_l * p_target_l * mask_BT_l)
      targetloss = 0
    """
    _check(layers, ctx, "6-test")
    conf = _xe_factor_loss(layers, lambda o: o.p_target)
    return LossTerms(conf, conf, _zero(layers))


def _mean_log1m_pmax(layers, ctx):
    """sum_l mean_{b,t} log(max(1 - p_max_l, eps)) / L  (<= 0): the confidence-penalty term."""
    return _layer_sum(layers, ctx, lambda o: _log1m(o.p_max.float(), ctx.eps).mean() / ctx.n_layer)


@register_exit_loss("confidence-penalty", layer_sampling=True)
def loss_confidence_penalty(layers, ctx):
    """Journal's first idea: `block_loss = -log(1 - pr[max])`, "the higher the confidence, the
    more negative the block_loss (so when added to the loss, the loss gets lower)": confident
    layers are *rewarded* (positive feedback only; ~0 at low confidence). The journal confirms
    the sign: "the confidence is being pushed very high on early layers". So the term added is
    log(1 - p_max) = -block_loss, per token, at every layer, normalised by n_layer as in 1-noise:
      targetloss = CE_{L-1}
      confloss   = sum_{l=0}^{L-1} mean_{b,t} log(max(1 - p_max_l, eps)) / L      (<= 0)
      loss       = targetloss + confloss
    The eps clamp also bounds the reward (>= log(eps) per token), which is otherwise -inf.
    Uses p_max, not cfg.confidence (the formula names pr[max]).
    """
    _check(layers, ctx, "confidence-penalty")
    return _final_ce_plus(layers, ctx, _mean_log1m_pmax(layers, ctx))


@register_exit_loss("confidence-penalty-literal", layer_sampling=True)
def loss_confidence_penalty_literal(layers, ctx):
    """The journal's formula read literally, `block_loss = -log(1 - pr[max])` added to the loss:
    confident layers are *penalised* (the opposite sign of "confidence-penalty", which follows the
    journal's description of the effect). Same normalisation and eps clamp:
      targetloss = CE_{L-1}
      confloss   = -sum_{l=0}^{L-1} mean_{b,t} log(max(1 - p_max_l, eps)) / L      (>= 0)
      loss       = targetloss + confloss
    """
    _check(layers, ctx, "confidence-penalty-literal")
    return _final_ce_plus(layers, ctx, -_mean_log1m_pmax(layers, ctx))


@register_exit_loss("reward-prev-token", token_sampling=False)   # compares neighbours t, t+s
def loss_reward_prev_token(layers, ctx):
    """6-test discussion: "we can reward tokens that are equal to the next token in the previous
    layer". The journal's diagram wants layer l to run one token ahead of layer l-1
    ("the third layer is guessing not the third layer, but continuing to guess the second"):

        A       stream of   text that is       <- input
        stream  of     text that is   next     <- layer l-1 predictions
        of      text   that is   next .        <- layer l: = layer l-1's prediction one to the right

    With s = ctx.prev_token_shift (1 = the diagram; 0 = agree with the previous layer at the
    same position), for l >= 1 and t < T - s:
      match_l[b,t] = argmax_l[b,t] == argmax_{l-1}[b,t+s]        (no grad)
      confloss     = -sum_{l=1}^{L-1} mean_{b,t}(match_l * p_max_l) / L      (<= 0)
      targetloss   = CE_{L-1}
      loss         = targetloss + confloss
    On matching tokens p_max_l is the probability layer l gives the previous layer's guess, so
    the reward raises it; non-matching tokens get no feedback (positive feedback only, as the
    journal prefers). Positions t >= T - s count as 0 in the mean over all B*T.
    """
    _check(layers, ctx, "reward-prev-token")
    s = int(ctx.prev_token_shift)
    conf = _zero(layers)
    for prev, cur in zip(layers[:-1], layers[1:]):
        T = cur.argmax.shape[-1]
        match = torch.zeros_like(cur.p_max, dtype=torch.float32)
        if T > s:
            match[..., :T - s] = (cur.argmax[..., :T - s] == prev.argmax[..., s:]).float()
        conf = conf - (match * cur.p_max.float()).mean() / ctx.n_layer
    return _final_ce_plus(layers, ctx, conf)


LAYERSKIP_CURRICULA = ("gradual", "rotational", "none")


def layerskip_weights(n_layer, progress=0.0, scale=1.0, curriculum="gradual", step=0,
                      rotation=2):
    """(L,) normalised LayerSkip early-exit loss weights (LayerSkip, Elhoushi et al. 2024, eq.
    of the early exit loss): scale grows with depth,
        e_l     = e_scale * sum_{i=0}^{l} i                 for 0 <= l < L-1
        e_{L-1} = (L-1) + e_scale * sum_{i=0}^{L-2} i
    masked by a curriculum C(t, l) in {0, 1} and normalised: w_l = C e_l / sum_i C e_i.
    Curricula (last layer always on):
      gradual:    layers enabled from L-1 down to 0, one more every 1/(2L) of training
                  (all on from progress 0.5): C = 1 iff l >= L-1 - floor(2 L progress)
      rotational: C = 1 iff l == L-1 or l % R == step % R   (R = rotation)
      none:       C = 1
    Layer 0's scale is 0 by the formula. With L = 1 the single weight is 1.
    """
    L = n_layer
    if L == 1:
        return torch.ones(1)
    tri = torch.tensor([l * (l + 1) / 2 for l in range(L)], dtype=torch.float64)  # sum_{i<=l} i
    e = scale * tri
    e[L - 1] = (L - 1) + scale * tri[L - 2]
    if curriculum == "gradual":
        k = int(2 * L * min(max(progress, 0.0), 1.0))
        c = torch.tensor([float(l >= L - 1 - k) for l in range(L)], dtype=torch.float64)
    elif curriculum == "rotational":
        c = torch.tensor([float(l == L - 1 or l % rotation == step % rotation)
                          for l in range(L)], dtype=torch.float64)
    elif curriculum == "none":
        c = torch.ones(L, dtype=torch.float64)
    else:
        raise ValueError(f"unknown layerskip curriculum {curriculum!r}; "
                         f"known: {', '.join(LAYERSKIP_CURRICULA)}")
    w = c * e
    return (w / w.sum()).float()


@register_exit_loss("layerskip")
def loss_layerskip(layers, ctx):
    """LayerSkip-style early-exit loss (Elhoushi et al. 2024), see `layerskip_weights`:
      loss       = sum_l w_l(progress) * CE_l,   CE_l = mean_{b,t} xe_l
      targetloss = w_{L-1} * CE_{L-1}            (the final head's share)
      confloss   = sum_{l<L-1} w_l * CE_l        (the early-exit heads' share)
    At progress 0 with the gradual curriculum w = (0, ..., 0, 1): the ordinary GPT loss.
    (LayerSkip's layer dropout is a model-side feature, not part of this loss.)
    """
    _check(layers, ctx, "layerskip")
    w = layerskip_weights(ctx.n_layer, ctx.progress, ctx.layerskip_scale,
                          ctx.layerskip_curriculum, ctx.step, ctx.layerskip_rotation)
    terms = [float(w[l]) * _ce(o, ctx.n_layer, ctx.final_xe) for l, o in enumerate(layers)]
    target = terms[-1]
    conf = sum(terms[:-1]) if len(terms) > 1 else _zero(layers)
    return LossTerms(target + conf, conf, target)
