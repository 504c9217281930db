"""The journal-format log of fixed-seed runs is byte-identical to a recorded one (issue #15: no
behaviour change from refactoring the trainer). Header/comment lines (`# ...`, paths, git state,
time) and the wall-clock fields (dt, tok/sec, flops) are masked; everything else — losses,
earlystopdict, lr, norm, SIZE COMPARISON, val, val-layers, samples — must match exactly.

    python tests/test_log_golden.py --record     # rewrite tests/golden/*.txt (after a deliberate change)
"""
import os
import re
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import make_char_dataset, run_train, tiny_args  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
# name -> extra trainer arguments (on top of conftest.TINY); together they cover the stats paths
# (in-forward, sampled rows, per-layer heads), accumulation, batch reuse, guards' skip counter
RUNS = {
    "vanilla-sampled-stats": ["--B=2", "--stats_rows=1", "--batch_reuse=2", "--checkpoint_interval=4"],
    "vanilla-forward-stats": ["--B=4", "--stats_rows=0", "--dropout=0.1"],
    "shared-early-exit": ["--share_weights=True", "--layer_heads=True", "--early_exit=True",
                          "--exit_threshold=0.05", "--exit_loss=all-layers", "--head_impl=fused",
                          "--skip_nonfinite=True", "--pos_encoding=rope"],
}
_TIMING = re.compile(r"dt: [0-9.]+ms, tok/sec: [0-9.]+, flops:[0-9.]+")


def masked(text):
    """Log text without `#` lines, wall-clock fields replaced by a fixed token."""
    return "".join(_TIMING.sub("dt: *ms, tok/sec: *, flops:*", l)
                   for l in text.splitlines(keepends=True) if not l.startswith("#"))


def run_log(data, out, name):
    p = run_train(tiny_args(data, out, name, *RUNS[name]))
    assert p.returncode == 0, p.stderr[-3000:]
    with open(os.path.join(out, name + ".txt")) as f:
        return masked(f.read())


@pytest.fixture(scope="module")
def golden_data(tmp_path_factory):
    return make_char_dataset(str(tmp_path_factory.mktemp("golden") / "tiny"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_log_identical_to_recorded(golden_data, tmp_path, name):
    with open(os.path.join(GOLDEN, name + ".txt")) as f:
        want = f.read()
    got = run_log(golden_data, str(tmp_path), name)
    assert got.count("\n") >= 20
    assert got == want


def main():
    if "--record" not in sys.argv[1:]:
        print(__doc__)
        return 2
    os.makedirs(GOLDEN, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        data = make_char_dataset(os.path.join(d, "tiny"))
        for name in sorted(RUNS):
            with open(os.path.join(GOLDEN, name + ".txt"), "w") as f:
                f.write(run_log(data, d, name))
            print(f"recorded {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
