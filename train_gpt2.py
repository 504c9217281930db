"""Train a GPT-2 (early exit, shared-weight blocks) on fineweb.py token shards.

    python train_gpt2.py                                       # GPT-2 124M on data/edu_fineweb10B
    python train_gpt2.py config/quickstart.py                  # small CPU run on the builtin corpus
    python train_gpt2.py config/x.py --n_layer=6 --max_lr=1e-3 # config files, then overrides
    torchrun --standalone --nproc_per_node=8 train_gpt2.py     # DDP (NCCL on CUDA, gloo on CPU)
    python train_gpt2.py config/x.py --lr_find                 # LR range test -> img/{run}_lr_find.png

Configuration (nanoGPT style): the constants below are the defaults. Each `config/*.py` argument
is *Python code executed* in the constants' namespace (only run config files you trust);
assignments to names that are not constants are errors. `--key=value` values are parsed with
`ast.literal_eval` (a bare string is accepted for string keys; `--flag` alone means True for a
bool key); the type must match the default's (an int is accepted for a float). After all
arguments, `preset_scale` (e.g. `--preset_scale=cpu`) shrinks a preset to a laptop-CPU run,
except for keys given explicitly as `--key=value`. Model constants are exactly GPTConfig's
fields; a GPTConfig field not listed below still works as `--field=value`.

Outputs (rank 0): log/{run_name}.txt (the journal's line formats, flushed every line),
log/{run_name}.jsonl (one JSON object per event), checkpoints log/{run_name}/ckpt_{step:06d}.pt,
plot img/{run_name}.png. Log formats (`#` lines are comments: header, notes, checkpoints):

  @ {step} train {loss:.4f} , allloss: {:.4f}, confloss: {:.4f}, targetloss: {:.4f}, earlystop: {:.3f}, earlystopdict: [{L floats, 3 decimals}], lr:{:.4e}, norm:{:.4f}, dt: {:.2f}ms, tok/sec: {:.2f}, flops:{:.2f}, batch-reuse:{k}
  SIZE COMPARISON prev {} mid {} next {}              (n_layer lines every size_interval steps)
  @ {step} val {loss:.4f}
  @ {step} val-layers [{L floats, 4 decimals}], exit-depth: {:.3f}
  @ {step} val-exit {loss:.4f}                          (early_exit=True only)
  @ {step} val-objective {loss:.4f}                     (exit_loss other than final only)
  @ {step} hellaswag {acc_norm:.4f}, acc: {:.4f}, total: {n}
  @ {step} sample {i}: {text, newlines as \\n}

`train` and `val` are the cross-entropy of the last layer's head (the model's prediction; for a
model without per-layer heads, whose loss is exactly that, its objective), the same measure
whatever exit_loss is; `val-exit` the CE at each token's exit layer; the objective
(exits.EXIT_LOSSES[exit_loss]) is `val-objective` and the jsonl's `objective`. `allloss` is the
sum of the per-layer head losses, `norm` the gradient norm before clipping, `flops` achieved TFLOP/s per
device (model.flops_per_token, every per-layer head counted), `dt` the step's wall time.
With skip_nonfinite=True a train line ends with `, skipped:{n}` once a step was skipped.

Exit codes: 0 done, or stopped by SIGTERM/SIGINT / stop_at_step after saving a checkpoint (a
second signal aborts at once, 130); 1 a training guard fired (non-finite loss/grad, residual
blow-up) or a checkpoint could not be written; 2 bad configuration or data (one `error:` line,
nothing written to log/).
"""
import ast
import builtins
import dataclasses
import difflib
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

import fineweb

# ----------------------------------------------------------------------------------------------
# constants (defaults: build-nanogpt's GPT-2 124M run)

# run / data
run_name = "gpt2-124M"           # log/{run_name}.txt, log/{run_name}/ckpt_*.pt, img/{run_name}.png
dataset = "data/edu_fineweb10B"  # fineweb.py output directory (meta.json + shards)
dataset_source = None            # if set and `dataset` has no manifest: fineweb.py --source this
tokenizer = None                 # None: the manifest's; "gpt2" | "char": must match the manifest
shuffle = False                  # deterministic (seeded) shuffle of shard and block order
log_dir = "log"
img_dir = "img"
# batch: total_batch_size tokens per optimizer step = B * T * grad_accum * world_size
total_batch_size = 524288        # 2**19, ~0.5M tokens
B = 64                           # micro batch size (sequences per rank per micro step)
T = 1024                         # sequence length
# optimisation
max_lr = 6e-4
min_lr = None                    # None: max_lr * 0.1
warmup_steps = 715
max_steps = 19073                # 10B tokens / 2**19
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0                  # max grad norm (0: no clipping, norm still logged)
lr_schedule = "cosine"           # cosine (warmup + cosine to min_lr) | onecycle (seed 004)
onecycle_pct = 0.3               # onecycle: fraction of max_steps rising from max_lr/onecycle_div
onecycle_div = 25.0              #   start lr = max_lr / onecycle_div
onecycle_final_div = 1e4         #   final lr = start lr / onecycle_final_div
batch_reuse = 1                  # k optimizer steps on each batch (log field batch-reuse)
# evaluation / logging
eval_interval = 250              # val loss (+ per-layer val, exit depth, HellaSwag) every N steps
eval_iters = 20                  # val batches of total_batch_size tokens per evaluation
log_interval = 1                 # train line every N steps
stats_rows = 4                   # models without per-layer heads: logged steps compute the
                                 #   per-layer stats (allloss, SIZE) on this many sequences of the
                                 #   first micro batch in an extra no-grad forward (0: all B, in
                                 #   the training forward: L heads on every token, ~2x the FLOPs)
size_interval = 250              # SIZE COMPARISON block every N steps (0: never)
sample_interval = 250            # text sample every N steps (0: never)
sample_tokens = 32
num_samples = 4
sample_prompt = "Hello, I'm a language model,"
hellaswag = None                 # None: off | "hf": Rowan/hellaswag via datasets | a local jsonl
hellaswag_limit = None           # only the first N examples
# checkpoints
checkpoint_interval = 5000       # also at the last step, at stop_at_step and on SIGTERM/SIGINT
keep_checkpoints = 3             # keep the newest N checkpoints
resume = None                    # None | "auto" (latest valid checkpoint of run_name) | a path;
                                 # under torchrun --max-restarts a restarted group uses "auto"
stop_at_step = None              # end this invocation after step N (checkpoint saved); the LR
                                 # schedule still spans max_steps (split a run into jobs)
# guards
verify_data = True               # at start, rank 0 checks every shard's sha256 and max token id
                                 # against the manifest (~1.7 GB/s: ~12 s for FineWeb-Edu 10B)
residual_limit = 1e6             # stop when a residual_std exceeds this (None: no limit); checked
                                 #   every step with per-layer heads, on logged steps otherwise
skip_nonfinite = False           # skip steps with a non-finite loss/grad instead of stopping
debug_nonfinite_step = None      # testing: inject a non-finite value at this step (exercises the guards)
debug_nonfinite_kind = "output"  #   "output": the last block outputs NaN | "grad": one gradient is inf
dirty_ok = True                  # False: refuse to start with uncommitted changes to tracked files
# LR range test (seed 004)
lr_find = False                  # --lr_find: run the LR range test instead of training
lr_find_steps = 100
lr_find_start = 1e-7
lr_find_end = 1.0
# system
device = "auto"                  # auto | cpu | cuda | cuda:N | mps
dtype = "auto"                   # auto (bfloat16 on CUDA, float32 elsewhere) | float32 | bfloat16
compile = None                   # None: on with CUDA; True compiles each Block (regional compile)
seed = 1337
preset_scale = None              # None | "cpu" | "tiny": shrink the config (sweep.scale_preset)
# model: exactly GPTConfig's fields (model.py)
block_size = 1024
vocab_size = 50304               # GPT-2's 50257 padded to a multiple of 64
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True
share_weights = False
block_type = "pre-ln"
ln_learnable = True
pos_encoding = "learned"
layer_heads = False
early_exit = False
exit_threshold = 0.9
exit_mode = "threshold"
confidence = "max-prob"
exit_loss = "final"
head_impl = "fused"              # per-layer heads: fused (least memory), checkpoint, naive

DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))}

# types of the constants whose default is None (None stays allowed); NULLABLE: None also allowed
NONE_TYPES = {"dataset_source": str, "tokenizer": str, "min_lr": float, "hellaswag": str,
              "hellaswag_limit": int, "resume": str, "stop_at_step": int,
              "debug_nonfinite_step": int, "compile": bool, "preset_scale": str}
NULLABLE = set(NONE_TYPES) | {"residual_limit"}

LR_SCHEDULES = ("cosine", "onecycle")
DTYPES = ("auto", "float32", "bfloat16")
ROOT = os.path.dirname(os.path.abspath(__file__))
CKPT_RE = re.compile(r"^ckpt_(\d{6,})\.pt$")
CKPT_TMP_RE = re.compile(r"^\.ckpt_\d{6,}\.pt\.\d+\.tmp$")     # atomic_save's temp files
# data-sheet dense bf16 peak FLOP/s by device-name substring, first match wins (for MFU)
PEAK_BF16_FLOPS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12),
                   ("L40S", 362e12), ("L4", 121e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12)]


class ConfigError(Exception):
    """Bad configuration or data: one-line message, exit 2, nothing written."""


class GuardError(Exception):
    """A training guard fired (non-finite value, residual blow-up): exit 1."""


def peak_bf16_flops(device_name):
    """(name key, dense bf16 FLOP/s) of a known GPU from its torch device name, else None."""
    return next(((k, v) for k, v in PEAK_BF16_FLOPS if k in device_name), None)


# ----------------------------------------------------------------------------------------------
# configurator

def _model_fields():
    from model import GPTConfig
    return {f.name: f for f in dataclasses.fields(GPTConfig)}


def all_defaults():
    """DEFAULTS plus GPTConfig fields not listed as constants (their dataclass defaults)."""
    d = dict(DEFAULTS)
    for name, f in _model_fields().items():
        if name not in d and f.default is not dataclasses.MISSING:
            d[name] = f.default
    return d


def _suggest(key, known):
    scored = [(difflib.SequenceMatcher(None, key, k).ratio(), k) for k in known]
    close = sorted((-r, k) for r, k in scored if r >= 0.5)[:3]
    return f" (did you mean: {', '.join(k for _, k in close)}?)" if close else ""


def _type_name(key, default):
    t = NONE_TYPES.get(key, type(default))
    return t.__name__ + (" or None" if key in NULLABLE else "")


def check_value(key, value, defaults, where):
    """The value converted to the key's type (int -> float), or ConfigError."""
    default = defaults[key]
    if value is None and key in NULLABLE:
        return None
    want = NONE_TYPES.get(key, type(default))
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
        raise ConfigError(f"{key} expects {_type_name(key, default)}, got {value!r} "
                          f"({type(value).__name__}){where}")
    return value


def parse_config(argv):
    """argv -> (cfg dict, set of keys given as --key=value). Raises ConfigError."""
    defaults = all_defaults()
    cfg = dict(defaults)
    explicit = set()
    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                raise ConfigError(f"no such config file: {arg}")
            ns = dict(cfg)
            try:
                with open(arg) as f:
                    src = f.read()
                exec(builtins.compile(src, arg, "exec"), ns)
            except ConfigError:
                raise
            except SyntaxError as e:
                raise ConfigError(f"{arg}:{e.lineno}: syntax error: {e.msg}") from None
            except Exception as e:
                raise ConfigError(f"{arg}: {type(e).__name__}: {e}") from None
            for k, v in ns.items():
                if k.startswith("_") or callable(v) or type(v).__name__ == "module":
                    continue
                if k not in defaults:
                    raise ConfigError(f"unknown config key {k!r} in {arg}{_suggest(k, defaults)}")
                cfg[k] = check_value(k, v, defaults, f" in {arg}")
            continue
        key, eq, raw = arg[2:].partition("=")
        if key not in defaults:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key, defaults)}")
        want = NONE_TYPES.get(key, type(defaults[key]))
        if not eq:
            if want is not bool:
                raise ConfigError(f"--{key} needs a value (--{key}=...)")
            value = True
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                if want is not str:
                    raise ConfigError(f"bad value for --{key}: {raw!r} is not a Python literal "
                                      f"({_type_name(key, defaults[key])} expected)") from None
                value = raw
            if want is str and not isinstance(value, str) and not (value is None and key in NULLABLE):
                value = raw
        cfg[key] = check_value(key, value, defaults, "")
        explicit.add(key)
    if cfg["preset_scale"] is not None:
        import sweep
        try:
            cfg = sweep.scale_preset(cfg, cfg["preset_scale"], keep=explicit)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return cfg, explicit


def model_config(cfg):
    """GPTConfig from the constants; bad values -> ConfigError."""
    from model import GPTConfig
    kw = {k: cfg[k] for k in _model_fields() if k in cfg}
    try:
        return GPTConfig(**kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def validate_config(cfg, world_size):
    """Checks that need no data; returns (GPTConfig, grad_accum). Raises ConfigError."""
    mcfg = model_config(cfg)
    for k in ("B", "T", "total_batch_size", "max_steps", "eval_iters", "batch_reuse",
              "keep_checkpoints", "lr_find_steps", "num_samples"):
        if cfg[k] <= 0:
            raise ConfigError(f"{k} must be positive, got {cfg[k]}")
    for k in ("eval_interval", "log_interval", "size_interval", "sample_interval",
              "checkpoint_interval", "warmup_steps", "sample_tokens", "stats_rows"):
        if cfg[k] < 0:
            raise ConfigError(f"{k} must be >= 0, got {cfg[k]}")
    if cfg["T"] > mcfg.block_size:
        raise ConfigError(f"T ({cfg['T']}) > block_size ({mcfg.block_size})")
    per = cfg["B"] * cfg["T"] * world_size
    if cfg["total_batch_size"] % per:
        raise ConfigError(f"total_batch_size ({cfg['total_batch_size']}) is not divisible by "
                          f"B*T*world_size = {cfg['B']}*{cfg['T']}*{world_size} = {per}")
    if cfg["debug_nonfinite_kind"] not in ("output", "grad"):
        raise ConfigError(f"unknown debug_nonfinite_kind {cfg['debug_nonfinite_kind']!r}; known: output, grad")
    if cfg["lr_schedule"] not in LR_SCHEDULES:
        raise ConfigError(f"unknown lr_schedule {cfg['lr_schedule']!r}; known: {', '.join(LR_SCHEDULES)}")
    if cfg["dtype"] not in DTYPES:
        raise ConfigError(f"unknown dtype {cfg['dtype']!r}; known: {', '.join(DTYPES)}")
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
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", cfg["run_name"]):
        raise ConfigError(f"run_name {cfg['run_name']!r} must be a plain file name "
                          f"(letters, digits, . _ + -)")
    return mcfg, cfg["total_batch_size"] // per


# ----------------------------------------------------------------------------------------------
# data

class DataLoader:
    """Memory-mapped uint16 shards -> (x, y) int64 micro batches (B, T).

    The unit is one optimizer step of `step_tokens` (= total_batch_size) consecutive tokens, a
    "block" at offset k * step_tokens of a shard. Within a block, micro step m of rank r reads
    tokens [(m * world + r) * B*T, ... + B*T + 1): ranks get disjoint slices, and 1 process with
    gradient accumulation sees exactly the tokens of N processes. A shard of n tokens holds
    ceil((n - 1) / step_tokens) blocks: the full ones, then one aligned to the shard's end (its
    last target is the shard's last token), so the tail is covered and no read passes the end;
    that last block repeats < step_tokens tokens of the one before it. shuffle permutes shard
    order and block order per epoch, seeded by (seed, epoch[, shard]). state_dict() is the
    position (at step boundaries).
    """

    def __init__(self, paths, B, T, step_tokens, rank, world, vocab_size, split,
                 shuffle=False, seed=0):
        self.load_tokens = fineweb.load_tokens
        self.B, self.T, self.rank, self.world = B, T, rank, world
        self.step_tokens, self.vocab_size, self.split = step_tokens, vocab_size, split
        self.shuffle, self.seed = shuffle, seed
        self.micro_steps = step_tokens // (B * T * world)
        self.paths = list(paths)
        sizes = [self.load_tokens(p).shape[0] for p in self.paths]
        self.sizes = sizes
        self.nblocks = [-(-(n - 1) // step_tokens) if n - 1 >= step_tokens else 0 for n in sizes]
        self.total_blocks = sum(self.nblocks)
        if self.total_blocks == 0:
            raise ConfigError(f"dataset smaller than one batch: the {split} split's largest shard "
                              f"has {max(sizes) if sizes else 0} tokens, one step needs "
                              f"total_batch_size + 1 = {step_tokens + 1}")
        self._checked = set()
        self.reset()

    def _shard_order(self):
        order = [i for i, n in enumerate(self.nblocks) if n > 0]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = [order[i] for i in rng.permutation(len(order))]
        return order

    def _block_order(self, shard):
        n = self.nblocks[shard]
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch, shard]).permutation(n)

    def block_start(self, shard, k):
        """Token offset of block k of a shard: k * step_tokens, the last block end-aligned."""
        return min(k * self.step_tokens, self.sizes[shard] - 1 - self.step_tokens)

    def _enter(self):
        self.order = self._shard_order()
        shard = self.order[self.shard_i]
        self.blocks = self._block_order(shard)
        self.tokens = self.load_tokens(self.paths[shard])
        if shard not in self._checked:     # token ids must fit the data's vocabulary
            top = int(self.tokens.max())
            if top >= self.vocab_size:
                raise fineweb.DataError(f"shard holds token id {top} >= vocab_size "
                                        f"{self.vocab_size}: {self.paths[shard]}")
            self._checked.add(shard)

    def reset(self):
        self.load_state_dict({"epoch": 0, "shard_i": 0, "block_i": 0, "micro": 0})

    def state_dict(self):
        return {"epoch": self.epoch, "shard_i": self.shard_i, "block_i": self.block_i,
                "micro": self.micro}

    def load_state_dict(self, d):
        self.epoch, self.shard_i = int(d["epoch"]), int(d["shard_i"])
        self.block_i, self.micro = int(d["block_i"]), int(d["micro"])
        self._enter()

    def next_batch(self):
        """(x, y) int64 (B, T) on CPU."""
        B, T = self.B, self.T
        start = self.block_start(self.order[self.shard_i], int(self.blocks[self.block_i]))
        start += (self.micro * self.world + self.rank) * B * T
        buf = torch.from_numpy(np.asarray(self.tokens[start:start + B * T + 1], dtype=np.int64))
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
        self.micro += 1
        if self.micro == self.micro_steps:
            self.micro = 0
            self.block_i += 1
            if self.block_i == len(self.blocks):
                self.block_i = 0
                self.shard_i += 1
                if self.shard_i == len(self.order):
                    self.shard_i = 0
                    self.epoch += 1
                self._enter()
        return x, y


def prepare_data(cfg, dist_ctx):
    """Build the dataset with fineweb.py when dataset_source is set and it is absent; then the
    validated manifest. Raises ConfigError / fineweb.DataError."""
    meta_path = os.path.join(cfg["dataset"], fineweb.MANIFEST)
    if cfg["dataset_source"] and not os.path.isfile(meta_path):
        ok = 1
        if dist_ctx.master:
            print(f"preparing {cfg['dataset']}: fineweb.py --source {cfg['dataset_source']}", flush=True)
            try:
                rc = fineweb.main(["--source", cfg["dataset_source"], "--out", cfg["dataset"]])
            except SystemExit as e:
                rc = e.code
            ok = int(rc in (0, None))
        if not dist_ctx.all_ok(ok):
            raise ConfigError(f"could not build {cfg['dataset']} from source "
                              f"{cfg['dataset_source']!r} (see the message above)")
    meta = fineweb.read_manifest(cfg["dataset"])   # sizes/token counts: cheap, on every rank
    if cfg["verify_data"]:
        err = None
        if dist_ctx.master:
            try:
                fineweb.read_manifest(cfg["dataset"], check_sha=True)
            except fineweb.DataError as e:
                err = e
        if not dist_ctx.all_ok(err is None):
            raise err if err is not None else fineweb.DataError("data verification failed on rank 0")
    if cfg["tokenizer"] is not None and cfg["tokenizer"] != meta["tokenizer"]:
        raise ConfigError(f"tokenizer {cfg['tokenizer']!r} does not match the data's "
                          f"{meta['tokenizer']!r} ({meta_path})")
    if int(meta["vocab_size"]) > cfg["vocab_size"]:
        raise ConfigError(f"data vocab_size {meta['vocab_size']} > model vocab_size "
                          f"{cfg['vocab_size']} ({meta_path})")
    return meta


# ----------------------------------------------------------------------------------------------
# distributed

class DistContext:
    """torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK) or a single process."""

    def __init__(self):
        self.ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", 0)) if self.ddp else 0
        self.world = int(os.environ.get("WORLD_SIZE", 1)) if self.ddp else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0)) if self.ddp else 0
        self.master = self.rank == 0
        self.initialized = False
        self.coll_device = "cpu"     # where all_ok's flag tensor lives

    def init(self, device_type):
        if not self.ddp:
            return
        import torch.distributed as dist
        if device_type == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.coll_device = f"cuda:{self.local_rank}"    # NCCL reduces CUDA tensors only
        backend = "nccl" if device_type == "cuda" else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restart not in ("", "0") and "MASTER_ADDR" in os.environ:
            # a group restarted by torchrun --max-restarts shares the agent's store with the
            # failed round, whose keys (peer addresses) are still there: gloo then connects to
            # a dead peer. Keys of this round get their own prefix.
            import datetime
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                  self.world, is_master=False,
                                  timeout=datetime.timedelta(seconds=600))
            store = dist.PrefixStore(f"train_gpt2/restart{restart}", store)
            dist.init_process_group(backend=backend, store=store, rank=self.rank,
                                    world_size=self.world)
        else:
            dist.init_process_group(backend=backend)
        self.initialized = True

    def destroy(self, sync=False):
        """Tear the process group down. sync=True (normal exit on every rank) first waits for
        all ranks: a gloo rank that tears down while a peer is still busy (rank 0 plotting) can
        die with SIGABRT at interpreter exit."""
        if self.initialized:
            import torch.distributed as dist
            if dist.is_initialized():
                if sync:
                    try:
                        if dist.get_backend() == "gloo":
                            import datetime
                            dist.monitored_barrier(timeout=datetime.timedelta(seconds=300))
                        else:
                            dist.barrier()
                    except Exception:   # a peer is gone: nothing left to wait for
                        pass
                dist.destroy_process_group()
            self.initialized = False

    def sum_(self, t):
        """In-place all_reduce SUM (no-op single process)."""
        if self.initialized:
            import torch.distributed as dist
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_ok(self, ok, device=None):
        """True when every rank passes ok=1 (also a barrier)."""
        if not self.initialized:
            return bool(ok)
        t = torch.tensor([0 if ok else 1], dtype=torch.int64, device=device or self.coll_device)
        return int(self.sum_(t).item()) == 0

    def gather_object(self, obj):
        if not self.initialized:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


# ----------------------------------------------------------------------------------------------
# logging

class RunLog:
    """Text log (stdout + log/{run}.txt) and the jsonl twin; rank 0 only, flushed every line."""

    def __init__(self, txt_path, jsonl_path, master, append):
        self.master = master
        self.txt = self.jsonl = None
        self.txt_path, self.jsonl_path = txt_path, jsonl_path
        if master:
            os.makedirs(os.path.dirname(txt_path) or ".", exist_ok=True)
            mode = "a" if append else "w"
            self.txt = open(txt_path, mode, encoding="utf-8")
            self.jsonl = open(jsonl_path, mode, encoding="utf-8")

    def line(self, s):
        if not self.master:
            return
        print(s, flush=True)
        self.txt.write(s + "\n")
        self.txt.flush()

    def note(self, s):
        self.line("# " + s)

    def event(self, kind, **data):
        if not self.master:
            return
        data = {"event": kind, "time": round(time.time(), 3), **data}
        self.jsonl.write(json.dumps(data, default=_json_default, allow_nan=True) + "\n")
        self.jsonl.flush()

    def close(self):
        for f in (self.txt, self.jsonl):
            if f is not None:
                try:
                    f.close()
                except OSError:   # flushing into a full disk: the error was reported already
                    pass
        self.txt = self.jsonl = None


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (np.generic,)):
        return o.item()
    return str(o)


def format_train_line(step, r, k, skipped=None):
    """The journal's train line (see the module docstring)."""
    esd = [round(float(v), 3) for v in r["earlystopdict"]]
    s = (f"@ {step} train {r['loss']:.4f} , allloss: {r['allloss']:.4f}, "
         f"confloss: {r['confloss']:.4f}, targetloss: {r['targetloss']:.4f}, "
         f"earlystop: {r['earlystop']:.3f}, earlystopdict: {esd}, lr:{r['lr']:.4e}, "
         f"norm:{r['norm']:.4f}, dt: {r['dt'] * 1000:.2f}ms, tok/sec: {r['tok_sec']:.2f}, "
         f"flops:{r['tflops']:.2f}, batch-reuse:{k}")
    if skipped:
        s += f", skipped:{skipped}"
    return s


def format_size_lines(residual_std):
    """n_layer lines `SIZE COMPARISON prev {} mid {} next {}` (full float repr, as the journal)."""
    return [f"SIZE COMPARISON prev {float(p)!r} mid {float(m)!r} next {float(n)!r}"
            for p, m, n in residual_std]


def git_state(root=ROOT):
    """(commit or None, dirty bool or None, list of changed tracked files)."""
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=20)
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None, None, []
    if status.returncode != 0:
        return None, None, []
    changed = [l[3:] for l in status.stdout.splitlines() if l.strip()]
    sha = commit.stdout.strip() if commit.returncode == 0 else None
    return sha, bool(changed), changed


def _versions():
    from importlib import metadata
    out = {}
    for p in ("torch", "numpy", "tiktoken", "datasets", "matplotlib"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


# ----------------------------------------------------------------------------------------------
# schedule

def get_lr(step, cfg):
    """Learning rate at optimizer step `step` (0-based)."""
    max_lr, steps = cfg["max_lr"], cfg["max_steps"]
    min_lr = cfg["min_lr"] if cfg["min_lr"] is not None else max_lr * 0.1
    if cfg["lr_schedule"] == "onecycle":
        # one-cycle (Smith; PyTorch OneCycleLR with cosine annealing): max_lr/div -> max_lr over
        # onecycle_pct of the steps, then down to max_lr/div/final_div
        start = max_lr / cfg["onecycle_div"]
        end = start / cfg["onecycle_final_div"]
        up = max(1, int(round(cfg["onecycle_pct"] * steps)))
        if step < up:
            frac, a, b = step / up, start, max_lr
        else:
            frac, a, b = min(1.0, (step - up) / max(1, steps - 1 - up)), max_lr, end
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * frac))
    warm = cfg["warmup_steps"]
    if step < warm:                              # build-nanogpt: linear warmup
        return max_lr * (step + 1) / warm
    if step > steps or steps <= warm:
        return min_lr
    ratio = (step - warm) / (steps - warm)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


# ----------------------------------------------------------------------------------------------
# checkpoints

def list_checkpoints(ckpt_dir):
    """[(step, path)] sorted by step."""
    if not os.path.isdir(ckpt_dir):
        return []
    out = []
    for name in os.listdir(ckpt_dir):
        m = CKPT_RE.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(ckpt_dir, name)))
    return sorted(out)


CKPT_KEYS = ("model", "model_config", "train_config", "step", "optimizer", "loader", "rng")


def checkpoint_digest(obj):
    """blake2b hex digest of a checkpoint's content (every tensor's dtype, shape and bytes, every
    other value's repr, dict keys in sorted order), without its own "digest" entry. torch.load
    notices a truncated file but not a flipped bit inside tensor data; this does."""
    h = hashlib.blake2b(digest_size=32)

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=str):
                if k == "digest" and o is obj:
                    continue
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())
    walk(obj)
    return h.hexdigest()


def load_checkpoint(path):
    """(ckpt dict, None) or (None, reason) for a missing/truncated/corrupt checkpoint."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if not isinstance(ck, dict) or any(k not in ck for k in CKPT_KEYS):
        return None, "not a train_gpt2.py checkpoint (keys missing)"
    if "digest" in ck and ck["digest"] != checkpoint_digest(ck):
        return None, "content digest mismatch (corrupted data)"
    return ck, None


def remove_stale_temps(ckpt_dir):
    """Delete the temp files of checkpoint writes that were killed part-way -> their names."""
    gone = []
    if os.path.isdir(ckpt_dir):
        for name in sorted(os.listdir(ckpt_dir)):
            if CKPT_TMP_RE.match(name):
                try:
                    os.remove(os.path.join(ckpt_dir, name))
                    gone.append(name)
                except OSError:
                    pass
    return gone


def atomic_save(obj, path):
    """torch.save to a temp file in the same directory, fsync, os.replace, fsync the directory."""
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fineweb.fsync_dir(d)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _rng_state(device_type):
    np_state, py_state = np.random.get_state(), random.getstate()
    st = {"torch": torch.get_rng_state(),
          "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                    int(np_state[3]), float(np_state[4])],
          "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if device_type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st, device_type):
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = st["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if device_type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"])


def _config_diff(a, b):
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


# ----------------------------------------------------------------------------------------------
# the run

class Run:
    """Everything one training invocation holds (model, optimizer, loaders, logs)."""

    def __init__(self, cfg, dist_ctx):
        self.cfg, self.d = cfg, dist_ctx
        self.stop_signal = None
        self.in_loop = False     # True once setup is done: a signal then stops gracefully
        self.skipped = 0

    # -- setup --------------------------------------------------------------------------------

    def setup(self):
        """Validation (no file written on failure), then model, optimizer, loaders, logs."""
        cfg, d = self.cfg, self.d
        self.mcfg, self.grad_accum = validate_config(cfg, d.world)
        dev = cfg["device"]
        if dev == "auto":
            if torch.cuda.is_available():
                dev = "cuda"
            elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                dev = "mps"
            else:
                dev = "cpu"
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {dev!r} requested but CUDA is not available")
        if dev == "cuda" and d.ddp:
            dev = f"cuda:{d.local_rank}"
        self.device, self.device_type = dev, dev.split(":")[0]
        dt = cfg["dtype"]
        if dt == "auto":
            dt = "bfloat16" if self.device_type == "cuda" else "float32"
        self.dtype = dt
        self.compile = cfg["compile"] if cfg["compile"] is not None else self.device_type == "cuda"
        if not cfg["dirty_ok"]:
            sha, dirty, changed = git_state()
            if dirty is None:
                raise ConfigError("dirty_ok=False but the git state of the tree cannot be read")
            if dirty:
                raise ConfigError(f"dirty_ok=False and tracked files have uncommitted changes "
                                  f"({', '.join(changed[:5])}); commit them or pass --dirty_ok=True")
        d.init(self.device_type)

        # data
        self.meta = prepare_data(cfg, d)
        mk = lambda split, shuf: DataLoader(                                    # noqa: E731
            fineweb.shard_paths(self.meta, split), cfg["B"], cfg["T"], cfg["total_batch_size"],
            d.rank, d.world, int(self.meta["vocab_size"]), split, shuffle=shuf, seed=cfg["seed"])
        self.train_loader = mk("train", cfg["shuffle"])
        self.val_loader = mk("val", False)
        self.eval_steps = min(cfg["eval_iters"], self.val_loader.total_blocks)

        # resume: find the checkpoint (validated before anything is written)
        self.ckpt_dir = os.path.join(cfg["log_dir"], cfg["run_name"])
        self.notes = []
        self.ckpt, self.ckpt_path = None, None
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if cfg["resume"] is None and restarts > 0 and not cfg["lr_find"]:
            cfg["resume"] = "auto"    # torchrun --max-restarts restarted the group: continue
            self.notes.append(f"torchrun restart {restarts}: resume=auto")
        if cfg["resume"] is not None and not cfg["lr_find"]:
            self._find_resume()

        # model
        from model import GPT
        torch.manual_seed(cfg["seed"])
        if self.device_type == "cuda":
            torch.cuda.manual_seed(cfg["seed"])
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.set_float32_matmul_precision("high")
        model = GPT(self.mcfg)
        if self.ckpt is not None:
            model.load_state_dict(self._strip(self.ckpt["model"]))
        model.to(self.device)
        self.raw_model = model
        if self.compile:
            self._compile_blocks()
        self.optimizer = model.configure_optimizers(cfg["weight_decay"], cfg["max_lr"],
                                                    (cfg["beta1"], cfg["beta2"]), self.device_type)
        if d.initialized:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.model = DDP(model, device_ids=[d.local_rank] if self.device_type == "cuda" else None)
        else:
            self.model = model
        if self.ckpt is not None:
            self.optimizer.load_state_dict(self.ckpt["optimizer"])

        import tokenizer as tok
        try:
            self.tok = tok.get_tokenizer(self.meta["tokenizer"], self.meta.get("chars"))
        except Exception as e:
            self.tok = None
            self.notes.append(f"samples disabled: no tokenizer ({type(e).__name__}: {e})")
        self.autocast = (torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
                         if self.dtype == "bfloat16" else nullcontext())

        # logs (only now: every check above has passed)
        os.makedirs(cfg["log_dir"], exist_ok=True)
        name = cfg["run_name"] + ("_lr_find" if cfg["lr_find"] else "")
        txt = os.path.join(cfg["log_dir"], name + ".txt")
        jsl = os.path.join(cfg["log_dir"], name + ".jsonl")
        if d.master and not cfg["lr_find"]:
            stale = remove_stale_temps(self.ckpt_dir)
            if stale:
                self.notes.append(f"removed {len(stale)} partial checkpoint write(s) of a killed "
                                  f"run: {', '.join(stale)}")
        if d.master and self.ckpt is None and not cfg["lr_find"]:
            self._backup_previous(txt, jsl)
        self.log = RunLog(txt, jsl, d.master, append=self.ckpt is not None)
        self._header()

    @staticmethod
    def _strip(sd):
        out = {}
        for k, v in sd.items():
            for pre in ("module.", "_orig_mod."):
                k = k[len(pre):] if k.startswith(pre) else k
            out[k.replace("._orig_mod.", ".")] = v
        return out

    def _compile_blocks(self):
        """Regional compile: each stored Block module (one for share_weights) is compiled in
        place (nn.Module.compile), so state_dict keys, eval and generate are unchanged."""
        from model import Block
        n = 0
        for m in self.raw_model.modules():
            if isinstance(m, Block):
                m.compile()
                n += 1
        self.compiled_blocks = n

    def _find_resume(self):
        cfg = self.cfg
        if cfg["resume"] == "auto":
            cands = list_checkpoints(self.ckpt_dir)[::-1]
            if not cands:
                self.notes.append(f"resume=auto: no checkpoint in {self.ckpt_dir}; starting fresh")
                return
        else:
            if not os.path.isfile(cfg["resume"]):
                raise ConfigError(f"resume checkpoint not found: {cfg['resume']}")
            cands = [(None, cfg["resume"])]
        for _, path in cands:
            ck, why = load_checkpoint(path)
            if ck is None:
                msg = f"checkpoint {path} is unreadable ({why})"
                if cfg["resume"] != "auto":
                    raise ConfigError(msg)
                self.notes.append(msg + "; trying the previous one")
                if self.d.master:
                    print(f"warning: {msg}; trying the previous one", file=sys.stderr, flush=True)
                continue
            mine = dataclasses.asdict(self.mcfg)
            diff = [(k, a, b) for k, a, b in _config_diff(ck["model_config"], mine)]
            if diff:
                what = ", ".join(f"{k} {a!r} (checkpoint) vs {b!r} (this run)" for k, a, b in diff)
                raise ConfigError(f"checkpoint {path} has a different model config: {what}")
            self.ckpt, self.ckpt_path = ck, path
            return
        self.notes.append(f"resume=auto: no valid checkpoint in {self.ckpt_dir}; starting fresh")

    def _backup_previous(self, txt, jsl):
        """A fresh start over an earlier run of the same name: its log, jsonl and checkpoints
        move to log/{run}/prev/ (replacing an older prev/) so resume=auto never picks them."""
        old = [p for p in (txt, jsl) if os.path.exists(p)] + [p for _, p in list_checkpoints(self.ckpt_dir)]
        if not old:
            return
        prev = os.path.join(self.ckpt_dir, "prev")
        if os.path.isdir(prev):
            shutil.rmtree(prev)
        os.makedirs(prev)
        for p in old:
            os.replace(p, os.path.join(prev, os.path.basename(p)))
        self.notes.append(f"an earlier run's files ({len(old)}) were moved to {prev}")

    def resolved_config(self):
        """The constants as this run uses them: min_lr, compile and dtype resolved; the model's
        fields as GPTConfig holds them (e.g. layer_heads, which every exit loss but final turns on)."""
        cfg = dict(self.cfg)
        cfg.update(dataclasses.asdict(self.mcfg))
        cfg["min_lr"] = cfg["min_lr"] if cfg["min_lr"] is not None else cfg["max_lr"] * 0.1
        cfg["compile"], cfg["dtype"] = self.compile, self.dtype
        return cfg

    def _header(self):
        cfg, d, log = self.cfg, self.d, self.log
        if not d.master:
            return
        sha, dirty, _ = git_state()
        v = _versions()
        if self.device_type == "cuda":
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        else:
            names = [self.device_type]
        self.device_name = names[0] if names else self.device_type
        resolved = self.resolved_config()
        raw = self.raw_model
        tr = sum(s["tokens"] for s in self.meta["shards"] if s["split"] == "train")
        va = sum(s["tokens"] for s in self.meta["shards"] if s["split"] == "val")
        log.note(f"==== run {cfg['run_name']} {'resumed' if self.ckpt else 'started'} "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')} ====")
        log.note("command: " + " ".join(shlex.quote(a) for a in [os.path.basename(sys.argv[0])] + self.argv))
        log.note(f"git: {sha or 'unknown'} (dirty: {dirty})")
        log.note(f"torch {torch.__version__}, cuda {torch.version.cuda}, devices: {', '.join(names)}; "
                 f"device {self.device}, world_size {d.world}, dtype {self.dtype}, "
                 f"compile {self.compile}")
        log.note("packages: " + ", ".join(f"{k} {val}" for k, val in v.items()))
        log.note(f"data: {self.meta['data_dir']} ({self.meta['tokenizer']} tokenizer, vocab "
                 f"{self.meta['vocab_size']}; train {tr} tokens, val {va} tokens)")
        log.note(f"model: {raw.get_num_params():,} params ({raw.num_unique_block_params():,} in "
                 f"stored blocks), {raw.flops_per_token(cfg['T']):.4g} training FLOPs/token")
        log.note(f"batch: total_batch_size {cfg['total_batch_size']} = B {cfg['B']} x T {cfg['T']} "
                 f"x grad_accum {self.grad_accum} x world_size {d.world}")
        log.note("config: " + json.dumps(resolved, sort_keys=True))
        log.event("header", config=resolved, model_config=dataclasses.asdict(self.mcfg),
                  git_commit=sha, git_dirty=dirty, versions=v, devices=names, world_size=d.world,
                  cuda=torch.version.cuda, grad_accum=self.grad_accum,
                  params=raw.get_num_params(), resumed_from=self.ckpt_path)
        for n in self.notes:
            log.note(n)
        if self.ckpt is not None:
            log.note(f"resumed from {self.ckpt_path} at step {int(self.ckpt['step']) + 1}")
            log.event("resume", path=self.ckpt_path, step=int(self.ckpt["step"]) + 1)
            diff = [x for x in _config_diff(self.ckpt["train_config"], resolved)
                    if x[0] not in ("resume", "stop_at_step")]
            if diff:
                log.note("train config differs from the checkpoint's: " +
                         ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in diff))

    # -- one optimizer step -------------------------------------------------------------------

    def train_step(self, batches, lr, step, guard=True, want_stats=True):
        """Forward/backward over the micro batches (gradient accumulation, no_sync but the last),
        guards, clip, optimizer step. Returns the logged numbers (loss averaged over micro steps
        and ranks).

        Statistics (allloss, earlystop(dict), layer_losses, residual_std): with per-layer heads
        (layer_heads or early_exit) they are free and averaged over every micro step; without,
        they need L extra heads, so they are computed only when want_stats (logged steps), on
        the first micro step of each rank (then averaged over ranks): on its first stats_rows
        sequences in an extra no-grad eval-mode forward (no RNG drawn), or with stats_rows=0
        on the whole micro batch inside the training forward."""
        cfg, d, model, raw = self.cfg, self.d, self.model, self.raw_model
        L = self.mcfg.n_layer
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = len(batches)
        heads_on = self.mcfg.layer_heads or self.mcfg.early_exit
        n_stats = n if heads_on else (1 if want_stats else 0)
        acc = torch.zeros(6 + 2 * L + 3 * L, device=self.device, dtype=torch.float32)
        for micro, (x, y) in enumerate(batches):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if d.initialized:
                model.require_backward_grad_sync = micro == n - 1
            with_stats = micro < n_stats
            poison = None
            if (cfg["debug_nonfinite_step"] is not None and step == cfg["debug_nonfinite_step"]
                    and cfg["debug_nonfinite_kind"] == "output"):
                # testing: the last block's output becomes NaN at this step (loss, residual_std
                # and grads all non-finite from that layer on)
                poison = raw.block(L - 1).register_forward_hook(
                    lambda mod, inp, out: (out[0] * float("nan"),) + tuple(out[1:]))
            sample_stats = with_stats and not heads_on and 0 < cfg["stats_rows"] < x.size(0)
            with self.autocast:
                if with_stats and not sample_stats:
                    _, loss, st = model(x, y, return_stats=True, return_logits=False)
                else:
                    _, loss = model(x, y, return_logits=False)
                if sample_stats:
                    st = self._sample_stats(x[:cfg["stats_rows"]], y[:cfg["stats_rows"]])
            if poison is not None:
                poison.remove()
            (loss / n).backward()
            with torch.no_grad():
                acc[0] += loss.detach().float() / n
                if with_stats:
                    rs = st["residual_std"]
                    acc[1:] += torch.cat([
                        st["allloss"].float().view(1), st["confloss"].float().view(1),
                        st["targetloss"].float().view(1), st["earlystop"].float().view(1),
                        st["exit_depth"].float().view(1),
                        st["earlystopdict"].float().view(-1), st["layer_losses"].float().view(-1),
                        rs.float().reshape(-1)]) / n_stats
        if (cfg["debug_nonfinite_step"] is not None and step == cfg["debug_nonfinite_step"]
                and cfg["debug_nonfinite_kind"] == "grad"):
            with torch.no_grad():   # testing: one gradient entry of the first block becomes inf
                next(p for p in raw.block(0).parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
        d.sum_(acc)
        acc = (acc / d.world).cpu()
        stats = n_stats > 0
        nan = float("nan")
        r = {"objective": acc[0].item(), "stats": stats}
        for i, key in enumerate(("allloss", "confloss", "targetloss", "earlystop", "exit_depth"), 1):
            r[key] = acc[i].item() if stats else nan
        r["earlystopdict"] = acc[6:6 + L].tolist() if stats else [nan] * L
        r["layer_losses"] = acc[6 + L:6 + 2 * L].tolist() if stats else [nan] * L
        # the train field: the last layer's CE on this step's batch (the objective when the model
        # has no per-layer heads, whose loss is exactly that CE)
        r["loss"] = r["layer_losses"][-1] if heads_on else r["objective"]
        r["residual_std"] = acc[6 + 2 * L:].view(L, 3).tolist() if stats else None
        clip = cfg["grad_clip"] if cfg["grad_clip"] and cfg["grad_clip"] > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), clip)
        r["norm"] = float(norm)
        r["skip"] = False
        if guard:
            problem = self._check_guards(r, step)
            if problem is not None:
                nonfinite, msg = problem
                if nonfinite and cfg["skip_nonfinite"]:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped += 1
                    r["skip"] = True
                    r["lr"] = lr
                    self.log.note(f"skipped step {step}: {msg}")
                    return r
                raise GuardError(msg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        r["lr"] = lr
        return r

    @torch.no_grad()
    def _sample_stats(self, x, y):
        """Per-layer statistics of a model without per-layer heads from a no-grad, eval-mode
        forward of a few sequences x, y (b, T) (eval mode: no dropout, so no RNG is drawn)."""
        raw = self.raw_model
        raw.eval()
        try:
            return raw(x, y, return_stats=True, return_logits=False)[2]
        finally:
            raw.train()

    def _check_guards(self, r, step):
        """(nonfinite: bool, message) for the first problem, or None."""
        L = self.mcfg.n_layer
        if not math.isfinite(r["objective"]):
            bad = [l for l, v in enumerate(r["layer_losses"]) if not math.isfinite(v)]
            if not r["stats"]:   # no per-layer heads and not a logged step: nothing to name
                where = "; layer losses are not computed on unlogged steps of this model"
            elif bad:
                where = f"; first non-finite layer loss at layer {bad[0] + 1}/{L} ({r['layer_losses'][bad[0]]})"
            else:
                where = ""
            return True, f"step {step}: non-finite loss ({r['objective']}){where}"
        if not math.isfinite(r["norm"]):
            name = next((pn for pn, p in self.raw_model.named_parameters()
                         if p.grad is not None and not torch.isfinite(p.grad).all()), "?")
            return True, f"step {step}: non-finite grad norm ({r['norm']}); first non-finite grad: {name}"
        lim = self.cfg["residual_limit"]
        for l, row in enumerate(r["residual_std"] or []):
            for j, v in enumerate(row):
                if math.isnan(v) and j == 2:
                    continue   # `next` is NaN when the layer's head did not run
                if not math.isfinite(v) or (lim is not None and v > lim):
                    q = ("prev", "mid", "next")[j]
                    nf = not math.isfinite(v)
                    return nf, (f"step {step}: residual_std {q} at layer {l + 1}/{L} is {v:.6g}"
                                + ("" if nf else f" > residual_limit {lim:g}"))
        return None

    # -- evaluation / sampling ----------------------------------------------------------------

    def _fork_rng(self, salt):
        devices = [torch.device(self.device).index or 0] if self.device_type == "cuda" else []
        ctx = torch.random.fork_rng(devices=devices)
        return ctx, self.cfg["seed"] + 1000 * salt + self.d.rank

    @torch.no_grad()
    def evaluate(self, step):
        """Val CE of the last layer (the `val` line), per-layer val CE, mean exit depth; with
        early exit the CE at each token's exit layer (`val-exit`); the objective (`val-objective`
        unless exit_loss is final, and in the jsonl); HellaSwag."""
        cfg, raw, L = self.cfg, self.raw_model, self.mcfg.n_layer
        raw.eval()
        self.val_loader.reset()
        acc = torch.zeros(3 + L, device=self.device)
        n = self.eval_steps * self.grad_accum
        fork, s = self._fork_rng(1)
        with fork:
            torch.manual_seed(s)
            for _ in range(n):
                x, y = self.val_loader.next_batch()
                x, y = x.to(self.device), y.to(self.device)
                with self.autocast:
                    _, loss, st = raw(x, y, return_stats=True, return_logits=False)
                acc += torch.cat([loss.float().view(1), st["exit_depth"].float().view(1),
                                  st["exit_ce"].float().view(1), st["layer_losses"].float().view(-1)]) / n
        self.d.sum_(acc)
        acc = (acc / self.d.world).cpu()
        objective, depth, exit_ce, layers = acc[0].item(), acc[1].item(), acc[2].item(), acc[3:].tolist()
        val = layers[-1]
        self.log.line(f"@ {step} val {val:.4f}")
        self.log.line(f"@ {step} val-layers {[round(v, 4) for v in layers]}, exit-depth: {depth:.3f}")
        if self.mcfg.early_exit:
            self.log.line(f"@ {step} val-exit {exit_ce:.4f}")
        if self.mcfg.exit_loss != "final":
            self.log.line(f"@ {step} val-objective {objective:.4f}")
        self.log.event("val", step=step, loss=val, layer_losses=layers, exit_depth=depth,
                       exit_ce=exit_ce if self.mcfg.early_exit else None, objective=objective)
        if cfg["hellaswag"]:
            self._hellaswag(step)
        raw.train()
        return val

    def _hellaswag(self, step):
        cfg = self.cfg
        if not hasattr(self, "hs_examples"):
            self.hs_examples = None
            try:
                import hellaswag
                src = None if cfg["hellaswag"] == "hf" else cfg["hellaswag"]
                self.hs_examples = hellaswag.load_examples(src, cfg["hellaswag_limit"])
                self.hs_mod = hellaswag
            except Exception as e:
                self.log.note(f"hellaswag disabled: {type(e).__name__}: {e}")
        if not self.hs_examples or self.tok is None:
            return
        try:
            with self.autocast:
                counts = self.hs_mod.evaluate(self.raw_model, self.hs_examples, self.device,
                                              self.tok, rank=self.d.rank, world_size=self.d.world)
        except Exception as e:   # e.g. text the char vocabulary cannot encode; same on every rank
            self.hs_examples = None
            self.log.note(f"hellaswag disabled: {type(e).__name__}: {e}")
            return
        t = self.d.sum_(torch.tensor(counts, dtype=torch.int64, device=self.device)).tolist()
        n_norm, n_plain, n = t
        self.log.line(f"@ {step} hellaswag {n_norm / max(n, 1):.4f}, acc: {n_plain / max(n, 1):.4f}, "
                      f"total: {n}")
        self.log.event("hellaswag", step=step, acc_norm=n_norm / max(n, 1), acc=n_plain / max(n, 1),
                       correct_norm=n_norm, correct=n_plain, total=n)

    @torch.no_grad()
    def sample(self, step):
        """num_samples continuations of sample_prompt (rank 0; RNG forked so training is unaffected)."""
        cfg, raw = self.cfg, self.raw_model
        if self.tok is None or not self.d.master or cfg["sample_tokens"] == 0:
            return
        try:
            ids = self.tok.encode(cfg["sample_prompt"])
        except ValueError:
            ids = []
        if not ids:   # prompt not encodable (char vocabulary): start from the val data
            ids = [int(t) for t in self.val_loader.load_tokens(self.val_loader.paths[0])[:8]]
        ids = ids[-max(1, self.mcfg.block_size // 2):]
        raw.eval()
        fork, s = self._fork_rng(2)
        with fork:
            torch.manual_seed(s)
            idx = torch.tensor(ids, dtype=torch.long, device=self.device)[None].repeat(cfg["num_samples"], 1)
            with self.autocast:
                out = raw.generate(idx, cfg["sample_tokens"], temperature=1.0, top_k=50)
        raw.train()
        for i in range(out.size(0)):
            text = self._decode(out[i].tolist())
            self.log.line(f"@ {step} sample {i}: " + text.replace("\\", "\\\\").replace("\n", "\\n"))
            self.log.event("sample", step=step, index=i, text=text)

    def _decode(self, ids):
        """Decode; ids outside the data's vocabulary (the padded rows, e.g. 50257..50303) -> U+FFFD."""
        n = int(self.meta["vocab_size"])
        parts, run = [], []
        for t in ids:
            if t < n:
                run.append(t)
            else:
                parts.append(self.tok.decode(run) + "\ufffd")
                run = []
        return "".join(parts) + self.tok.decode(run)

    # -- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, step, loader_start, why):
        """All ranks call this (RNG states are gathered); rank 0 writes atomically and prunes."""
        cfg, d = self.cfg, self.d
        rngs = d.gather_object(_rng_state(self.device_type))
        path = os.path.join(self.ckpt_dir, f"ckpt_{step:06d}.pt")
        ok, err = 1, None
        if d.master:
            obj = {"model": {k: v.detach().cpu() for k, v in self._strip(self.raw_model.state_dict()).items()},
                   "model_config": dataclasses.asdict(self.mcfg), "train_config": self.resolved_config(),
                   "step": step, "optimizer": self.optimizer.state_dict(),
                   "loader": self.train_loader.state_dict(), "loader_batch_start": loader_start,
                   "rng": rngs, "world_size": d.world, "skipped": self.skipped,
                   "tokenizer": {"name": self.meta["tokenizer"], "chars": self.meta.get("chars"),
                                 "vocab_size": int(self.meta["vocab_size"]),
                                 "eot": self.meta.get("eot")}}
            obj["digest"] = checkpoint_digest(obj)
            try:
                atomic_save(obj, path)
            except OSError as e:
                ok, err = 0, e
            if ok:
                for _, old in list_checkpoints(self.ckpt_dir)[:-cfg["keep_checkpoints"]]:
                    try:
                        os.remove(old)
                    except OSError:
                        pass
                self.log.note(f"checkpoint saved: {path} (step {step}, {why})")
                self.log.event("checkpoint", step=step, path=path, reason=why)
        if not d.all_ok(ok, self.device if self.device_type == "cuda" else "cpu"):
            msg = f"saving checkpoint {path} failed ({err or 'on rank 0'}); previous checkpoints are intact"
            raise GuardError(msg)
        return path

    # -- main loop ------------------------------------------------------------------------------

    def train(self):
        cfg, d, log = self.cfg, self.d, self.log
        start = 0
        loader_start = self.train_loader.state_dict()
        k = cfg["batch_reuse"]
        batches = None
        if self.ckpt is not None:
            ck = self.ckpt
            start = int(ck["step"]) + 1
            self.skipped = int(ck.get("skipped", 0))
            rngs = ck["rng"]
            if d.rank < len(rngs) and ck.get("world_size", len(rngs)) == d.world:
                _set_rng_state(rngs[d.rank], self.device_type)
            else:
                torch.manual_seed(cfg["seed"] + d.rank + start)
                log.note(f"world size changed ({len(rngs)} -> {d.world}): RNG states reseeded")
            if start % k == 0:
                self.train_loader.load_state_dict(ck["loader"])
            else:   # mid batch-reuse: fetch the batch being reused again
                self.train_loader.load_state_dict(ck["loader_batch_start"])
                loader_start = self.train_loader.state_dict()
                batches = [self.train_loader.next_batch() for _ in range(self.grad_accum)]
            self.ckpt = None   # free memory
        else:
            torch.manual_seed(cfg["seed"] + d.rank)
        tok_per_step = cfg["total_batch_size"]
        flops_tok = self.raw_model.flops_per_token(cfg["T"])
        known = peak_bf16_flops(getattr(self, "device_name", ""))
        peak = known[1] if known and self.dtype == "bfloat16" else None   # MFU only against it
        last_val = None
        for step in range(start, cfg["max_steps"]):
            last = step == cfg["max_steps"] - 1
            if (cfg["eval_interval"] and step % cfg["eval_interval"] == 0) or last:
                last_val = self.evaluate(step)
            if cfg["sample_interval"] and ((step > 0 and step % cfg["sample_interval"] == 0) or last):
                self.sample(step)
            t0 = time.time()
            if batches is None or step % k == 0:
                loader_start = self.train_loader.state_dict()
                batches = [self.train_loader.next_batch() for _ in range(self.grad_accum)]
            if hasattr(self.raw_model, "set_progress"):
                self.raw_model.set_progress(step / cfg["max_steps"], step)
            log_now = step % max(1, cfg["log_interval"]) == 0 or last
            size_now = bool(cfg["size_interval"]) and step % cfg["size_interval"] == 0
            r = self.train_step(batches, get_lr(step, cfg), step, want_stats=log_now or size_now)
            if self.device_type == "cuda":
                torch.cuda.synchronize()
            dt = time.time() - t0
            r["dt"] = dt
            r["tok_sec"] = tok_per_step / dt
            r["tflops"] = flops_tok * tok_per_step / d.world / dt / 1e12
            if log_now:
                log.line(format_train_line(step, r, k, self.skipped if cfg["skip_nonfinite"] else None))
                mem = (torch.cuda.max_memory_allocated(self.device) if self.device_type == "cuda"
                       else _maxrss())
                log.event("train", step=step, loss=r["loss"], objective=r["objective"], allloss=r["allloss"],
                          confloss=r["confloss"], targetloss=r["targetloss"],
                          earlystop=r["earlystop"], earlystopdict=r["earlystopdict"],
                          layer_losses=r["layer_losses"], exit_depth=r["exit_depth"], lr=r["lr"],
                          norm=r["norm"], dt_ms=dt * 1000, tok_sec=r["tok_sec"], flops=r["tflops"],
                          mfu=(r["tflops"] * 1e12 / peak) if peak else None, peak_mem_bytes=mem,
                          batch_reuse=k, skipped=self.skipped, skipped_step=r["skip"])
            if size_now:
                for s in format_size_lines(r["residual_std"]):
                    log.line(s)
                log.event("size", step=step, residual_std=r["residual_std"])
            stop = self._stop_requested()
            at_stop_step = cfg["stop_at_step"] is not None and step == cfg["stop_at_step"]
            if (last or stop or at_stop_step
                    or (cfg["checkpoint_interval"] and step > 0 and step % cfg["checkpoint_interval"] == 0)):
                why = ("final" if last else f"signal {stop}" if stop
                       else "stop_at_step" if at_stop_step else "interval")
                self.save_checkpoint(step, loader_start, why)
            if stop or at_stop_step:
                why = f"received {stop}" if stop else f"stop_at_step={step} reached"
                log.note(f"stopping after step {step}: {why}; resume with --resume=auto")
                log.event("stop", step=step, reason=why)
                return 0
        log.note(f"done: {cfg['max_steps']} steps, final val {last_val}")
        log.event("done", step=cfg["max_steps"] - 1, val=last_val, skipped=self.skipped)
        self._plot()
        return 0

    def _stop_requested(self):
        """Signal name when any rank received SIGTERM/SIGINT (all ranks agree)."""
        codes = {"SIGTERM": 1, "SIGINT": 2}
        mine = codes.get(self.stop_signal, 0)
        if self.d.initialized:
            t = torch.tensor([mine], dtype=torch.int64,
                             device=self.device if self.device_type == "cuda" else "cpu")
            import torch.distributed as dist
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            mine = int(t.item())
        return {1: "SIGTERM", 2: "SIGINT"}.get(mine)

    def _plot(self):
        if not self.d.master:
            return
        try:   # what `python plot.py log/<run>.txt --out <img_dir>` writes
            import plot
            written, skipped = plot.plot_all([self.log.txt_path], self.cfg["img_dir"])
            for out in written:
                self.log.note(f"plot written: {out}")
            for why in skipped:
                self.log.note(f"plot skipped: {why}")
        except Exception as e:
            self.log.note(f"plot skipped ({type(e).__name__}: {e})")

    # -- LR range test ------------------------------------------------------------------------

    def lr_find(self):
        """Exponentially increasing LR from lr_find_start to lr_find_end over lr_find_steps
        steps; stops when the smoothed loss exceeds 4x its minimum (divergence). Suggested LR:
        steepest descent of the smoothed loss over log10(lr)."""
        cfg, log = self.cfg, self.log
        n = cfg["lr_find_steps"]
        a, b = cfg["lr_find_start"], cfg["lr_find_end"]
        lrs, losses, smooth = [], [], []
        avg, best = 0.0, float("inf")
        torch.manual_seed(cfg["seed"] + self.d.rank)
        for i in range(n):
            lr = a * (b / a) ** (i / max(1, n - 1))
            batches = [self.train_loader.next_batch() for _ in range(self.grad_accum)]
            r = self.train_step(batches, lr, i, guard=False, want_stats=False)
            loss = r["objective"]
            if not math.isfinite(loss):
                log.note(f"lr_find: loss non-finite at lr {lr:.4e}; stopping")
                break
            avg = 0.98 * avg + 0.02 * loss
            sm = avg / (1 - 0.98 ** (i + 1))
            lrs.append(lr), losses.append(loss), smooth.append(sm)
            log.line(f"@ {i} lr_find lr:{lr:.4e}, loss: {loss:.4f}, smooth: {sm:.4f}")
            log.event("lr_find", step=i, lr=lr, loss=loss, smooth=sm)
            best = min(best, sm)
            if i > 5 and sm > 4 * best:
                log.note(f"lr_find: smoothed loss {sm:.4f} > 4x best {best:.4f}; diverged, stopping")
                break
        if len(lrs) < 3:
            log.note("lr_find: too few steps for a suggestion")
            return 0
        sug, lo = suggest_lr(lrs, smooth)
        log.note(f"lr_find suggested max_lr: {sug:.4e} (steepest descent of the smoothed loss); "
                 f"lowest smoothed loss at lr {lo:.4e}")
        log.event("lr_find_result", suggested_lr=sug, min_loss_lr=lo)
        if self.d.master:
            out = os.path.join(cfg["img_dir"], f"{cfg['run_name']}_lr_find.png")
            try:
                _plot_lr_find(lrs, losses, smooth, sug, out)
                log.note(f"plot written: {out}")
            except Exception as e:
                log.note(f"plot skipped ({type(e).__name__}: {e})")
        return 0


def suggest_lr(lrs, smooth):
    """(lr at the steepest negative slope of smooth vs log10(lr), lr at the smallest smooth)."""
    x = np.log10(np.asarray(lrs))
    y = np.asarray(smooth)
    i_min = int(np.argmin(y))
    hi = max(i_min, 2)
    g = np.gradient(y[:hi + 1], x[:hi + 1])
    skip = min(len(g) - 1, max(0, len(lrs) // 10))
    i = skip + int(np.argmin(g[skip:]))
    return float(lrs[i]), float(lrs[i_min])


def _plot_lr_find(lrs, losses, smooth, sug, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smooth, label="smoothed")
    ax.axvline(sug, color="r", ls="--", label=f"suggested {sug:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = out + f".{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out)


def _maxrss():
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------
# entry point

def main(argv=None):
    """Returns the exit code (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    d = DistContext()

    def fail(msg, code):
        if d.master:
            print(f"error: {msg}", file=sys.stderr, flush=True)
        return code

    try:
        cfg, _ = parse_config(argv)
    except ConfigError as e:
        return fail(e, 2)
    run = Run(cfg, d)
    run.argv = argv
    handlers = {}

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if run.stop_signal is not None:    # second signal: abort now
            raise KeyboardInterrupt
        run.stop_signal = name
        if not run.in_loop:                # still setting up: nothing to save, stop now
            raise KeyboardInterrupt
        if d.master:
            print(f"received {name}: finishing the current step, then saving a checkpoint",
                  file=sys.stderr, flush=True)

    try:
        for s in (signal.SIGTERM, signal.SIGINT):
            handlers[s] = signal.signal(s, on_signal)
    except ValueError:      # not the main thread (in-process callers): no signal handling
        handlers = {}
    clean = False
    try:
        try:
            run.setup()
        except (ConfigError, fineweb.DataError) as e:
            return fail(e, 2)
        except KeyboardInterrupt:
            return fail(f"interrupted by {run.stop_signal} before training started", 130)
        run.in_loop = True
        try:
            rc = run.lr_find() if cfg["lr_find"] else run.train()
            clean = True
            return rc
        except GuardError as e:
            ckpts = list_checkpoints(run.ckpt_dir)
            msg = f"{e}; last good checkpoint: {ckpts[-1][1] if ckpts else 'none'}"
            run.log.note("error: " + msg)
            run.log.event("error", message=msg)
            return fail(msg, 1)
        except fineweb.DataError as e:
            run.log.note(f"error: {e}")
            return fail(e, 2)
        except OSError as e:     # e.g. the disk filled while writing the log (checkpoint write
            ckpts = list_checkpoints(run.ckpt_dir)     # failures are a GuardError above)
            return fail(f"{type(e).__name__}: {e}; last good checkpoint: "
                        f"{ckpts[-1][1] if ckpts else 'none'}", 1)
        except KeyboardInterrupt:
            run.log.note("aborted by a second signal (no checkpoint)")
            return fail("aborted by a second signal", 130)
    finally:
        if getattr(run, "log", None) is not None:
            run.log.close()
        d.destroy(sync=clean)
        for s, h in handlers.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
