"""Cheap exits: exit_token_frac (per-layer heads on sampled token columns) and exit_layer_frac
(per-layer heads of a sampled subset of layers) against the full-head computation.

- a sample that covers everything gives the full loss and gradients;
- the mean of the sampled loss over many seeds equals the full loss (the estimator is unbiased
  for every loss that is a per-token mean / a sum of per-layer terms);
- the sample is a function of the seed only; eval mode never samples; bad values are errors.
"""
import dataclasses
import math

import pytest
import torch

import exits
import model as model_mod
from model import GPT, GPTConfig

B, T, L, V = 4, 16, 4, 64
TOKEN_LOSSES = sorted(n for n, f in exits.EXIT_LOSSES.items() if f.token_sampling and n != "final")
LAYER_LOSSES = sorted(n for n, f in exits.EXIT_LOSSES.items() if f.layer_sampling)
# per-token means of per-layer terms (unbiased under token sampling); 2-test takes log(1 -
# exp(-CE_l)) of a token mean, a plug-in estimate under token sampling (consistent, biased by
# O(1/k)), tested separately; under layer sampling each layer's term is exact, so it is unbiased
UNBIASED_TOKEN = [n for n in TOKEN_LOSSES if n != "2-test"]
EARLY_LOSSES = ("3-test", "4-test", "5-test", "6-test")   # trained with the exit masks on


def make(exit_loss="all-layers", **kw):
    early = exit_loss in EARLY_LOSSES
    cfg = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=2, n_embd=32,
                    share_weights=True, exit_loss=exit_loss, early_exit=early,
                    exit_threshold=0.03, **kw)
    torch.manual_seed(0)
    return GPT(cfg).train()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g))


def with_fields(m, **kw):
    """A copy of model m (same weights) whose config has the given fields."""
    m2 = GPT(dataclasses.replace(m.config, **kw)).train()
    m2.load_state_dict(m.state_dict())
    m2.set_progress(m.progress, m.step)
    return m2


def grads(m, loss):
    return torch.autograd.grad(loss, [p for p in m.parameters()])


@pytest.mark.parametrize("exit_loss", TOKEN_LOSSES)
def test_frac_one_is_the_full_loss_and_all_columns_match_it(exit_loss):
    """exit_token_frac=1 is the default path (bit-identical); a fraction whose sample is every
    column (round(0.999 * 64) = 64, so cols = arange(B*T)) runs the sampled code path and gives
    the full loss, stats and gradients."""
    m = make(exit_loss)
    m.set_progress(0.7, step=3)
    x, y = batch()
    full = m(x, y, return_stats=True, return_logits=False)
    one = with_fields(m, exit_token_frac=1.0)(x, y, return_logits=False)
    assert torch.equal(one.loss, full.loss)
    m_all = with_fields(m, exit_token_frac=0.999)
    assert torch.equal(m_all._draw_exit_sample((B, T), "cpu", seed=5)[0], torch.arange(B * T))
    got = m_all(x, y, return_stats=True, return_logits=False, exit_sample_seed=5)
    torch.testing.assert_close(got.loss, full.loss, rtol=1e-5, atol=1e-6)
    for k in ("layer_losses", "allloss", "confloss", "targetloss", "earlystopdict"):
        torch.testing.assert_close(got.stats[k], full.stats[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(m_all, got.loss), grads(m, full.loss)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _mean_over_seeds(m, x, y, n):
    with torch.no_grad():
        vals = torch.stack([m(x, y, return_logits=False, exit_sample_seed=s).loss
                            for s in range(n)])
    return vals.mean(), vals.std() / math.sqrt(n), vals


@pytest.mark.slow
@pytest.mark.parametrize("field,frac,exit_loss",
                         [("exit_token_frac", 0.25, n) for n in UNBIASED_TOKEN]
                         + [("exit_layer_frac", 0.34, n) for n in LAYER_LOSSES])
def test_sampled_loss_is_unbiased(field, frac, exit_loss):
    """Mean of the sampled loss over 200 seeds = full loss within 4 standard errors (the samples
    vary; test_layer_sampling_without_rescaling_would_be_detected shows the test's power)."""
    m = make(exit_loss)
    m.set_progress(0.7, step=3)
    x, y = batch()
    with torch.no_grad():
        full = m(x, y, return_logits=False).loss
    mean, se, vals = _mean_over_seeds(with_fields(m, **{field: frac}), x, y, 200)
    assert float(vals.std()) > 0
    assert abs(float(mean - full)) < 4 * float(se) + 1e-6, (float(mean), float(full), float(se))


@pytest.mark.slow
def test_layer_sampling_without_rescaling_would_be_detected():
    """The unbiasedness test has power: the plain mean of the sampled layers' terms (no (L-1)/k
    weight) is off by many standard errors at this size."""
    m = make("1-noise")
    x, y = batch()
    with torch.no_grad():
        full = m(x, y, return_logits=False).loss
        m2 = with_fields(m, exit_layer_frac=0.34)
        biased = []
        for s in range(100):
            cols, heads_at = m2._draw_exit_sample((B, T), "cpu", seed=s)
            r = m2._trunk(x, y, heads_on=True, sample=(cols, heads_at))
            ce = [o.xe.mean() for o in r["layers"]]
            biased.append(ce[-1] - sum(ce) / L)
    mean, _, vals = _mean_over_seeds(m2, x, y, 100)
    b = torch.stack(biased)
    assert abs(float(mean - full)) < 4 * float(vals.std() / 10) + 1e-6
    assert abs(float(b.mean() - full)) > 4 * float(b.std() / 10) + 1e-6


def test_two_test_plug_in_estimate_is_close():
    """2-test's log(1 - exp(-CE_l)) of a sampled mean: close to the full loss (not unbiased)."""
    m = make("2-test")
    x, y = batch()
    with torch.no_grad():
        full = m(x, y, return_logits=False).loss
    mean, _, _ = _mean_over_seeds(with_fields(m, exit_token_frac=0.5), x, y, 50)
    assert abs(float(mean - full)) < 0.01 * abs(float(full))


def test_sample_is_a_function_of_the_seed_and_eval_never_samples():
    m = with_fields(make(), exit_token_frac=0.25, exit_layer_frac=0.5)
    x, y = batch()
    a = m(x, y, return_logits=False, exit_sample_seed=model_mod.exit_sample_seed(1, 2, 3)).loss
    torch.manual_seed(123)   # the global RNG does not matter when a seed is given
    b = m(x, y, return_logits=False, exit_sample_seed=model_mod.exit_sample_seed(1, 2, 3)).loss
    c = m(x, y, return_logits=False, exit_sample_seed=model_mod.exit_sample_seed(1, 2, 4)).loss
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(7)                       # no seed: torch's global RNG (reproducible)
    d = m(x, y, return_logits=False).loss
    torch.manual_seed(7)
    assert torch.equal(m(x, y, return_logits=False).loss, d)
    cols, heads_at = m._draw_exit_sample((B, T), "cpu", seed=9)
    assert cols.numel() == 16 and len(set(cols.tolist())) == 16            # 0.25 * B*T
    assert len(heads_at) == 3 and L - 1 in heads_at                         # round(1.5) + last
    m.eval()
    with torch.no_grad():
        full = make()(x, y, return_logits=False).loss
        torch.testing.assert_close(m(x, y, return_logits=False, exit_sample_seed=1).loss, full)


def test_sampled_stats_last_layer_on_every_token_and_nan_for_unsampled_layers():
    m = make()
    x, y = batch()
    with torch.no_grad():
        full = m(x, y, return_stats=True, return_logits=False).stats
        st = with_fields(m, exit_token_frac=0.25, exit_layer_frac=0.34)(
            x, y, return_stats=True, return_logits=False, exit_sample_seed=3).stats
    ll = st["layer_losses"]
    torch.testing.assert_close(ll[-1], full["layer_losses"][-1])      # every token
    seen = ~ll[:-1].isnan()
    assert int(seen.sum()) == 1                                         # round(0.34 * 3) = 1
    torch.testing.assert_close(st["allloss"], ll[:-1][seen].sum() * (L - 1) + ll[-1])
    assert torch.isnan(st["residual_std"][:-1, 2][~seen]).all()
    assert torch.isfinite(st["residual_std"][:, :2]).all()


def test_flops_per_token_counts_the_heads_that_run():
    m = make()
    C6V = 6 * 32 * V
    base = m.flops_per_token(T) - L * C6V
    assert with_fields(m, exit_token_frac=0.25).flops_per_token(T) == base + (1 + 3 * 0.25) * C6V
    assert with_fields(m, exit_layer_frac=0.34).flops_per_token(T) == base + 2 * C6V


@pytest.mark.parametrize("kw,msg", [
    (dict(exit_token_frac=0), "exit_token_frac must be a number in (0, 1], got 0"),
    (dict(exit_token_frac=1.5), "exit_token_frac must be a number in (0, 1], got 1.5"),
    (dict(exit_token_frac=-0.1), "exit_token_frac must be a number in (0, 1], got -0.1"),
    (dict(exit_layer_frac=0.0), "exit_layer_frac must be a number in (0, 1], got 0.0"),
    (dict(exit_layer_frac=2), "exit_layer_frac must be a number in (0, 1], got 2"),
    (dict(exit_token_frac=True), "exit_token_frac must be a number in (0, 1], got True"),
    (dict(exit_token_frac=0.5, exit_loss="final"), "exit_token_frac < 1 needs per-layer heads"),
    (dict(exit_token_frac=0.5, exit_loss="reward-prev-token"),
     "exit_token_frac < 1: exit_loss 'reward-prev-token' compares neighbouring positions"),
    (dict(exit_token_frac=0.5, early_exit=True, exit_propagate=True),
     "exit_token_frac < 1 with exit_propagate"),
    (dict(exit_layer_frac=0.5, exit_loss="4-test"), "exit_layer_frac < 1 needs a loss that is a sum"),
    (dict(exit_layer_frac=0.5, early_exit=True), "exit_layer_frac < 1 needs a loss that is a sum"),
])
def test_bad_values_are_one_line_errors(kw, msg):
    kw = {"exit_loss": "all-layers", **kw}
    with pytest.raises(ValueError) as e:
        GPTConfig(n_layer=L, **kw)
    assert str(e.value).startswith(msg) and "\n" not in str(e.value), str(e.value)
