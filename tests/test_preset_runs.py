"""Every config/*.py preset, and the first point of every sweep grid, survives a whole run.

Each one is driven through the trainer's command line (train_gpt2.main(argv), in this process:
a subprocess per run would spend most of the time importing torch) at tiny scale for 4 steps,
with every periodic event due at least once: train line, val + val-layers, SIZE block, text
sample, HellaSwag on the fixture, interval checkpoint, a stop at step 2 and `--resume=auto`,
the final checkpoint and the plots. A crash at any event fails the test named after the preset.
"""
import glob
import json
import os
import re

import numpy as np
import pytest
import torch

from conftest import (ROOT, SAMPLE_RE, SIZE_RE, TRAIN_RE, VAL_LAYERS_RE, VAL_RE, _write_shard)
import sweep
import train_gpt2

pytestmark = pytest.mark.slow

PRESETS = sorted(glob.glob(os.path.join(ROOT, "config", "*.py")))
SWEEPS = sorted(glob.glob(os.path.join(ROOT, "config", "sweeps", "*.py")))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "hellaswag_tiny.jsonl")
HS_RE = re.compile(r"^@ (\d+) hellaswag (\d\.\d{4}), acc: (\d\.\d{4}), total: (\d+)$")

# every periodic event within 4 steps, in both invocations (steps 0-2, then resumed 3):
# val/hellaswag at 0, 3; SIZE at 0, 2; samples at 2, 3; checkpoints at 2 (interval and
# stop_at_step) and 3 (final), then the plots
EVENTS = ["--max_steps=4", "--eval_interval=3", "--eval_iters=1", "--size_interval=2",
          "--sample_interval=2", "--sample_tokens=6", "--num_samples=1", "--checkpoint_interval=2",
          "--keep_checkpoints=2", f"--hellaswag={FIXTURE}", "--hellaswag_limit=2", "--log_interval=1",
          "--tokenizer=None", "--dataset_source=None", "--dirty_ok=True"]
# a sweep's grid/BASE values are command-line keys (kept by preset_scale): sized down here
SWEEP_TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--T=16", "--B=2",
              "--total_batch_size=32", "--warmup_steps=1"]


@pytest.fixture(scope="module")
def hs_char_data(tmp_path_factory):
    """A char dataset whose vocabulary covers the HellaSwag fixture, so HellaSwag really runs."""
    d = str(tmp_path_factory.mktemp("hsdata"))
    with open(FIXTURE) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    text = " ".join(r["ctx"] + " " + e for r in rows for e in r["endings"]) + " "
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    shards = [_write_shard(d, "tiny_val_000000.npy", np.resize(ids, 1500)),
              _write_shard(d, "tiny_train_000001.npy", np.resize(np.roll(ids, 7), 3000))]
    meta = {"source": "test", "tokenizer": "char", "vocab_size": len(chars), "eot": None,
            "dtype": "uint16", "shards": shards, "complete": True, "chars": "".join(chars)}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f)
    return d


def _sweep_first_point(path):
    s = sweep.load_sweep(path)
    name, params = sweep.expand(s)[0]
    cmd = sweep.command(s, name, params, "train_gpt2.py", "python")
    return cmd[2:]            # the preset and its --key=value arguments, run_name last


CASES = ([pytest.param([p], id=os.path.basename(p)[:-3]) for p in PRESETS]
         + [pytest.param(_sweep_first_point(p) + SWEEP_TINY, id="sweep-" + os.path.basename(p)[:-3])
            for p in SWEEPS])


def _run(argv, capsys):
    rc = train_gpt2.main(argv)
    err = capsys.readouterr().err
    assert rc == 0, f"train_gpt2 {' '.join(argv)} -> exit {rc}\n{err[-3000:]}"


@pytest.mark.parametrize("args", CASES)
def test_preset_survives_every_periodic_event(args, hs_char_data, tmp_path, capsys):
    run = "r"
    common = args + ["--preset_scale=tiny", f"--dataset={hs_char_data}", f"--log_dir={tmp_path}",
                     f"--img_dir={tmp_path / 'img'}", f"--run_name={run}"] + EVENTS
    _run(common + ["--stop_at_step=2"], capsys)
    _run(common + ["--resume=auto"], capsys)

    lines = (tmp_path / f"{run}.txt").read_text().splitlines()
    cfg = json.loads(next(l for l in lines if l.startswith("# config: "))[len("# config: "):])
    L = cfg["n_layer"]

    def steps(rx):
        return [int(m.group(1)) for m in map(rx.match, lines) if m]
    assert steps(TRAIN_RE) == [0, 1, 2, 3]
    assert steps(VAL_RE) == [0, 3] and steps(VAL_LAYERS_RE) == [0, 3]
    assert steps(HS_RE) == [0, 3]
    assert [int(m.group(4)) for m in map(HS_RE.match, lines) if m] == [2, 2]
    assert steps(SAMPLE_RE) == [2, 3]
    assert sum(bool(SIZE_RE.match(l)) for l in lines) == 2 * L
    assert "# resumed from " + str(tmp_path / run / "ckpt_000002.pt") + " at step 3" in lines
    assert sorted(n for n in os.listdir(tmp_path / run) if n.endswith(".pt")) == \
        ["ckpt_000002.pt", "ckpt_000003.pt"]
    assert not [l for l in lines if "disabled" in l or "skipped" in l or "error" in l]
    assert os.path.isfile(tmp_path / "img" / f"{run}.png")
    # the header's resolved config is what the model uses (e.g. layer_heads, which every exit
    # loss but final turns on)
    ck = torch.load(tmp_path / run / "ckpt_000003.pt", map_location="cpu", weights_only=True)
    assert {k: cfg[k] for k in ck["model_config"]} == ck["model_config"]
