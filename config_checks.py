"""Validation of train_gpt2.py's constants before anything is read or written.

    mcfg, grad_accum = validate_config(cfg, world_size)    # ConfigError naming the problem
    mcfg = model_config(cfg)                               # GPTConfig from the constants

Every check here needs only the resolved constants (no data, no device started): a bad value
is one `error:` line and exit 2 before the run touches log/.
"""
import dataclasses
import math
import os
import re

import cli
import distributed
import runlog
import tracking
from configurator import ConfigError
from model import GPTConfig

LR_SCHEDULES = ("cosine", "onecycle")
DTYPES = ("auto", "float32", "bfloat16")


def model_config(cfg):
    """GPTConfig from the constants (vocab_size None: GPTConfig's, until the data sets it); bad
    values -> ConfigError."""
    try:
        return GPTConfig(**{f.name: cfg[f.name] for f in dataclasses.fields(GPTConfig)
                            if cfg[f.name] is not None})
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def validate_config(cfg, world_size):
    """Checks that need no data (values, output paths, the device name, dirty_ok's git state)
    -> (GPTConfig, grad_accum). Raises ConfigError."""
    mcfg = model_config(cfg)
    for k in ("B", "T", "total_batch_size", "max_steps", "eval_iters", "batch_reuse",
              "keep_checkpoints", "lr_find_steps", "num_samples"):
        if cfg[k] <= 0:
            raise ConfigError(f"{k} must be positive, got {cfg[k]}")
    for k in ("eval_interval", "log_interval", "size_interval", "sample_interval",
              "checkpoint_interval", "warmup_steps", "sample_tokens", "stats_rows",
              "stats_interval"):
        if cfg[k] < 0:
            raise ConfigError(f"{k} must be >= 0, got {cfg[k]}")
    if cfg["T"] > mcfg.block_size:
        raise ConfigError(f"T ({cfg['T']}) > block_size ({mcfg.block_size})")
    per = cfg["B"] * cfg["T"] * world_size
    if cfg["total_batch_size"] % per:
        raise ConfigError(f"total_batch_size ({cfg['total_batch_size']}) is not divisible by "
                          f"B*T*world_size = {cfg['B']}*{cfg['T']}*{world_size} = {per}")
    for key, known in (("lr_schedule", LR_SCHEDULES), ("dtype", DTYPES),
                       ("parallel", distributed.PARALLEL)):
        if cfg[key] not in known:
            raise ConfigError(f"unknown {key} {cfg[key]!r}; known: {', '.join(known)}")
    if cfg["tokenizer"] is not None and cfg["tokenizer"] not in ("gpt2", "char"):
        raise ConfigError(f"unknown tokenizer {cfg['tokenizer']!r}; known: gpt2, char")
    if not cfg["max_lr"] > 0 or (cfg["min_lr"] is not None and cfg["min_lr"] < 0):
        raise ConfigError(f"max_lr must be > 0 and min_lr >= 0 (got {cfg['max_lr']}, {cfg['min_lr']})")
    if cfg["lr_schedule"] == "onecycle" and not (0 < cfg["onecycle_pct"] < 1):
        raise ConfigError(f"onecycle_pct must be in (0, 1), got {cfg['onecycle_pct']}")
    if not 0 < cfg["lr_find_start"] < cfg["lr_find_end"]:
        raise ConfigError("lr_find needs 0 < lr_find_start < lr_find_end")
    if cfg["residual_limit"] is not None and not cfg["residual_limit"] > 0:
        raise ConfigError(f"residual_limit must be > 0 or None, got {cfg['residual_limit']}")
    if cfg["stop_at_step"] is not None and not 0 <= cfg["stop_at_step"] < cfg["max_steps"]:
        raise ConfigError(f"stop_at_step must be in [0, max_steps) = [0, {cfg['max_steps']}), "
                          f"got {cfg['stop_at_step']}")
    if cfg["parallel"] == "fsdp" and "WORLD_SIZE" not in os.environ:
        raise ConfigError("parallel='fsdp' needs torchrun (e.g. torchrun --standalone "
                          "--nproc_per_node=8 train_gpt2.py ...); one process: parallel='ddp'")
    try:
        tracking.check(cfg)
    except tracking.TrackingError as e:
        raise ConfigError(str(e)) from None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}", cfg["run_name"]):
        raise ConfigError(f"run_name {cfg['run_name']!r} must be a plain file name "
                          f"(letters, digits, . _ + -; at most 200)")
    _check_values(cfg)
    try:
        for key in ("log_dir", "img_dir"):
            if cfg[key] is not None:          # img_dir=None: no figures
                cli.check_output(cfg[key], key, is_dir=True)
        if cfg["img_dir"] is None and (cfg["exit_table"] or cfg["lr_find"]):
            raise cli.UsageError("img_dir=None: exit_table and lr_find draw figures; set img_dir")
        cli.check_output(os.path.join(cfg["log_dir"], cfg["run_name"]), "checkpoint directory",
                         is_dir=True)
        if cfg["hellaswag"] not in (None, "hf"):
            cli.check_input_file(cfg["hellaswag"], "hellaswag")
        for key in ("dataset", "dataset_source"):
            if cfg[key] is not None and "\0" in cfg[key]:
                raise cli.UsageError(f"{key} {cfg[key]!r} contains a NUL byte")
        cli.check_device(cfg["device"], "device")
    except cli.UsageError as e:
        raise ConfigError(str(e)) from None
    if not cfg["dirty_ok"]:
        _, dirty, changed = runlog.git_state()
        if dirty is None:
            raise ConfigError("dirty_ok=False but the git state of the tree cannot be read")
        if dirty:
            raise ConfigError(f"dirty_ok=False and tracked files have uncommitted changes "
                              f"({', '.join(changed[:5])}); commit them or pass --dirty_ok=True")
    return mcfg, cfg["total_batch_size"] // per


def _check_values(cfg):
    """Ranges and consistency of the optimisation and evaluation constants (ConfigError)."""
    min_lr = cfg["min_lr"] if cfg["min_lr"] is not None else cfg["max_lr"] * 0.1
    checks = [
        (min_lr <= cfg["max_lr"], f"min_lr ({min_lr}) must not exceed max_lr ({cfg['max_lr']})"),
        (cfg["grad_clip"] >= 0, f"grad_clip must be >= 0 (0: no clipping), got {cfg['grad_clip']}"),
        (cfg["weight_decay"] >= 0, f"weight_decay must be >= 0, got {cfg['weight_decay']}"),
        (0 <= cfg["beta1"] < 1 and 0 <= cfg["beta2"] < 1,
         f"beta1 and beta2 must be in [0, 1), got {cfg['beta1']}, {cfg['beta2']}"),
        (cfg["onecycle_div"] > 0 and cfg["onecycle_final_div"] > 0,
         "onecycle_div and onecycle_final_div must be > 0"),
        (cfg["hellaswag_limit"] is None or cfg["hellaswag_limit"] > 0,
         f"hellaswag_limit must be positive or None, got {cfg['hellaswag_limit']}"),
        (cfg["seed"] >= 0, f"seed must be >= 0, got {cfg['seed']}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    for key in ("max_lr", "min_lr", "grad_clip", "weight_decay", "beta1", "beta2", "onecycle_pct",
                "onecycle_div", "onecycle_final_div", "lr_find_start", "lr_find_end",
                "residual_limit"):
        if cfg[key] is not None and not math.isfinite(cfg[key]):
            raise ConfigError(f"{key} must be finite, got {cfg[key]}")
