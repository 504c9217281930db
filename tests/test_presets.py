"""Every config/*.py preset: known keys only, shrinks with scale_preset, and trains one step.

Parametrized over the glob, so adding a preset adds its tests.
"""
import dataclasses
import re
import glob
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import configurator  # noqa: E402

PRESETS = sorted(glob.glob(os.path.join(ROOT, "config", "*.py")))
IDS = [os.path.basename(p)[:-3] for p in PRESETS]

# the trainer constants named in the contract (used when train_gpt2.py is not importable)
CONTRACT_KEYS = {"run_name", "dataset", "total_batch_size", "B", "T", "max_lr", "min_lr", "warmup_steps",
                 "max_steps", "weight_decay", "grad_clip", "lr_schedule", "batch_reuse", "eval_interval",
                 "eval_iters", "log_interval", "size_interval", "sample_interval", "checkpoint_interval",
                 "keep_checkpoints", "resume", "device", "dtype", "compile", "seed", "dirty_ok", "hellaswag",
                 "preset_scale"}


def _model():
    return pytest.importorskip("model", reason="model.py not present yet")


def trainer_defaults():
    """{constant: default} of train_gpt2.py (DEFAULTS / default_config() / its module constants),
    or None when the trainer is not importable."""
    if not os.path.isfile(os.path.join(ROOT, "train_gpt2.py")):
        return None
    import train_gpt2
    if callable(getattr(train_gpt2, "all_defaults", None)):
        return dict(train_gpt2.all_defaults())
    for attr in ("DEFAULTS", "DEFAULT_CONFIG"):
        if isinstance(getattr(train_gpt2, attr, None), dict):
            return dict(getattr(train_gpt2, attr))
    if callable(getattr(train_gpt2, "default_config", None)):
        return dict(train_gpt2.default_config())
    simple = (int, float, str, bool, type(None))
    return {k: v for k, v in vars(train_gpt2).items()
            if not k.startswith("_") and k.islower() and isinstance(v, simple)}


def load_preset(path, defaults):
    """Exec a config file over a copy of the defaults (nanoGPT's configurator)."""
    ns = dict(defaults)
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), {}, ns)
    return ns


def preset_keys(path):
    ns = {}
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), {}, ns)
    return ns


@pytest.mark.parametrize("path", PRESETS, ids=IDS)
def test_preset_keys_known_and_documented(path):
    model = _model()
    fields = {f.name for f in dataclasses.fields(model.GPTConfig)}
    defaults = trainer_defaults()
    known = fields | (set(defaults) if defaults is not None else CONTRACT_KEYS)
    keys = preset_keys(path)
    unknown = sorted(set(keys) - known)
    assert not unknown, f"{os.path.basename(path)} sets unknown keys {unknown}"
    with open(path) as f:
        assert f.readline().startswith("#"), "a preset starts with a comment saying what it tests"
    if "run_name" in keys and os.path.basename(path) != "quickstart.py":
        assert keys["run_name"] == os.path.basename(path)[:-3]
    # the model part is a valid GPTConfig at full size (names and values from the registries)
    model.GPTConfig(**{k: v for k, v in keys.items() if k in fields})


@pytest.mark.parametrize("path", PRESETS, ids=IDS)
def test_preset_tiny_one_step(path):
    model = _model()
    fields = {f.name for f in dataclasses.fields(model.GPTConfig)}
    defaults = trainer_defaults() or {}
    defaults = {**{f.name: f.default for f in dataclasses.fields(model.GPTConfig)}, **defaults}
    cfg = load_preset(path, defaults)
    cfg["vocab_size"] = 64
    small = configurator.scale_preset(cfg, "tiny")
    for k in ("share_weights", "block_type", "ln_learnable", "pos_encoding", "early_exit", "exit_loss",
              "exit_mode", "confidence", "max_lr", "dropout"):
        assert small.get(k) == cfg.get(k), k  # what the preset is about survives the shrink
    assert small["n_layer"] <= 3 and small["n_embd"] == 32 and small["block_size"] == 32
    gcfg = model.GPTConfig(**{k: small[k] for k in fields if k in small})
    torch.manual_seed(0)
    m = model.GPT(gcfg)
    m.train()
    m.set_progress(0.5)
    T = min(16, gcfg.block_size)
    idx = torch.randint(0, gcfg.vocab_size, (2, T))
    targets = torch.randint(0, gcfg.vocab_size, (2, T))
    opt = m.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    _, loss = m(idx, targets)
    assert torch.isfinite(loss), loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    changed = [n for n, p in m.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "no parameter changed after one step"
    with_grad = [n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert set(with_grad) <= set(changed)


def test_scale_preset_cpu_rule():
    cfg = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "B": 64, "T": 1024,
           "total_batch_size": 524288, "max_steps": 19073, "warmup_steps": 715, "eval_interval": 250,
           "eval_iters": 20, "size_interval": 50, "sample_interval": 0, "checkpoint_interval": 5000,
           "dataset": "data/edu_fineweb10B", "dataset_source": None, "tokenizer": None, "device": "auto",
           "share_weights": True, "block_type": "res-attn2", "ln_learnable": False, "max_lr": 6e-4,
           "hellaswag": "hf", "compile": True}
    s = configurator.scale_preset(cfg, "cpu")
    assert s == {**cfg, "n_head": 4, "n_embd": 64, "block_size": 128, "B": 8, "T": 128,
                 "total_batch_size": 1024, "max_steps": 200, "warmup_steps": 20, "eval_interval": 50,
                 "eval_iters": 4, "size_interval": 50, "sample_interval": 0, "checkpoint_interval": 100,
                 "dataset": "data/builtin", "dataset_source": "builtin", "tokenizer": "gpt2",
                 "device": "cpu", "hellaswag": None, "compile": False}
    assert cfg["n_layer"] == 12 and s["n_layer"] == 12  # input not modified; depth kept
    # char-level data kept; keys set on the command line kept; heads fit the width (even head size)
    s = configurator.scale_preset({**cfg, "dataset": "data/shakespeare_char", "n_embd": 36, "n_head": 6,
                            "max_steps": 150}, "cpu", keep=("n_embd", "T"))
    assert s["dataset"] == "data/shakespeare_char" and s["tokenizer"] is None
    assert s["n_embd"] == 36 and s["n_head"] == 3 and s["T"] == 1024 and s["total_batch_size"] == 8 * 1024
    assert s["max_steps"] == 150 and s["warmup_steps"] == 20  # values only shrink
    assert configurator.scale_preset(cfg, "none") == cfg == configurator.scale_preset(cfg, None)
    with pytest.raises(ValueError, match="known: none, cpu, tiny"):
        configurator.scale_preset(cfg, "laptop")


def test_trainer_preset_scale_is_scale_preset():
    """train_gpt2 --preset_scale=cpu applies configurator.scale_preset to its resolved config, keeping
    the keys given as --key=value."""
    import train_gpt2
    cfg, explicit = train_gpt2.parse_config(["--preset_scale=cpu", "--n_layer=3", "--B=2"])
    base, _ = train_gpt2.parse_config(["--n_layer=3", "--B=2"])
    assert explicit == {"preset_scale", "n_layer", "B"}
    want = configurator.scale_preset(base, "cpu", keep={"n_layer", "B"})
    want["preset_scale"] = "cpu"
    assert cfg == want
    assert (cfg["n_layer"], cfg["B"], cfg["n_embd"], cfg["T"], cfg["total_batch_size"]) == (3, 2, 64, 128, 256)


@pytest.mark.parametrize("path", PRESETS, ids=IDS)
def test_preset_cpu_scale_is_valid(path):
    """The cpu shrink of every preset is a valid GPTConfig (rope needs an even head size, ...)."""
    model = _model()
    fields = {f.name for f in dataclasses.fields(model.GPTConfig)}
    defaults = {**{f.name: f.default for f in dataclasses.fields(model.GPTConfig)}, **(trainer_defaults() or {})}
    s = configurator.scale_preset(load_preset(path, defaults), "cpu")
    g = model.GPTConfig(**{k: s[k] for k in fields if k in s and s[k] is not None})  # None: the data's
    assert g.n_embd <= 64 and g.n_layer <= 12 and g.block_size <= 128


ASSUMED_RE = re.compile(r"^(\w+) = .*?#\s*assumed: \S")


def test_readme_lists_every_assumed_preset_value():
    """Each `key = value  # assumed: why` line of config/*.py has a row of README's assumption
    table naming the key and the preset."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    start = readme.index("## Presets: the journal's values and our assumptions")
    rows = [l for l in readme[start:readme.index("\n## ", start + 3)].splitlines()
            if l.startswith("| `")]
    missing, n = [], 0
    for path in PRESETS:
        name = os.path.basename(path)[:-3]
        with open(path) as f:
            for line in f:
                m = ASSUMED_RE.match(line)
                if m:
                    n += 1
                    key = m.group(1)
                    if not any(f"`{name}`" in r and re.search(rf"`{key} = |, `{key} = ", r) for r in rows):
                        missing.append(f"{name}: {key}")
    assert n > 50 and not missing, missing
