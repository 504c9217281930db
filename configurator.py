"""nanoGPT's configurator and the preset shrink rule, for train_gpt2.py's constants.

    cfg, explicit = parse(argv, defaults, none_types)   # config files, then --key=value
    cfg = scale_preset(cfg, "cpu", keep=explicit)        # what --preset_scale=cpu does

`defaults` is {name: default} (the trainer's constants plus GPTConfig's fields); a value must have
its default's type (an int is accepted for a float); `none_types` gives the type of the keys
whose default is None, `nullable` the keys that also accept None. A config file is Python
executed in a copy of the current values (only run files you trust); assigning a name that is
not a key is an error. Errors are ConfigError with a one-line message.
"""
import ast
import builtins
import difflib
import os


class ConfigError(Exception):
    """Bad configuration or data: one-line message, exit 2, nothing written."""


def suggest(key, known):
    """' (did you mean: a, b?)' for the known names close to key, else ''."""
    scored = [(difflib.SequenceMatcher(None, key, k).ratio(), k) for k in known]
    close = sorted((-r, k) for r, k in scored if r >= 0.5)[:3]
    return f" (did you mean: {', '.join(k for _, k in close)}?)" if close else ""


def _want(key, defaults, none_types):
    return none_types.get(key, type(defaults[key]))


def _type_name(key, defaults, none_types, nullable):
    return _want(key, defaults, none_types).__name__ + (" or None" if key in nullable else "")


def check_value(key, value, defaults, none_types, nullable, where=""):
    """The value converted to the key's type (int -> float), or ConfigError."""
    if value is None and key in nullable:
        return None
    want = _want(key, defaults, none_types)
    ok = False
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif want is str:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key} expects {_type_name(key, defaults, none_types, nullable)}, "
                          f"got {value!r} ({type(value).__name__}){where}")
    return value


def _exec_file(path, cfg):
    """The names a config file assigns: {name: value} (modules, callables, _private skipped)."""
    if not os.path.isfile(path):
        raise ConfigError(f"no such config file: {path}")
    ns = dict(cfg)
    try:
        with open(path) as f:
            src = f.read()
        exec(builtins.compile(src, path, "exec"), ns)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in ns.items()
            if not (k.startswith("_") or callable(v) or type(v).__name__ == "module")}


def _parse_override(arg, defaults, none_types, nullable):
    """'--key=value' -> (key, value); `--flag` alone is True for a bool key."""
    key, eq, raw = arg[2:].partition("=")
    if key not in defaults:
        raise ConfigError(f"unknown config key {key!r}{suggest(key, defaults)}")
    want = _want(key, defaults, none_types)
    if not eq:
        if want is not bool:
            raise ConfigError(f"--{key} needs a value (--{key}=...)")
        return key, True
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if want is not str:
            raise ConfigError(f"bad value for --{key}: {raw!r} is not a Python literal "
                              f"({_type_name(key, defaults, none_types, nullable)} expected)") from None
        value = raw
    if want is str and not isinstance(value, str) and not (value is None and key in nullable):
        value = raw                                  # --run_name=12 is the string "12"
    return key, value


def parse(argv, defaults, none_types, nullable=()):
    """argv (config files and --key=value, in order) -> (cfg dict, set of keys given as
    --key=value). Raises ConfigError."""
    nullable = set(nullable) | set(none_types)
    cfg, explicit = dict(defaults), set()
    for arg in argv:
        if arg.startswith("--"):
            key, value = _parse_override(arg, defaults, none_types, nullable)
            cfg[key] = check_value(key, value, defaults, none_types, nullable)
            explicit.add(key)
            continue
        for k, v in _exec_file(arg, cfg).items():
            if k not in defaults:
                raise ConfigError(f"unknown config key {k!r} in {arg}{suggest(k, defaults)}")
            cfg[k] = check_value(k, v, defaults, none_types, nullable, f" in {arg}")
    return cfg, explicit


# ----------------------------------------------------------------------------------------------
# preset scaling (train_gpt2.py --preset_scale=cpu|tiny)

SCALES = {
    # a laptop CPU, minutes: width 64, 4 heads, context 128, 8 x 128 tokens per step, <= 200
    # steps. The depth is kept: the journal's observations (SIZE COMPARISON growing layer over
    # layer) are about depth. FineWeb-Edu presets switch to the builtin corpus (fineweb.py
    # --source builtin); char-level and other local datasets are kept.
    "cpu": dict(max_layer=None, n_embd=64, max_head=4, block_size=128, T=128, B=8, max_steps=200,
                warmup_steps=20, eval_interval=50, eval_iters=4, size_interval=50,
                sample_interval=100, checkpoint_interval=100, vocab_cap=None),
    # unit tests: one step in well under a second
    "tiny": dict(max_layer=3, n_embd=32, max_head=2, block_size=32, T=16, B=2, max_steps=4,
                 warmup_steps=1, eval_interval=2, eval_iters=1, size_interval=2, sample_interval=0,
                 checkpoint_interval=4, vocab_cap=256),
}


def _fit_heads(n_embd, want):
    """Largest head count <= want dividing n_embd with an even head size (RoPE needs one)."""
    for h in range(max(1, want), 0, -1):
        if n_embd % h == 0 and (n_embd // h) % 2 == 0:
            return h
    return 1


def _shrink(v, cap):
    """min(v, cap), but an interval of 0 (off) stays 0 and cap 0 turns it off."""
    return 0 if (v == 0 or cap == 0) else min(v, cap)


def scale_preset(cfg, scale, keep=()):
    """Shrink a resolved run config (trainer constants + GPTConfig fields; every size, step
    count, interval and `dataset` key present) to `scale`; returns a new dict.

    scale: None/"none" (unchanged), "cpu" or "tiny" (see SCALES). Values only shrink (a preset
    already smaller keeps its value). Keys in `keep` (those given as --key=value on the command
    line, e.g. a sweep's grid values) are never changed. What the preset is about
    (share_weights, block_type, ln_learnable, pos_encoding, exit_*, confidence, learning rates,
    dropout, depth at "cpu") is kept; sizes, step counts and intervals shrink, the batch becomes
    one micro-batch (total_batch_size = B * T), HellaSwag and compile go off, device cpu.
    Trainer-only keys (dataset_source, tokenizer, device, keep_checkpoints, num_samples) are
    set only when cfg has them.
    """
    if scale in (None, "", "none"):
        return dict(cfg)
    if scale not in SCALES:
        raise ValueError(f"unknown preset_scale {scale!r}; known: none, {', '.join(SCALES)}")
    s = SCALES[scale]
    final = lambda k: cfg[k] if k in keep else new[k]  # noqa: E731
    new = {}
    new["n_layer"] = cfg["n_layer"] if s["max_layer"] is None else min(cfg["n_layer"], s["max_layer"])
    new["n_embd"] = min(cfg["n_embd"], s["n_embd"])
    new["n_head"] = _fit_heads(final("n_embd"), min(cfg["n_head"], s["max_head"]))
    new["block_size"] = min(cfg["block_size"], s["block_size"])
    new["T"] = min(cfg["T"], s["T"], final("block_size"))
    new["B"] = min(cfg["B"], s["B"])
    new["total_batch_size"] = final("B") * final("T")
    new["max_steps"] = min(cfg["max_steps"], s["max_steps"])
    new["warmup_steps"] = min(cfg["warmup_steps"], s["warmup_steps"], max(0, final("max_steps") - 1))
    for k in ("eval_interval", "size_interval", "sample_interval", "checkpoint_interval"):
        new[k] = _shrink(cfg[k], s[k])
    new["eval_iters"] = min(cfg["eval_iters"], s["eval_iters"])
    if s["vocab_cap"] is not None and cfg["vocab_size"] is not None:   # None: the data's
        new["vocab_size"] = min(cfg["vocab_size"], s["vocab_cap"])
    trainer_only = {"hellaswag": None, "compile": False, "device": "cpu", "keep_checkpoints": 1,
                    "num_samples": 1}
    if scale == "cpu" and "fineweb" in str(cfg["dataset"]).lower():
        new["dataset"] = "data/builtin"
        trainer_only.update(dataset_source="builtin", tokenizer="gpt2")
    for k, v in trainer_only.items():
        if k in cfg or k in ("hellaswag", "compile"):
            new[k] = v
    out = dict(cfg)
    for k, v in new.items():
        if k not in keep:
            out[k] = v
    return out
