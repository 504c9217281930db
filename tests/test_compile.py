"""torch.compile on CPU, for the CUDA path: every block variant and the per-layer head path are
captured without a graph break; the trainer's regional compile (GPT.compile_blocks) does not
recompile across early-exit training steps nor between training, evaluation and sampling;
compiled == eager losses; a block with a graph break falls back to eager with one message.

Backends: graph breaks and recompiles are properties of Dynamo's capture, not of the code
generator, so most tests use backend="eager" (capture only) or "aot_eager" (also traces the
backward through AOT autograd, where a custom autograd.Function's backward must be traceable);
neither builds C++. One slow test runs inductor (what CUDA uses) for compiled == eager.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounterWithBackend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import exits  # noqa: E402
import heads  # noqa: E402
import model as M  # noqa: E402

TINY = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)
EARLY = dict(TINY, n_layer=3, share_weights=True, early_exit=True, exit_mode="sample",
             exit_loss="4-test", head_impl="fused")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def _batch(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randint(0, cfg.vocab_size, (B, cfg.block_size + 1), generator=g)
    return d[:, :-1].contiguous(), d[:, 1:].contiguous()


@pytest.mark.parametrize("block_type", sorted(M.BLOCKS))
def test_block_variant_is_one_graph(block_type):
    """Adding a block variant adds this test: its forward must be a single Dynamo graph."""
    cfg = M.GPTConfig(**TINY, block_type=block_type)
    blk = M.BLOCKS[block_type](cfg)
    out = dynamo.explain(blk)(torch.randn(2, 16, 32, requires_grad=True))
    assert (out.graph_count, out.graph_break_count) == (1, 0), out.break_reasons


def test_rope_block_is_one_graph():
    cfg = M.GPTConfig(**TINY, pos_encoding="rope")
    m = M.GPT(cfg)
    x, rope = m._embed(torch.zeros(2, 16, dtype=torch.long))
    out = dynamo.explain(m.block(0))(x, rope)
    assert (out.graph_count, out.graph_break_count) == (1, 0), out.break_reasons


@pytest.mark.parametrize("head_impl", sorted(heads.HEAD_IMPLS))
def test_per_layer_head_path_is_one_graph(head_impl):
    """The whole early-exit layer loop (blocks, ln_f, head, confidence, exit rule, masks) of
    training has no graph break for every head implementation: no host sync on the exit masks."""
    cfg = M.GPTConfig(**dict(EARLY, head_impl=head_impl))
    m = M.GPT(cfg)
    x, y = _batch(cfg)
    out = dynamo.explain(lambda i, t: m._trunk(i, t, early=True, threshold=cfg.exit_threshold,
                                               mode=cfg.exit_mode, heads_on=True))(x, y)
    assert (out.graph_count, out.graph_break_count) == (1, 0), out.break_reasons


@pytest.mark.parametrize("head_impl", sorted(heads.HEAD_IMPLS))
def test_head_backward_traces_and_matches_eager(head_impl):
    """aot_eager traces the head's backward (FusedHead.backward's tile loops, checkpoint's
    recompute) into the joint graph with fullgraph=True; gradients equal eager's."""
    torch.manual_seed(0)
    h = torch.randn(24, 32, requires_grad=True)
    w = torch.randn(64, 32, requires_grad=True)
    t = torch.randint(0, 64, (24,))

    def loss(h, w, t):
        o = heads.head_outputs(h, w, t, impl=head_impl)
        return o.ce.mean() + (o.p_max * o.p_second).mean() - o.p_target.mean()

    ref = torch.autograd.grad(loss(h, w, t), (h, w))
    got = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(h, w, t), (h, w))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_no_recompile_over_early_exit_steps_nor_between_train_eval_sample(monkeypatch):
    """compile_blocks on a shared early-exit model: 20 training steps whose exit masks change
    every step compile the block once (aot_eager: forward and backward graphs); evaluation
    (no_grad) adds exactly one graph, the one grad mode needs, and switching back and forth
    adds none; sampling (KV-cached decoding, eager by design) adds none."""
    cfg = M.GPTConfig(**EARLY)
    torch.manual_seed(0)
    m = M.GPT(cfg)
    cc = CompileCounterWithBackend("aot_eager")
    assert m.compile_blocks(on_fallback=pytest.fail, backend=cc) == 1
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    seen, step_masks = [], exits.step_masks

    def recording_step_masks(mask_BT, trigger, is_last):
        out = step_masks(mask_BT, trigger, is_last)
        seen.append(out[1].bool().numpy().tobytes())       # next_mask (B, T)
        return out

    monkeypatch.setattr(exits, "step_masks", recording_step_masks)
    for step in range(20):
        x, y = _batch(cfg, B=8, seed=step)
        m.set_progress(step / 20, step)
        out = m(x, y, return_stats=True, return_logits=False)
        loss, st = out.loss, out.stats
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    per_step = {b"".join(seen[i:i + cfg.n_layer]) for i in range(0, len(seen), cfg.n_layer)}
    assert len(seen) == 20 * cfg.n_layer and len(per_step) == 20    # new exit masks every step
    assert cc.frame_count == 1
    for _ in range(2):
        m.eval()
        with torch.no_grad():
            m(x, y)
        m.train()
        m(x, y)[1].backward()
    assert cc.frame_count == 2
    m.eval()
    m.generate(x[:, :4], 6, temperature=1.0, top_k=8)
    m.generate(x[:, :4], 6, temperature=0, exit_threshold=0.5)
    assert cc.frame_count == 2


@pytest.mark.slow
def test_inductor_compiled_losses_equal_eager():
    """Inductor (C++ on CPU, Triton on CUDA) on the shared early-exit model: 3 training steps
    give the eager losses within fp32 tolerance (same seeds, so the same sampled exits)."""
    cfg = M.GPTConfig(**EARLY)

    def run(compiled):
        torch.manual_seed(0)
        m = M.GPT(cfg)
        if compiled:
            m.compile_blocks(on_fallback=pytest.fail, backend="inductor")
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        losses = []
        for step in range(3):
            x, y = _batch(cfg, seed=step)
            torch.manual_seed(100 + step)
            _, loss = m(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    eager, compiled = run(False), run(True)
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)


@M.register_block("test-graph-break")
class _GraphBreakBlock(M.PreLNBlock):
    """Data-dependent Python control flow on a tensor value: Dynamo must break the graph."""

    def forward(self, x, rope=None, caches=None):
        out, mid = super().forward(x, rope, caches)
        if bool(out.sum() > 0):          # host sync: the value decides which code runs
            out = out * 1.0
        return out, mid


M.BLOCKS.pop("test-graph-break")         # registered only inside the test below


def test_graph_break_block_runs_eager_with_one_message():
    M.BLOCKS["test-graph-break"] = _GraphBreakBlock
    try:
        cfg = M.GPTConfig(**dict(TINY, block_type="test-graph-break"))
        torch.manual_seed(0)
        m = M.GPT(cfg)
        x, y = _batch(cfg)
        ref = m(x, y)[1]
        msgs = []
        m.compile_blocks(on_fallback=msgs.append, backend="eager")
        got = [m(x, y)[1] for _ in range(3)]
    finally:
        M.BLOCKS.pop("test-graph-break")
    assert len(msgs) == 2                # one line per stored block (n_layer=2, not shared), once
    assert all(s.startswith("compile: block 'test-graph-break' runs eager (UserError: ")
               and "data-dependent" in s and "\n" not in s for s in msgs), msgs
    for g in got:
        torch.testing.assert_close(g, ref, rtol=0, atol=0)


@pytest.mark.slow
def test_trainer_logs_one_line_and_trains_eager_for_a_graph_break_block(tmp_path):
    """train_gpt2.py --compile=True with a block that has a graph break: one `# compile: ...`
    line in the log, then training runs (eager) to the end. The block is registered by a
    wrapper script, the trainer runs as a real process."""
    from conftest import make_char_dataset, parse_train_lines, tiny_args, ROOT as R
    data = make_char_dataset(str(tmp_path / "data"))
    script = ("import sys; sys.path[:0] = [%r, %r]\n"
              "import model, test_compile, train_gpt2\n"
              "model.BLOCKS['test-graph-break'] = test_compile._GraphBreakBlock\n"
              "sys.exit(train_gpt2.main(sys.argv[1:]))\n") % (R, os.path.join(R, "tests"))
    args = tiny_args(data, str(tmp_path / "log"), "gb", "--compile=True",
                     "--block_type=test-graph-break", "--share_weights=True", "--max_steps=3")
    p = subprocess.run([sys.executable, "-c", script] + args, capture_output=True, text=True,
                       timeout=300, cwd=R, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-2000:]
    log = open(tmp_path / "log" / "gb.txt").read().splitlines()
    notes = [ln for ln in log if "compile:" in ln]
    assert len(notes) == 1 and notes[0].startswith(
        "# compile: block 'test-graph-break' runs eager (UserError: "), notes
    assert [s for s, _, _ in parse_train_lines(str(tmp_path / "log" / "gb.txt"))] == [0, 1, 2]
