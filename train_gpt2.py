"""Train a GPT-2 (early exit, shared-weight blocks) on fineweb.py token shards.

    python train_gpt2.py                                       # GPT-2 124M on data/edu_fineweb10B
    python train_gpt2.py config/quickstart.py                  # small CPU run on the builtin corpus
    python train_gpt2.py config/x.py --n_layer=6 --max_lr=1e-3 # config files, then overrides
    torchrun --standalone --nproc_per_node=8 train_gpt2.py     # DDP (NCCL on CUDA, gloo on CPU)
    python train_gpt2.py config/x.py --lr_find                 # LR range test -> img/{run}_lr_find.png

Configuration (nanoGPT style, configurator.py): the constants below are the defaults, then each
argument in order: a `config/*.py` file (*Python code executed* in the constants' namespace: only
run files you trust) or `--key=value` (a Python literal of the default's type); last,
`preset_scale` shrinks the run except for keys given as `--key=value`. Every GPTConfig field is
a constant. The file reads in the order a run happens: constants, configuration, setup, the
training step, the periodic events, the loop, the LR range test, main(); infrastructure lives
in flat modules beside it (configurator, dataloader, distributed, checkpoint, runlog, lr_finder).

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
import dataclasses
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import torch

import checkpoint
import cli
import configurator
import distributed
import fineweb
import hellaswag as hellaswag_eval     # (the names hellaswag, tokenizer are constants)
import lr_finder
import runlock
import runlog
import tokenizer as tokenizers
import tracking
from configurator import ConfigError
from dataloader import DataLoader, prepare_data, to_device
from distributed import DistContext
from model import GPT, GPTConfig, exit_sample_seed, sample_depth
from runlog import RunLog

# ----------------------------------------------------------------------------------------------
# constants (defaults: build-nanogpt's GPT-2 124M run)

# run / data
run_name = "gpt2-124M"           # log/{run_name}.txt, log/{run_name}/ckpt_*.pt, img/{run_name}.png
dataset = "data/edu_fineweb10B"  # fineweb.py output directory (meta.json + shards)
dataset_source = None            # if set and `dataset` has no manifest: fineweb.py --source this
tokenizer = None                 # None: the manifest's; "gpt2" | "char": must match the manifest
shuffle = False                  # deterministic (seeded) shuffle of shard and block order
log_dir = "log"
img_dir = "img"                  # figures at the end of a run (None: no figures)
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
stats_interval = 1               # models without per-layer heads: the stats above on logged
                                 #   steps that are multiples of N (0: only on size_interval
                                 #   steps); the other train lines print them as nan. N > 1
                                 #   makes the plain path pay nothing for them (bench/)
size_interval = 250              # SIZE COMPARISON block every N steps (0: never)
sample_interval = 250            # text sample every N steps (0: never)
sample_tokens = 32
num_samples = 4
sample_prompt = "Hello, I'm a language model,"
hellaswag = None                 # None: off | "hf": Rowan/hellaswag via datasets | a local jsonl
hellaswag_limit = None           # only the first N examples
exit_table = None                # after training: eval_exit.py's early-exit table at these
                                 #   comma-separated thresholds ("0.3,0.5,0.9") on screen, in
                                 #   log/<run>/exit_eval.md, and the plot img/<run>-pareto.png
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
dirty_ok = True                  # False: refuse to start with uncommitted changes to tracked files
# experiment tracking (tracking.py; nanoGPT's names)
wandb_log = False                # every jsonl event with a step -> Weights & Biases (rank 0)
wandb_project = "early-exit-gpt2"
wandb_run_name = ""              # "" = run_name
# LR range test (seed 004)
lr_find = False                  # --lr_find: run the LR range test instead of training
lr_find_steps = 100
lr_find_start = 1e-7
lr_find_end = 1.0
# system
device = "auto"                  # auto | cpu | cuda | cuda:N | mps
dtype = "auto"                   # auto (bfloat16 on CUDA, float32 elsewhere) | float32 | bfloat16
compile = None                   # None: on with CUDA; True compiles each Block (regional compile)
parallel = "ddp"                 # under torchrun: ddp (replicas) | fsdp (FSDP2: params, grads and
                                 #   AdamW state sharded over the ranks; distributed.wrap)
seed = 1337
preset_scale = None              # None | "cpu" | "tiny": shrink the config (configurator.scale_preset)
# model: every GPTConfig field (model.py says more about each)
block_size = 1024                # max sequence length
vocab_size = None                # None: the data's (fineweb.model_vocab_size: GPT-2's 50257
                                 #   padded to 50304, a multiple of 64; a char vocabulary exactly)
n_layer = 12                     # depth: number of block applications
n_head = 12
n_embd = 768
dropout = 0.0
bias = True                      # biases in Linear layers and LayerNorms
share_weights = False            # one Block applied n_layer times (the journal's weight reuse)
block_type = "pre-ln"            # residual wiring, a name in model.BLOCKS
ln_learnable = True              # LayerNorms with scale/shift
attention = "gpt2"               # attention module, a name in model.ATTENTIONS
activation = "gelu"              # MLP nonlinearity, a name in model.ACTIVATIONS
lm_head_bias = False             # a bias in the (tied) lm_head, used by every layer's head
pos_encoding = "learned"         # learned | sinusoidal | rope | none
rope_base = 10000.0              # RoPE frequency base
layer_heads = False              # a head after every layer (shared ln_f + tied lm_head)
early_exit = False               # tokens exit at the first layer whose confidence triggers
exit_threshold = 0.9             # exit when confidence >= this (> 1: never)
exit_mode = "threshold"          # exit rule, a name in exits.EXIT_RULES
exit_propagate = False           # exited tokens' state frozen for deeper layers (CALM)
confidence = "max-prob"          # per-layer confidence, a name in exits.CONFIDENCES
argmax_stable_k = 2              # confidence "argmax-stable": argmax unchanged for k layers
exit_loss = "final"              # training loss, a name in exits.EXIT_LOSSES
head_impl = "fused"              # per-layer heads: fused (least memory), checkpoint, naive
layerskip_scale = 1.0            # exit_loss="layerskip": e_scale of the per-layer weights
layerskip_curriculum = "gradual" # layerskip: gradual | rotational | none
layerskip_rotation = 2           # layerskip rotational curriculum: period R (in steps)
prev_token_shift = 1             # reward-prev-token: 1 = the journal's diagram, 0 = same position
depth_sampling = "fixed"         # training depth per step: fixed (n_layer) | uniform |
                                 #   lognormal-poisson over [1, depth_max] (share_weights)
depth_max = 0                    # largest depth drawn (0: 2 * n_layer - 1)
exit_token_frac = 1.0            # cheap exits: heads of layers 1..L-1 (and the exit loss) on this
                                 #   random fraction of token positions; last head on every token
exit_layer_frac = 1.0            # cheap exits: heads on a random max(1, round(frac*(L-1))) of
                                 #   layers 1..L-1 per micro step (+ the last), terms rescaled

DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))}
# types of the constants whose default is None (None stays allowed); NULLABLE: None also allowed
NONE_TYPES = {"dataset_source": str, "tokenizer": str, "min_lr": float, "hellaswag": str,
              "hellaswag_limit": int, "resume": str, "stop_at_step": int, "compile": bool,
              "preset_scale": str, "vocab_size": int, "exit_table": str}
NULLABLE = {"residual_limit", "img_dir"}
LR_SCHEDULES = ("cosine", "onecycle")
SIGNALS = (None, "SIGTERM", "SIGINT")   # stop["signal"] values, in the order ranks agree on
DTYPES = ("auto", "float32", "bfloat16")


class GuardError(Exception):
    """A training guard fired (non-finite value, residual blow-up): exit 1."""


# ----------------------------------------------------------------------------------------------
# configuration

def all_defaults():
    """DEFAULTS plus the GPTConfig fields not (yet) listed as constants, at their defaults."""
    d = dict(DEFAULTS)
    for f in dataclasses.fields(GPTConfig):
        d.setdefault(f.name, f.default)
    return d


def parse_config(argv):
    """argv -> (cfg dict, set of keys given as --key=value), preset_scale applied."""
    cfg, explicit = configurator.parse(argv, all_defaults(), NONE_TYPES, NULLABLE)
    if cfg["preset_scale"] is not None:
        try:
            cfg = configurator.scale_preset(cfg, cfg["preset_scale"], keep=explicit)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return cfg, explicit


def model_config(cfg):
    """GPTConfig from the constants (vocab_size None: GPTConfig's, until the data sets it); bad
    values -> ConfigError."""
    try:
        return GPTConfig(**{f.name: cfg[f.name] for f in dataclasses.fields(GPTConfig)
                            if cfg[f.name] is not None})
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
            if cfg[key] is not None or key == "log_dir":
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
    except cli.UsageError as e:
        raise ConfigError(str(e)) from None
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
# setup

@dataclasses.dataclass
class State:
    """What the loop's functions share; built once by setup(), nothing added later."""
    cfg: dict                          # the constants, resolved (preset_scale, resume=auto)
    mcfg: GPTConfig
    dist: DistContext
    device: str                        # "cpu", "cuda:0", "mps"
    dtype: str                         # float32 | bfloat16 (autocast)
    compile: bool
    autocast: object                   # torch.autocast(bfloat16) or nullcontext()
    raw: GPT                           # the model (eval, sampling, checkpoints)
    model: torch.nn.Module             # raw, DDP-wrapped when distributed (training forward)
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    grad_accum: int                    # micro steps per optimizer step on each rank
    meta: dict                         # the dataset's manifest
    tok: object                        # tokenizer (None: samples and HellaSwag off)
    hellaswag: list                    # HellaSwag examples (None: off)
    log: RunLog
    ckpt_dir: str                      # log/{run_name}/
    skipped: int = 0                   # steps skipped by skip_nonfinite
    lock: object = None                # runlock.RunLock of the run (rank 0)

    @property
    def device_type(self):
        return self.device.split(":")[0]


def find_resume(cfg, ckpt_dir, mcfg, master, notes):
    """The checkpoint to continue from (dict, path) or (None, None); notes appended."""
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if cfg["resume"] is None and restarts > 0 and not cfg["lr_find"]:
        cfg["resume"] = "auto"    # torchrun --max-restarts restarted the group: continue
        notes.append(f"torchrun restart {restarts}: resume=auto")
    if cfg["resume"] is None or cfg["lr_find"]:
        return None, None
    try:
        ck, path, damaged = checkpoint.find_resume(ckpt_dir, cfg["resume"], mcfg)
    except checkpoint.CheckpointError as e:
        raise ConfigError(str(e)) from None
    for msg in damaged:
        notes.append(msg + "; trying the previous one")
        if master:
            print(f"warning: {msg}; trying the previous one", file=sys.stderr, flush=True)
    if ck is None:
        notes.append(f"resume=auto: no {'valid ' if damaged else ''}checkpoint in {ckpt_dir}; "
                     f"starting fresh")
    return ck, path


def build_model(cfg, mcfg, device, ck):
    """GPT (seeded init, or the checkpoint's weights) on device."""
    torch.manual_seed(cfg["seed"])
    if device.startswith("cuda"):
        torch.cuda.manual_seed(cfg["seed"])
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    model = GPT(mcfg)
    if ck is not None:
        model.load_state_dict(checkpoint.strip_prefixes(ck["model"]))
    model.to(device)
    return model


def check_resume_data(ck, ck_path, meta, cfg, train_loader):
    """ConfigError when the dataset cannot continue the checkpoint's run: another vocabulary
    (tokenizer, the characters behind char ids, size) or a data position it does not have."""
    why = fineweb.vocabulary_mismatch(meta, ck.get("tokenizer"))
    if why:
        raise ConfigError(f"dataset {meta['data_dir']} has {why}: checkpoint {ck_path} was trained "
                          f"on another vocabulary")
    for key in ("loader", "loader_batch_start"):
        if key in ck:
            try:
                train_loader.check_state(ck[key])
            except ValueError as e:
                raise ConfigError(f"checkpoint {ck_path} cannot continue on dataset "
                                  f"{meta['data_dir']}: {e}") from None


def take_run_lock(cfg, d):
    """Rank 0 takes log/{run_name}.lock (runlock.py) -> the lock, None on other ranks;
    ConfigError on every rank when another live process holds it."""
    lock, err = None, None
    if d.master:
        try:
            lock = runlock.acquire(cfg["log_dir"], cfg["run_name"] + ("_lr_find" if cfg["lr_find"] else ""))
        except runlock.RunLocked as e:
            err = e
    if not d.all_ok(err is None):
        raise ConfigError(str(err) if err else "the run is in use (lock held; see rank 0)")
    return lock


def open_log(cfg, d, ckpt_dir, ck, notes):
    """RunLog of log/{run_name}(.txt|.jsonl); only called once every check has passed. A fresh
    start moves an earlier run aside; a resume moves aside the checkpoints after its own."""
    resumed = ck is not None
    name = cfg["run_name"] + ("_lr_find" if cfg["lr_find"] else "")
    txt = os.path.join(cfg["log_dir"], name + ".txt")
    jsl = os.path.join(cfg["log_dir"], name + ".jsonl")
    os.makedirs(cfg["log_dir"], exist_ok=True)
    if d.master and not cfg["lr_find"]:
        stale = checkpoint.remove_stale_temps(ckpt_dir)
        if stale:
            notes.append(f"removed {len(stale)} partial checkpoint write(s) of a killed run: "
                         f"{', '.join(stale)}")
        if not resumed:
            notes += filter(None, [checkpoint.backup_previous((txt, jsl), ckpt_dir)])
        else:
            notes += filter(None, [checkpoint.set_aside_later(ckpt_dir, int(ck["step"]))])
    return RunLog(txt, jsl, d.master, append=resumed)


def load_hellaswag(cfg, log):
    """HellaSwag examples when cfg["hellaswag"] is set, else None (a note when loading fails)."""
    if not cfg["hellaswag"]:
        return None
    try:
        return hellaswag_eval.load_examples(
            None if cfg["hellaswag"] == "hf" else cfg["hellaswag"], cfg["hellaswag_limit"])
    except Exception as e:
        log.note(f"hellaswag disabled: {type(e).__name__}: {e}")
        return None


def setup(cfg, d, argv):
    """Validation (no file written on failure), then data, resume, model, optimizer, logs ->
    (State, checkpoint dict to resume from or None). Raises ConfigError / fineweb.DataError."""
    mcfg, grad_accum = validate_config(cfg, d.world)
    try:
        cli.check_device(cfg["device"], "device")
    except cli.UsageError as e:
        raise ConfigError(str(e)) from None
    device = d.pick_device(cfg["device"])
    dtype = (("bfloat16" if device.startswith("cuda") else "float32") if cfg["dtype"] == "auto"
             else cfg["dtype"])
    compile = cfg["compile"] if cfg["compile"] is not None else device.startswith("cuda")
    if not cfg["dirty_ok"]:
        sha, dirty, changed = runlog.git_state()
        if dirty is None:
            raise ConfigError("dirty_ok=False but the git state of the tree cannot be read")
        if dirty:
            raise ConfigError(f"dirty_ok=False and tracked files have uncommitted changes "
                              f"({', '.join(changed[:5])}); commit them or pass --dirty_ok=True")
    d.init(device.split(":")[0])
    vocab_from_data = cfg["vocab_size"] is None
    meta = prepare_data(cfg, d)                  # sets an unset vocab_size from the manifest
    mcfg = model_config(cfg)
    loaders = [DataLoader(fineweb.shard_paths(meta, split), cfg["B"], cfg["T"],
                          cfg["total_batch_size"], d.rank, d.world, int(meta["vocab_size"]),
                          split, shuffle=shuffle, seed=cfg["seed"])
               for split, shuffle in (("train", cfg["shuffle"]), ("val", False))]
    ckpt_dir = os.path.join(cfg["log_dir"], cfg["run_name"])
    notes = []
    if vocab_from_data:
        how = ("GPT-2's 50257, padded to a multiple of 64" if meta["tokenizer"] == "gpt2"
               else f"the data's {meta['tokenizer']} vocabulary, exactly")
        notes.append(f"vocab_size {cfg['vocab_size']}: {how} (vocab_size unset)")
    ck, ck_path = find_resume(cfg, ckpt_dir, mcfg, d.master, notes)
    if ck is not None:
        check_resume_data(ck, ck_path, meta, cfg, loaders[0])
    try:
        raw = build_model(cfg, mcfg, device, ck)
    except (MemoryError, RuntimeError) as e:     # sizes that cannot be allocated
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"cannot build the model on {device} ({type(e).__name__}: {first}); "
                          f"smaller n_embd / n_layer / vocab_size?") from None
    model = distributed.wrap(raw, cfg["parallel"], d, device, dtype)   # FSDP shards raw in place
    optimizer = raw.configure_optimizers(cfg["weight_decay"], cfg["max_lr"],
                                         (cfg["beta1"], cfg["beta2"]), device.split(":")[0])
    if ck is not None:
        distributed.load_optimizer_state(optimizer, ck["optimizer"])
    try:
        tok = tokenizers.get_tokenizer(meta["tokenizer"], meta.get("chars"))
    except Exception as e:
        tok = None
        notes.append(f"samples disabled: no tokenizer ({type(e).__name__}: {e})")
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
                if dtype == "bfloat16" else nullcontext())
    s = State(cfg, mcfg, d, device, dtype, compile, autocast, raw, model, optimizer, *loaders,
              grad_accum, meta, tok, None, None, ckpt_dir)
    resolved = resolved_config(s)
    s.lock = take_run_lock(cfg, d)       # before the first file of the run is written
    try:
        try:                             # wandb (tracking.py), before any log file is written
            tracker = None if cfg["lr_find"] else tracking.start(cfg, resolved, ckpt_dir,
                                                                 ck is not None, d.master)
        except tracking.TrackingError as e:
            raise ConfigError(str(e)) from None
        log = s.log = open_log(cfg, d, ckpt_dir, ck, notes)
    except BaseException:
        if s.lock is not None:
            s.lock.release()
        raise
    log.tracker = tracker
    if compile:   # regional: each stored block's forward; a block that cannot be one graph
        raw.compile_blocks(on_fallback=log.note)   # runs eager, with one log line
    runlog.write_header(log, cfg=cfg, resolved=resolved, argv=argv, resumed_from=ck_path,
                        device=device, device_type=s.device_type, world=d.world, dtype=dtype,
                        compile=compile, meta=meta, model=raw, grad_accum=grad_accum,
                        model_config=dataclasses.asdict(mcfg))
    for n in notes:
        log.note(n)
    if ck is not None:
        log.note(f"resumed from {ck_path} at step {int(ck['step']) + 1}")
        log.event("resume", path=ck_path, step=int(ck["step"]) + 1)
        diff = [x for x in checkpoint.config_diff(ck["train_config"], resolved)
                if x[0] not in ("resume", "stop_at_step")]
        if diff:
            log.note("train config differs from the checkpoint's: " +
                     ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in diff))
    s.hellaswag = load_hellaswag(cfg, log)
    return s, ck


def resolved_config(s):
    """The constants as this run uses them: min_lr, compile and dtype resolved; the model's fields
    as GPTConfig holds them (e.g. layer_heads, which every exit loss but final turns on)."""
    cfg = dict(s.cfg)
    cfg.update(dataclasses.asdict(s.mcfg))
    cfg["min_lr"] = cfg["min_lr"] if cfg["min_lr"] is not None else cfg["max_lr"] * 0.1
    cfg["compile"], cfg["dtype"] = s.compile, s.dtype
    return cfg


# ----------------------------------------------------------------------------------------------
# one optimizer step

def train_step(s, batches, lr, step, guard=True, want_stats=True):
    """Forward/backward over the micro batches (gradient accumulation, DDP sync on the last
    only), clip, guards, optimizer step -> the step's numbers by name, averaged over micro steps
    and ranks: objective (what is backpropagated), loss (the train field: the last layer's CE),
    norm, lr, skip, and with stats also the model's per-layer statistics
    (allloss, earlystop(dict), layer_losses, residual_std, ...).

    With per-layer heads (layer_heads or early_exit) the statistics are free and averaged over
    every micro step; without, they need L extra heads, so they are computed only when
    want_stats (logged steps), on the first micro step of each rank: on its first stats_rows
    sequences in an extra no-grad eval-mode forward (no RNG drawn), or with stats_rows=0 on the
    whole micro batch inside the training forward."""
    s.model.train()
    s.optimizer.zero_grad(set_to_none=True)
    n = len(batches)
    heads_on = s.mcfg.layer_heads or s.mcfg.early_exit
    n_stats = n if heads_on else (1 if want_stats else 0)
    rows = s.cfg["stats_rows"]
    sums = {"objective": torch.zeros((), device=s.device)}
    # depth_sampling: this step's depth, a function of (seed, step): every rank, and a resumed
    # run, draws the same; the per-layer stats then have `depth` entries
    depth = sample_depth(s.mcfg, s.cfg["seed"], step)
    with s.raw.at_depth(depth):
        for micro, (x, y) in enumerate(batches):
            x, y = to_device(x, y, s.device)
            distributed.set_grad_sync(s.model, micro == n - 1)
            sampled = micro < n_stats and not heads_on and 0 < rows < x.size(0)
            # exit sampling (exit_token/layer_frac) is a function of (seed, step, global micro index):
            # 2 ranks draw what 1 rank accumulating their micro steps draws; resume saves nothing
            seed = exit_sample_seed(s.cfg["seed"], step, micro * s.dist.world + s.dist.rank)
            with s.autocast:
                out = s.model(x, y, return_stats=micro < n_stats and not sampled,
                              return_logits=False, exit_sample_seed=seed)
                loss, st = out.loss, out.stats
                if sampled:
                    st = sample_stats(s.raw, x[:rows], y[:rows])
            (loss / n).backward()
            with torch.no_grad():
                sums["objective"] += loss.detach().float() / n
                for k, v in (st.items() if micro < n_stats else ()):
                    sums[k] = sums.get(k, 0) + v.float() / n_stats
    r = reduce_mean(s.dist, sums)
    r["stats"], r["depth"] = n_stats > 0, depth
    # the train field: the last layer's CE (a model without per-layer heads has it as its loss)
    r["loss"] = r["layer_losses"][-1] if heads_on else r["objective"]
    clip = s.cfg["grad_clip"] if s.cfg["grad_clip"] and s.cfg["grad_clip"] > 0 else float("inf")
    r["norm"] = float(distributed.full(torch.nn.utils.clip_grad_norm_(s.raw.parameters(), clip)))
    r["lr"], r["skip"] = lr, False
    problem = check_guards(s, r, step) if guard else None
    if problem is not None:
        nonfinite, msg = problem
        if not (nonfinite and s.cfg["skip_nonfinite"]):
            raise GuardError(msg)
        s.optimizer.zero_grad(set_to_none=True)
        s.skipped += 1
        r["skip"] = True
        s.log.note(f"skipped step {step}: {msg}")
        return r
    for g in s.optimizer.param_groups:
        g["lr"] = lr
    s.optimizer.step()
    return r


def reduce_mean(dist, sums):
    """{name: tensor} summed on each rank -> {name: float or (nested) list}, averaged over
    ranks in one all_reduce (names sorted, so every rank packs them alike)."""
    names = sorted(sums)
    flat = torch.cat([sums[k].reshape(-1) for k in names])
    flat = (dist.sum_(flat) / dist.world).cpu()
    out, i = {}, 0
    for k in names:
        n = sums[k].numel()
        v = flat[i:i + n].view(sums[k].shape)
        out[k] = v.item() if v.dim() == 0 else v.tolist()
        i += n
    return out


@torch.no_grad()
def sample_stats(raw, x, y):
    """Per-layer statistics of a model without per-layer heads from a no-grad, eval-mode
    forward of a few sequences x, y (b, T) (eval mode: no dropout, so no RNG is drawn)."""
    raw.eval()
    try:
        return raw(x, y, return_stats=True, return_logits=False).stats
    finally:
        raw.train()


def check_guards(s, r, step):
    """(nonfinite: bool, message naming step, layer and quantity) for the first problem, or None."""
    L = s.mcfg.n_layer
    if not math.isfinite(r["objective"]):
        bad = [l for l, v in enumerate(r.get("layer_losses", [])) if not math.isfinite(v)]
        if not r["stats"]:   # no per-layer heads and not a logged step: nothing to name
            where = "; layer losses are not computed on unlogged steps of this model"
        elif bad:
            where = f"; first non-finite layer loss at layer {bad[0] + 1}/{L} ({r['layer_losses'][bad[0]]})"
        else:
            where = ""
        return True, f"step {step}: non-finite loss ({r['objective']}){where}"
    if not math.isfinite(r["norm"]):
        name = next((pn for pn, p in s.raw.named_parameters()
                     if p.grad is not None and not torch.isfinite(distributed.local(p.grad)).all()), "?")
        return True, f"step {step}: non-finite grad norm ({r['norm']}); first non-finite grad: {name}"
    lim = s.cfg["residual_limit"]
    for l, row in enumerate(r.get("residual_std") or []):
        for j, v in enumerate(row):
            if math.isnan(v) and j == 2:
                continue   # `next` is NaN when the layer's head did not run
            if not math.isfinite(v) or (lim is not None and v > lim):
                nf = not math.isfinite(v)
                return nf, (f"step {step}: residual_std {('prev', 'mid', 'next')[j]} at layer "
                            f"{l + 1}/{L} is {v:.6g}" + ("" if nf else f" > residual_limit {lim:g}"))
    return None


# ----------------------------------------------------------------------------------------------
# periodic events: evaluation, HellaSwag, samples, checkpoints

def fork_rng(s, salt):
    """(RNG fork context, seed): evaluation and sampling leave the training RNG untouched."""
    devices = [torch.device(s.device).index or 0] if s.device_type == "cuda" else []
    return torch.random.fork_rng(devices=devices), s.cfg["seed"] + 1000 * salt + s.dist.rank


@torch.no_grad()
def evaluate(s, step):
    """Val CE of the last layer (the `val` line), per-layer val CE, mean exit depth; with early
    exit the CE at each token's exit layer (`val-exit`); the objective (`val-objective` unless
    exit_loss is final, and the jsonl's `objective`); HellaSwag. Returns the val CE."""
    s.raw.eval()
    s.val_loader.reset()
    n = min(s.cfg["eval_iters"], s.val_loader.total_blocks) * s.grad_accum
    sums = {"objective": 0, "exit_depth": 0, "exit_ce": 0, "layer_losses": 0}
    fork, seed = fork_rng(s, 1)
    with fork:
        torch.manual_seed(seed)
        for _ in range(n):
            x, y = s.val_loader.next_batch()
            with s.autocast:
                out = s.raw(*to_device(x, y, s.device), return_stats=True,
                            return_logits=False)
                loss, st = out.loss, out.stats
            for k, v in (("objective", loss), ("exit_depth", st["exit_depth"]),
                         ("exit_ce", st["exit_ce"]), ("layer_losses", st["layer_losses"])):
                sums[k] = sums[k] + v.float() / n
    r = reduce_mean(s.dist, sums)
    val, early = r["layer_losses"][-1], s.mcfg.early_exit
    s.log.line(f"@ {step} val {val:.4f}")
    s.log.line(f"@ {step} val-layers {[round(v, 4) for v in r['layer_losses']]}, "
               f"exit-depth: {r['exit_depth']:.3f}")
    if early:
        s.log.line(f"@ {step} val-exit {r['exit_ce']:.4f}")
    if s.mcfg.exit_loss != "final":
        s.log.line(f"@ {step} val-objective {r['objective']:.4f}")
    s.log.event("val", step=step, loss=val, layer_losses=r["layer_losses"],
                exit_depth=r["exit_depth"], exit_ce=r["exit_ce"] if early else None,
                objective=r["objective"])
    if s.hellaswag and s.tok is not None:
        eval_hellaswag(s, step)
    s.raw.train()
    return val


def eval_hellaswag(s, step):
    """HellaSwag acc_norm / acc, examples split over ranks; disabled on the first failure."""
    try:
        with s.autocast:
            counts = hellaswag_eval.evaluate(s.raw, s.hellaswag, s.device, s.tok, rank=s.dist.rank,
                                        world_size=s.dist.world)
    except Exception as e:   # e.g. text the char vocabulary cannot encode; same on every rank
        s.hellaswag = None
        s.log.note(f"hellaswag disabled: {type(e).__name__}: {e}")
        return
    n_norm, n_plain, n = s.dist.sum_(torch.tensor(counts, dtype=torch.int64, device=s.device)).tolist()
    s.log.line(f"@ {step} hellaswag {n_norm / max(n, 1):.4f}, acc: {n_plain / max(n, 1):.4f}, "
               f"total: {n}")
    s.log.event("hellaswag", step=step, acc_norm=n_norm / max(n, 1), acc=n_plain / max(n, 1),
                correct_norm=n_norm, correct=n_plain, total=n)


@torch.no_grad()
def sample(s, step):
    """num_samples continuations of sample_prompt (rank 0; RNG forked so training is unaffected)."""
    cfg = s.cfg
    if s.tok is None or not s.dist.master or cfg["sample_tokens"] == 0:
        return
    try:
        ids = s.tok.encode(cfg["sample_prompt"])
    except ValueError:
        ids = []
    if not ids:   # prompt not encodable (char vocabulary): start from the val data
        ids = [int(t) for t in s.val_loader.load_tokens(s.val_loader.paths[0])[:8]]
    ids = ids[-max(1, s.mcfg.block_size // 2):]
    s.raw.eval()
    fork, seed = fork_rng(s, 2)
    with fork:
        torch.manual_seed(seed)
        idx = torch.tensor(ids, dtype=torch.long, device=s.device)[None].repeat(cfg["num_samples"], 1)
        with s.autocast:
            out = s.raw.generate(idx, cfg["sample_tokens"], temperature=1.0, top_k=50)
    s.raw.train()
    for i in range(out.size(0)):
        text = decode(s, out[i].tolist())
        s.log.line(f"@ {step} sample {i}: " + text.replace("\\", "\\\\").replace("\n", "\\n"))
        s.log.event("sample", step=step, index=i, text=text)


def decode(s, ids):
    """Decode; ids outside the data's vocabulary (the padded rows, e.g. 50257..50303) -> U+FFFD."""
    n = int(s.meta["vocab_size"])
    parts, run = [], []
    for t in ids:
        if t < n:
            run.append(t)
        else:
            parts.append(s.tok.decode(run) + "\ufffd")
            run = []
    return "".join(parts) + s.tok.decode(run)


def save_checkpoint(s, step, loader_start, why):
    """All ranks call this (RNG states are gathered); rank 0 writes atomically and prunes."""
    rngs = s.dist.gather_object(checkpoint.rng_state(s.device_type))
    # whole tensors, whatever the mode; FSDP gathers shards (every rank), else rank 0 alone copies
    gather = s.dist.master or distributed.is_fsdp(s.raw)
    msd, osd = distributed.full_state(s.raw, s.optimizer) if gather else (None, None)
    path, err = checkpoint.path_for(s.ckpt_dir, step), None
    if s.dist.master:
        obj = {"model": checkpoint.strip_prefixes(msd),
               "model_config": dataclasses.asdict(s.mcfg), "train_config": resolved_config(s),
               "step": step, "optimizer": osd,
               "loader": s.train_loader.state_dict(), "loader_batch_start": loader_start,
               "rng": rngs, "world_size": s.dist.world, "skipped": s.skipped,
               "tokenizer": {"name": s.meta["tokenizer"], "chars": s.meta.get("chars"),
                             "vocab_size": int(s.meta["vocab_size"]), "eot": s.meta.get("eot")}}
        try:
            checkpoint.save(obj, s.ckpt_dir, step, s.cfg["keep_checkpoints"])
            s.log.note(f"checkpoint saved: {path} (step {step}, {why})")
            s.log.event("checkpoint", step=step, path=path, reason=why)
        except OSError as e:
            err = e
    if not s.dist.all_ok(err is None, s.device if s.device_type == "cuda" else "cpu"):
        raise GuardError(f"saving checkpoint {path} failed ({err or 'on rank 0'}); "
                         "previous checkpoints are intact")
    return path


# ----------------------------------------------------------------------------------------------
# the loop

def restore(s, ck):
    """RNG and data position at the start of the loop -> (first step, loader state at the
    start of the current batch, the batch being reused mid batch_reuse or None)."""
    if ck is None:
        torch.manual_seed(s.cfg["seed"] + s.dist.rank)
        return 0, s.train_loader.state_dict(), None
    start = int(ck["step"]) + 1
    s.skipped = int(ck.get("skipped", 0))
    rngs = ck["rng"]
    if s.dist.rank < len(rngs) and ck.get("world_size", len(rngs)) == s.dist.world:
        checkpoint.set_rng_state(rngs[s.dist.rank], s.device_type)
    else:
        torch.manual_seed(s.cfg["seed"] + s.dist.rank + start)
        s.log.note(f"world size changed ({len(rngs)} -> {s.dist.world}): RNG states reseeded")
    if start % s.cfg["batch_reuse"] == 0:
        s.train_loader.load_state_dict(ck["loader"])
        return start, s.train_loader.state_dict(), None
    s.train_loader.load_state_dict(ck["loader_batch_start"])   # mid batch-reuse: fetch it again
    loader_start = s.train_loader.state_dict()
    return start, loader_start, [s.train_loader.next_batch() for _ in range(s.grad_accum)]


def log_train(s, step, r):
    """The train line and its jsonl event; per-layer statistics not computed this step
    (stats_interval) are nan."""
    cfg, k, nan = s.cfg, s.cfg["batch_reuse"], float("nan")
    r = {"allloss": nan, "confloss": nan, "targetloss": nan, "earlystop": nan,
         "exit_depth": nan, "earlystopdict": [nan] * s.mcfg.n_layer,
         "layer_losses": [nan] * s.mcfg.n_layer, **r}
    s.log.line(runlog.format_train_line(step, r, k, s.skipped if cfg["skip_nonfinite"] else None))
    mem = runlog.peak_memory(s.device)
    s.log.event("train", step=step, loss=r["loss"], objective=r["objective"], allloss=r["allloss"],
                confloss=r["confloss"],
                targetloss=r["targetloss"], earlystop=r["earlystop"],
                earlystopdict=r["earlystopdict"], layer_losses=r["layer_losses"],
                exit_depth=r["exit_depth"], lr=r["lr"], norm=r["norm"], dt_ms=r["dt"] * 1000,
                tok_sec=r["tok_sec"], flops=r["tflops"], mfu=r["mfu"], peak_mem_bytes=mem,
                batch_reuse=k, skipped=s.skipped, skipped_step=r["skip"], depth=r["depth"])


def train(s, ck, stop):
    """The training loop, from step 0 or the checkpoint ck; stop["signal"] is set by the
    SIGTERM/SIGINT handler. Returns the exit code."""
    cfg, log = s.cfg, s.log
    k, steps = cfg["batch_reuse"], cfg["max_steps"]
    start, loader_start, batches = restore(s, ck)
    flops_tok = s.raw.flops_per_token(cfg["T"])
    known = runlog.peak_bf16_flops(runlog.device_names(s.device_type)[0])
    peak = known[1] if known and s.dtype == "bfloat16" else None     # MFU only against it
    last_val, ckpt = None, None
    for step in range(start, steps):
        last = step == steps - 1
        if (cfg["eval_interval"] and step % cfg["eval_interval"] == 0) or last:
            with distributed.gathered(s.raw):
                last_val = evaluate(s, step)
        if cfg["sample_interval"] and ((step > 0 and step % cfg["sample_interval"] == 0) or last):
            with distributed.gathered(s.raw):
                sample(s, step)
        t0 = time.time()
        if batches is None or step % k == 0:
            loader_start = s.train_loader.state_dict()
            batches = [s.train_loader.next_batch() for _ in range(s.grad_accum)]
        s.raw.set_progress(step / steps, step)
        log_now = step % max(1, cfg["log_interval"]) == 0 or last
        size_now = bool(cfg["size_interval"]) and step % cfg["size_interval"] == 0
        stats_now = log_now and bool(cfg["stats_interval"]) and step % cfg["stats_interval"] == 0
        r = train_step(s, batches, get_lr(step, cfg), step, want_stats=stats_now or size_now)
        if s.device_type == "cuda":
            torch.cuda.synchronize()
        r["dt"] = time.time() - t0
        r.update(runlog.throughput(flops_tok, cfg["total_batch_size"], s.dist.world, r["dt"], peak))
        if log_now:
            log_train(s, step, r)
        if size_now:
            for line in runlog.format_size_lines(r["residual_std"]):
                log.line(line)
            log.event("size", step=step, residual_std=r["residual_std"])
        sig = SIGNALS[s.dist.max_(SIGNALS.index(stop["signal"]), s.device)]   # all ranks agree
        at_stop = cfg["stop_at_step"] is not None and step == cfg["stop_at_step"]
        interval = cfg["checkpoint_interval"] and step > 0 and step % cfg["checkpoint_interval"] == 0
        if last or sig or at_stop or interval:
            why = ("final" if last else f"signal {sig}" if sig
                   else "stop_at_step" if at_stop else "interval")
            ckpt = save_checkpoint(s, step, loader_start, why)
        if sig or at_stop:
            why = f"received {sig}" if sig else f"stop_at_step={step} reached"
            log.note(f"stopping after step {step}: {why}; resume with --resume=auto")
            log.event("stop", step=step, reason=why)
            return 0
    log.note(f"done: {steps} steps, final val {last_val}")
    log.event("done", step=steps - 1, val=last_val, skipped=s.skipped)
    if s.dist.master:      # what `python plot.py log/<run>.txt --out <img_dir>` writes
        if cfg["img_dir"] is not None:
            import plot
            for note in plot.plot_run(s.log.txt_path, cfg["img_dir"]):
                log.note(note)
        if ckpt is not None:
            next_steps(s, ckpt, exit_table(s, ckpt) if cfg["exit_table"] else None)
    return 0


def exit_table(s, ckpt):
    """`eval_exit.py --summary` on the final checkpoint at the exit_table thresholds (rank 0; a
    child process: the trainer does not import the tools that read it): its short table on
    screen and in the log, the full one in log/<run>/exit_eval.md, the Pareto plot
    img/<run>-pareto.png -> the threshold it suggests, or None."""
    cfg, batches, rows_per, decode_tokens = s.cfg, 8, 8, 32   # a summary: ~7 CPU s, not ~11
    img = os.path.join(cfg["img_dir"], f"{cfg['run_name']}-pareto.png")
    cmd = [sys.executable, os.path.join(runlog.ROOT, "eval_exit.py"), "--ckpt", ckpt, "--data",
           cfg["dataset"], "--thresholds", cfg["exit_table"], "--batches", str(batches),
           "--batch-size", str(rows_per), "--decode-tokens", str(decode_tokens), "--img", img,
           "--device", s.device, "--summary"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        s.log.note(f"exit table skipped: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        return None
    n_tok = batches * rows_per * min(cfg["T"], s.mcfg.block_size)
    s.log.note(f"early exit on {n_tok:,} val tokens (a token exits at the first layer whose "
               f"{s.mcfg.confidence} confidence >= threshold; decode: {decode_tokens} greedy "
               "tokens, batch 1):")
    for line in r.stdout.strip().splitlines():
        s.log.note("  " + line)
    m = re.search(r"^suggested: --exit_threshold (\S+)", r.stdout, flags=re.M)
    return float(m.group(1)) if m else None


def next_steps(s, ckpt, thr):
    """The last lines on screen: what to run next with this run's checkpoint (thr: the exit
    threshold to suggest; None: exit_threshold)."""
    cfg = s.cfg
    thr = cfg["exit_threshold"] if thr is None else thr
    log_dir = "" if os.path.normpath(cfg["log_dir"]) == "log" else f" --log_dir {shlex.quote(cfg['log_dir'])}"
    data = shlex.quote(cfg["dataset"])
    s.log.note("next:")
    if s.mcfg.layer_heads or s.mcfg.early_exit:
        s.log.note(f"  python sample.py --ckpt {cfg['run_name']}{log_dir} --exit_threshold {thr:g} "
                   "--show_depth      # text, each token marked with the layer it exited at")
    else:
        s.log.note(f"  python sample.py --ckpt {cfg['run_name']}{log_dir}      # text samples")
    s.log.note(f"  python eval_exit.py --ckpt {shlex.quote(ckpt)} --data {data} "
               "--thresholds 0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.01      # the full trade-off")
    s.log.note(f"  python train_gpt2.py config/4-test.py --preset_scale=cpu --dataset={data}"
               "      # a journal experiment (any config/*.py), CPU-sized")


# ----------------------------------------------------------------------------------------------
# LR range test (seed 004)

def lr_find(s):
    """The LR range test (lr_finder.py) with this run's model, data and training step."""
    cfg, log = s.cfg, s.log
    torch.manual_seed(cfg["seed"] + s.dist.rank)

    def step(lr, i):
        batches = [s.train_loader.next_batch() for _ in range(s.grad_accum)]
        return train_step(s, batches, lr, i, guard=False, want_stats=False)["objective"]
    lrs, losses, smooth = lr_finder.run(step, cfg["lr_find_steps"], cfg["lr_find_start"],
                                        cfg["lr_find_end"], log)
    if len(lrs) < 3:
        log.note("lr_find: too few steps for a suggestion")
        return 0
    sug, lo = lr_finder.suggest_lr(lrs, smooth)
    log.note(f"lr_find suggested max_lr: {sug:.4e} (steepest descent of the smoothed loss); "
             f"lowest smoothed loss at lr {lo:.4e}")
    log.event("lr_find_result", suggested_lr=sug, min_loss_lr=lo)
    if s.dist.master:
        out = os.path.join(cfg["img_dir"], f"{cfg['run_name']}_lr_find.png")
        try:
            import plot
            plot.plot_lr_find(lrs, losses, smooth, sug, out)
            log.note(f"plot written: {out}")
        except Exception as e:
            log.note(f"plot skipped ({type(e).__name__}: {e})")
    return 0


# ----------------------------------------------------------------------------------------------
# entry point

def help_text():
    """--help: the usage, then every constant with its default and its comment above."""
    import model
    return cli.constants_help(
        __file__, all_defaults(), "usage: python train_gpt2.py [config.py ...] [--key=value ...]",
        cli.doc_head(__doc__), fields_path=model.__file__,
        fields_title="model: GPTConfig fields not listed above (model.py)")


def main(argv=None):
    """Returns the exit code (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    d = DistContext()

    def fail(msg, code):
        if d.master:
            print(f"error: {msg}", file=sys.stderr, flush=True)
        return code

    if "--help" in argv or "-h" in argv:
        print(help_text(), end="")
        return 0
    try:
        cfg, _ = parse_config(argv)
    except ConfigError as e:
        return fail(e, 2)
    stop = {"signal": None, "in_loop": False}

    def on_signal(signum, frame):
        name, second = signal.Signals(signum).name, stop["signal"] is not None
        stop["signal"] = stop["signal"] or name
        if second or not stop["in_loop"]:      # second signal, or still setting up: stop now
            raise KeyboardInterrupt
        if d.master:
            print(f"received {name}: finishing the current step, then saving a checkpoint",
                  file=sys.stderr, flush=True)

    handlers = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, on_signal)
    except ValueError:      # not the main thread (in-process callers): no signal handling
        handlers = {}
    s, clean = None, False
    try:
        try:
            s, ck = setup(cfg, d, argv)
        except (ConfigError, fineweb.DataError) as e:
            return fail(e, 2)
        except KeyboardInterrupt:
            return fail(f"interrupted by {stop['signal']} before training started", 130)
        stop["in_loop"] = True
        try:
            rc = lr_find(s) if cfg["lr_find"] else train(s, ck, stop)
            clean = True
            return rc
        except (GuardError, OSError) as e:   # OSError: e.g. the disk filled writing the log
            ckpts = checkpoint.list_checkpoints(s.ckpt_dir)
            msg = (f"{e}" if isinstance(e, GuardError) else f"{type(e).__name__}: {e}") + \
                f"; last good checkpoint: {ckpts[-1][1] if ckpts else 'none'}"
            if isinstance(e, GuardError):
                s.log.note("error: " + msg)
                s.log.event("error", message=msg)
            return fail(msg, 1)
        except fineweb.DataError as e:
            s.log.note(f"error: {e}")
            return fail(e, 2)
        except KeyboardInterrupt:
            s.log.note("aborted by a second signal (no checkpoint)")
            return fail("aborted by a second signal", 130)
    finally:
        if s is not None:
            s.log.close()
            if s.lock is not None:
                s.lock.release()
        d.destroy(sync=clean)
        for sig, h in handlers.items():
            signal.signal(sig, h)


if __name__ == "__main__":
    sys.exit(main())
