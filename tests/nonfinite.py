"""train_gpt2.py with a non-finite value injected at one step, to exercise the guards:

    python tests/nonfinite.py output|grad STEP [trainer arguments...]

output: during that step's training forward the last block's output becomes NaN (loss,
residual_std and gradients non-finite from that layer on); grad: one gradient entry of the first
block becomes inf. The trainer itself carries no injection code: this wraps its train_step.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_gpt2  # noqa: E402


def _poison_grad(g):
    g = g.clone()
    g.view(-1)[0] = float("inf")
    return g


def inject(kind, at):
    """Replace train_gpt2.train_step by one that poisons step `at`."""
    real = train_gpt2.train_step

    def train_step(s, batches, lr, step, **kw):
        if step != at:
            return real(s, batches, lr, step, **kw)
        if kind == "output":
            hook = s.raw.block(s.mcfg.n_layer - 1).register_forward_hook(
                lambda mod, inp, out: (out[0] * float("nan"),) + tuple(out[1:]))
        else:
            param = next(p for p in s.raw.block(0).parameters() if p.requires_grad)
            hook = param.register_hook(_poison_grad)
        try:
            return real(s, batches, lr, step, **kw)
        finally:
            hook.remove()
    train_gpt2.train_step = train_step


if __name__ == "__main__":
    kind, at = sys.argv[1], int(sys.argv[2])
    if kind not in ("output", "grad"):
        sys.exit(f"error: unknown kind {kind!r}; known: output, grad")
    inject(kind, at)
    sys.exit(train_gpt2.main(sys.argv[3:]))
