"""bench/trainer_overhead.py: the timing window, the arguments it gives the trainer (valid, a
plain model), and the table it renders (ratios per round, median and spread)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import trainer_overhead as to  # noqa: E402


def test_step_time_window_skips_warmup_and_last_step():
    stamps = [0.0, 5.0, 6.0, 7.0, 9.5, 10.5, 11.5, 30.0]   # step 0 slow, last step evaluates
    assert to.step_time(stamps, 1) == pytest.approx(1.0)    # median: the 2.5 s stall ignored


def test_trainer_args_are_a_valid_plain_config(tmp_path):
    import train_gpt2 as tg
    cfg, _ = tg.parse_config(to.trainer_args("data/x", str(tmp_path), 50, 65) + to.CASES["trainer"])
    mcfg, accum = tg.validate_config(cfg, 1)
    assert (mcfg.n_layer, mcfg.n_embd, mcfg.n_head, cfg["T"], cfg["B"], mcfg.vocab_size) == \
        (4, 128, 4, 64, 12, 65)
    assert accum == 1 and not (mcfg.layer_heads or mcfg.early_exit or mcfg.share_weights)
    assert cfg["log_interval"] == 1 and cfg["dtype"] == "float32" and cfg["stats_interval"] == 0


def test_render_ratios():
    r = {"shape": to.SHAPE, "vocab_size": 65, "rounds": 2, "steps": 40, "warmup": 8,
         "step_s": {"minimal": [0.030, 0.034], "trainer-stats": [0.036, 0.040],
                    "trainer": [0.031, 0.035]},
         "ratios": {"trainer-stats": [1.2, 40 / 34], "trainer": [31 / 30, 35 / 34]},
         "ratio_median": {"trainer-stats": 1.188, "trainer": 1.031},
         "device": "cpu (x, 2 cores)", "loadavg": (1.0, 2.0, 3.0),
         "aten_calls_per_step": {"minimal": 3278.0, "trainer": 3253.25, "trainer-stats": 4694.0}}
    md = to.render(r)
    assert "| minimal (nanoGPT-style loop) | 32.00 | 1 |" in md
    assert "log every step (defaults) | 33.00 | **1.031** (1.029..1.033) |" in md
    assert "--stats_interval=1 | 38.00 | **1.188** (1.176..1.200) |" in md
    assert "minimal 3,278, trainer 3,253, trainer-stats 4,694." in md
