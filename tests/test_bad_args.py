"""Bad-input matrix: every argument of every script gets a wrong type, an out-of-range value, a
missing or an unwritable path. Each case must give exactly one `error: ...` line on stderr (no
traceback), exit code 2, and change no file (the workspace is the working directory, so default
output paths are watched too). All cases fail at parse time, so the matrix runs in seconds.

A last test checks that the matrix names every option that each script's --help lists, and
that --help shows the defaults.
"""
import hashlib
import os
import re
import shutil
import subprocess

import pytest

from conftest import TINY, make_char_dataset

import bench
import eval_exit
import export_hf
import fineweb
import hellaswag
import plot
import sample
import sweep
import train_gpt2


def _lm_eval_exit(argv):             # imports lm-eval (seconds) only when its cases run
    import lm_eval_exit
    return lm_eval_exit.main(argv)


SCRIPTS = {"fineweb": fineweb.main, "eval_exit": eval_exit.main, "hellaswag": hellaswag.main,
           "plot": plot.main, "sweep": sweep.main, "bench": bench.main, "train_gpt2": train_gpt2.main,
           "sample": sample.main, "export_hf": export_hf.main, "lm_eval_exit": _lm_eval_exit}

# {name} in an argument is replaced by the workspace path of that fixture file:
#   src.txt (text source), data/ (a dataset), ck.pt (a checkpoint stand-in), run.txt (a log),
#   sw.py (a sweep file), afile (a regular file), ro/ (a directory nobody may write)
UNDER_FILE, READ_ONLY, NUL = "{afile}/sub", "{ro}/sub", "bad\0name"

FINEWEB = ["--source", "{src.txt}", "--quiet"]
FINEWEB_CASES = [
    ([], ["--bogus"], "unrecognized arguments: --bogus"),
    ([], ["--source", "{src.txt}/x.txt"], "source path does not exist"),
    ([], ["--source", "{afile}.csv"], "source path does not exist"),
    ([], ["--source", "{ro}"], "no .txt/.jsonl/.json/.parquet files in directory {ro}"),
    (FINEWEB, ["--name", "x"], "--name only apply to Hugging Face datasets"),
    (FINEWEB, ["--split", "validation"], "--split only apply to Hugging Face datasets"),
    (FINEWEB, ["--streaming"], "--streaming only apply to Hugging Face datasets"),
    (FINEWEB, ["--streaming=yes"], "argument --streaming: ignored explicit argument 'yes'"),
    (FINEWEB, ["--text-column", ""], "--text-column must not be empty"),
    (FINEWEB, ["--txt-split-lines=1"], "argument --txt-split-lines: ignored explicit argument '1'"),
    (FINEWEB, ["--max-chars", "many"], "argument --max-chars: expected an integer, got 'many'"),
    (FINEWEB, ["--max-chars", "0"], "argument --max-chars: must be >= 1, got 0"),
    (FINEWEB, ["--tokenizer", "bpe"], "argument --tokenizer: invalid choice: 'bpe'"),
    (FINEWEB, ["--shard-size", "1e3"], "argument --shard-size: expected an integer, got '1e3'"),
    (FINEWEB, ["--shard-size", "-1"], "argument --shard-size: must be in [1, 4294967296], got -1"),
    (FINEWEB, ["--shard-size", str(1 << 40)], "argument --shard-size: must be in [1, 4294967296]"),
    (FINEWEB, ["--val-fraction", "half"], "argument --val-fraction: expected a number, got 'half'"),
    (FINEWEB, ["--val-fraction", "1"], "argument --val-fraction: must be a finite number in [0, 1), got 1"),
    (FINEWEB, ["--val-fraction", "-0.1"], "must be a finite number in [0, 1), got -0.1"),
    (FINEWEB, ["--val-fraction", "nan"], "must be a finite number in [0, 1), got nan"),
    (FINEWEB, ["--val-position", "middle"], "argument --val-position: invalid choice: 'middle'"),
    (FINEWEB, ["--val-fraction", "0", "--val-position", "last"], "--val-position last needs --val-fraction > 0"),
    (FINEWEB, ["--out", UNDER_FILE], "--out {afile}/sub: {afile} is a file, not a directory"),
    (FINEWEB, ["--out", READ_ONLY], "--out {ro}/sub: cannot create it, {ro} is not writable"),
    (FINEWEB, ["--out", "{afile}"], "--out {afile}: exists and is not a directory"),
    (FINEWEB, ["--out", NUL], "name': contains a NUL byte"),
    (FINEWEB, ["--out", "x" * 300], "file name too long"),
    (FINEWEB, ["--source", NUL], "--source 'bad\\x00name' contains a NUL byte"),
    (FINEWEB, ["--procs", "two"], "argument --procs: expected an integer, got 'two'"),
    (FINEWEB, ["--procs", "0"], "argument --procs: must be in [1, 256], got 0"),
    (FINEWEB, ["--procs", "100000"], "argument --procs: must be in [1, 256], got 100000"),
    (FINEWEB, ["--quiet=no"], "argument --quiet: ignored explicit argument 'no'"),
]

EV = ["--ckpt", "{ck.pt}", "--data", "{data}", "--out", "out.md"]
EVAL_CASES = [
    ([], ["--data", "{data}"], "the following arguments are required: --ckpt"),
    ([], ["--ckpt", "{ck.pt}"], "the following arguments are required: --data"),
    ([], ["--ckpt", "{ck.pt}x", "--data", "{data}"], "--ckpt {ck.pt}x: no such file"),
    ([], ["--ckpt", "{data}", "--data", "{data}"], "--ckpt {data}: not a regular file"),
    ([], ["--ckpt", "{ck.pt}", "--data", "{data}x"], "--data {data}x: data directory does not exist"),
    (EV, ["--thresholds", "0.5,high"], "--thresholds must be comma-separated numbers, got '0.5,high'"),
    (EV, ["--thresholds", "-0.5"], "--thresholds must be finite numbers >= 0, got '-0.5'"),
    (EV, ["--thresholds", "nan"], "--thresholds must be finite numbers >= 0, got 'nan'"),
    (EV, ["--thresholds", ","], "--thresholds must be finite numbers >= 0, got ','"),
    (EV, ["--batches", "x"], "argument --batches: expected an integer, got 'x'"),
    (EV, ["--batches", "0"], "argument --batches: must be in [1, 1048576], got 0"),
    (EV, ["--batch-size", "-4"], "argument --batch-size: must be in [1, 65536], got -4"),
    (EV, ["--batch-size", str(1 << 40)], "argument --batch-size: must be in [1, 65536]"),
    (EV, ["--seq-len", "0"], "argument --seq-len: must be >= 1, got 0"),
    (EV, ["--seq-len", "1.5"], "argument --seq-len: expected an integer, got '1.5'"),
    (EV, ["--decode-tokens", "-1"], "argument --decode-tokens: must be >= 0, got -1"),
    (EV, ["--measures", "max-prob,nope"], "--measures: unknown measure 'nope'; valid: all, "
                                          "argmax-stable, entropy, kl-prev, learned, max-prob"),
    (EV, ["--tolerance", "-0.01"], "argument --tolerance: must be a finite number >= 0, got -0.01"),
    (EV, ["--depths", "0,1"], "--depths must be comma-separated ints >= 1, got '0,1'"),
    (EV, ["--depths", "2,x"], "--depths must be comma-separated ints >= 1, got '2,x'"),
    (EV, ["--depths-vs", "{ck.pt}"], "--depths-vs needs --depths"),
    (EV, ["--depths", "1", "--measures", "all"], "--measures and --depths are separate"),
    (EV, ["--decode-tokens", "many"], "argument --decode-tokens: expected an integer"),
    (EV, ["--out", UNDER_FILE], "--out {afile}/sub: {afile} is a file, not a directory"),
    (EV, ["--out", READ_ONLY], "--out {ro}/sub: cannot create it, {ro} is not writable"),
    (EV, ["--out", "{data}"], "--out {data}: is a directory"),
    (EV, ["--img-dir", UNDER_FILE], "--img-dir {afile}/sub: {afile} is a file, not a directory"),
    (EV, ["--img-dir", READ_ONLY], "--img-dir {ro}/sub: cannot create it, {ro} is not writable"),
    (EV, ["--device", "tpu"], "--device 'tpu' is not a device"),
    (EV, ["--device", "cuda:99"], "--device cuda:99: "),
    (EV, ["--device", "meta"], "--device meta: device type 'meta' is not supported"),
    (EV, ["--decode-rounds", "0"], "argument --decode-rounds: must be in [1, 1000], got 0"),
    (EV, ["--decode-rounds", "x"], "argument --decode-rounds: expected an integer, got 'x'"),
    (EV, ["--img", UNDER_FILE], "--img {afile}/sub: {afile} is a file, not a directory"),
    (EV, ["--img", READ_ONLY], "--img {ro}/sub: cannot create it, {ro} is not writable"),
    (EV, ["--summary=yes"], "argument --summary: ignored explicit argument 'yes'"),
]

HS = ["--ckpt", "{ck.pt}", "--data", "{hs.jsonl}"]
HELLASWAG_CASES = [
    ([], ["--data", "{hs.jsonl}"], "one of the arguments --ckpt --model is required"),
    ([], ["--ckpt", "{ck.pt}", "--model", "gpt2"], "argument --model: not allowed with argument --ckpt"),
    ([], ["--ckpt", "{ck.pt}x"], "--ckpt {ck.pt}x: no such file"),
    ([], ["--model", "./no-such-model"], "--model ./no-such-model: no such directory"),
    (HS, ["--data", "{hs.jsonl}x"], "--data {hs.jsonl}x: no such file"),
    (HS, ["--data", "{data}"], "--data {data}: not a regular file"),
    (HS, ["--limit", "0"], "argument --limit: must be >= 1, got 0"),
    (HS, ["--limit", "ten"], "argument --limit: expected an integer, got 'ten'"),
    (HS, ["--device", "gpu"], "--device 'gpu' is not a device"),
    (HS, ["--device", "cuda:99"], "--device cuda:99: "),
]

PL = ["{run.txt}"]
PLOT_CASES = [
    ([], [], "the following arguments are required: logs"),
    ([], ["{run.txt}x"], "log file {run.txt}x: no such file"),
    ([], ["{data}"], "log file {data}: not a regular file"),
    ([], ["{run.txt}", "--bogus"], "unrecognized arguments: --bogus"),
    (PL, ["--out", UNDER_FILE], "--out {afile}/sub: {afile} is a file, not a directory"),
    (PL, ["--out", READ_ONLY], "--out {ro}/sub: cannot create it, {ro} is not writable"),
    (PL, ["--kind", "pie"], "argument --kind: invalid choice: 'pie'"),
    (PL, ["--smooth", "1"], "argument --smooth: must be a finite number in [0, 1), got 1"),
    (PL, ["--smooth", "-0.5"], "argument --smooth: must be a finite number in [0, 1), got -0.5"),
    (PL, ["--smooth", "inf"], "argument --smooth: must be a finite number in [0, 1), got inf"),
    (PL, ["--smooth", "lots"], "argument --smooth: expected a number, got 'lots'"),
    (PL, ["--name", "a/b"], "--name 'a/b' must be a plain file name"),
    (PL, ["--name", ""], "--name '' must be a plain file name"),
    (PL, ["--name", "n" * 300], "is too long for a file name; give one with --name"),
]

SW = ["{sw.py}", "--log-dir", "logs"]
SWEEP_CASES = [
    ([], [], "the following arguments are required: sweep"),
    ([], ["{sw.py}x"], "sweep file {sw.py}x: no such file"),
    ([], ["{bad_syntax.py}"], "{bad_syntax.py}:1: syntax error"),
    ([], ["{bad_name.py}"], "{bad_name.py}: NameError: name 'undefined' is not defined"),
    ([], ["{bad_grid.py}"], "{bad_grid.py}: GRID must be a non-empty dict of non-empty lists"),
    ([], ["{bad_key.py}"], "{bad_key.py}: GRID/BASE keys must be trainer constant names, got 'n-embd'"),
    (SW, ["--gpus", ","], "--gpus needs at least one id"),
    (SW, ["--gpus", "0,1,0"], "--gpus lists an id twice: 0,1,0"),
    (SW, ["--log-dir", UNDER_FILE], "--log-dir {afile}/sub: {afile} is a file, not a directory"),
    (SW, ["--log-dir", READ_ONLY], "--log-dir {ro}/sub: cannot create it, {ro} is not writable"),
    (SW, ["--trainer", "{afile}x"], "--trainer {afile}x: no such file"),
    (SW, ["--preset_scale", "huge"], "argument --preset_scale: invalid choice: 'huge'"),
    (SW, ["--train-window", "0"], "argument --train-window: must be >= 1, got 0"),
    (SW, ["--train-window", "w"], "argument --train-window: expected an integer, got 'w'"),
    (SW, ["--table-only=yes"], "argument --table-only: ignored explicit argument 'yes'"),
    (SW, ["--dry-run=1"], "argument --dry-run: ignored explicit argument '1'"),
]

BE = ["--quick", "--device", "cpu", "--out", "res"]
BENCH_CASES = [
    (BE, ["--quick=1"], "argument --quick: ignored explicit argument '1'"),
    (BE, ["--memory=1"], "argument --memory: ignored explicit argument '1'"),
    (BE, ["--decode=1"], "argument --decode: ignored explicit argument '1'"),
    (BE, ["--gpu-check=yes"], "argument --gpu-check: ignored explicit argument 'yes'"),
    (BE, ["--cheap-exits=no"], "argument --cheap-exits: ignored explicit argument 'no'"),
    (BE, ["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (BE, ["--out", UNDER_FILE], "--out {afile}/sub: {afile} is a file, not a directory"),
    (BE, ["--out", READ_ONLY], "--out {ro}/sub: cannot create it, {ro} is not writable"),
    (BE, ["--cases", "plain,nope"], "unknown case(s) ['nope']"),
    (BE, ["--cases", ","], "unknown case(s) []"),
    (BE, ["--exit-loss", "bogus"], "unknown --exit-loss 'bogus'"),
    (BE, ["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (BE, ["--compile=yes"], "argument --compile: ignored explicit argument 'yes'"),
    (BE, ["--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
    (BE, ["--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (BE, ["--steps", "2.5"], "argument --steps: expected an integer, got '2.5'"),
    (BE, ["--threads", "-2"], "argument --threads: must be in [0, 4096], got -2"),
    (BE, ["--stat", "mean"], "argument --stat: invalid choice: 'mean'"),
    (BE, ["--repeat", "0"], "argument --repeat: must be >= 1, got 0"),
    (BE, ["--timeout", "0"], "argument --timeout: must be a finite number >= 1, got 0"),
    (BE, ["--timeout", "nan"], "argument --timeout: must be a finite number >= 1, got nan"),
    (BE, ["--n_embd", "30", "--n_head", "4"], "n_embd 30 not divisible by n_head 4"),
] + [([], ["--decode", *a], m) for a, m in [                  # bench/decode_bench.py
    (["--rounds", "0"], "argument --rounds: must be in [1, 1000], got 0"),
    (["--new-tokens", "x"], "argument --new-tokens: expected an integer, got 'x'"),
    (["--prompt-len", "0"], "argument --prompt-len: must be >= 1, got 0"),
    (["--val-batches", "0"], "argument --val-batches: must be >= 1, got 0"),
    (["--threads", "-1"], "argument --threads: must be in [0, 4096], got -1"),
    (["--thresholds", "0.5,x"], "--thresholds must be a comma-separated list"),
    (["--thresholds", "-1"], "--thresholds must be numbers >= 0"),
    (["--spec", "2by4"], "--spec entries are DxK"),
    (["--batch-sizes", "0"], "--batch-sizes must be >= 1"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--out", UNDER_FILE], "--out {afile}/sub: {afile} is a file, not a directory"),
    (["--ckpt", "{afile}x", "--data", "{data}"], "checkpoint not found: {afile}x"),
    (["--data", "{afile}x", "--ckpt", "{ck.pt}"], "{afile}x"),
]] + [(BE, [f"--{k}", v], f"argument --{k}: " + ("must be in [1, 1048576]" if v != "x" else
                                                 "expected an integer, got 'x'"))
     for k in bench.FULL_SHAPE for v in ("0", "x", str(1 << 30))]

SA = ["--ckpt", "{ck.pt}"]
SAMPLE_CASES = [
    ([], ["--prompt", "hi"], "one of the arguments --ckpt --init_from is required"),
    ([], ["--ckpt", "{ck.pt}", "--init_from", "gpt2"], "argument --init_from: not allowed with argument --ckpt"),
    ([], ["--ckpt", "norun", "--log_dir", "{afile}x"], "checkpoint not found: norun (neither a file nor a run under {afile}x/)"),
    ([], ["--ckpt", "{ro}"], "no checkpoint ckpt_*.pt in {ro}"),
    (SA, ["--prompt", "FILE:{afile}x"], "cannot read prompt file '{afile}x'"),
    (SA, ["--num_samples", "0"], "argument --num_samples: must be in [1, 10000], got 0"),
    (SA, ["--depth", "0"], "argument --depth: must be >= 1, got 0"),
    (SA, ["--max_new_tokens", "x"], "argument --max_new_tokens: expected an integer, got 'x'"),
    (SA, ["--temperature", "-1"], "argument --temperature: must be a finite number >= 0, got -1"),
    (SA, ["--temperature", "nan"], "argument --temperature: must be a finite number >= 0, got nan"),
    (SA, ["--top_k", "-1"], "argument --top_k: must be >= 0, got -1"),
    (SA, ["--seed", "-1"], "argument --seed: must be in [0, 9223372036854775807], got -1"),
    (SA, ["--device", "tpu"], "--device 'tpu' is not a device"),
    (SA, ["--exit_threshold", "-0.5"], "argument --exit_threshold: must be a finite number >= 0"),
    (SA, ["--show_depth=1"], "argument --show_depth: ignored explicit argument '1'"),
    (SA, ["--draft_layers", "0"], "argument --draft_layers: must be >= 1, got 0"),
    (SA, ["--draft_layers", "x"], "argument --draft_layers: expected an integer, got 'x'"),
    (SA, ["--draft_layers", "1", "--draft_tokens", "0"], "argument --draft_tokens: must be in [1, 1024], got 0"),
    (SA, ["--draft_layers", "1", "--exit_threshold", "0.5"], "--draft_layers (self-speculative decoding"),
]

EX = ["--ckpt", "{ck.pt}", "--out", "hfout"]
EXPORT_CASES = [
    ([], [], "the following arguments are required: --ckpt, --out"),
    (EX, ["--bogus"], "unrecognized arguments: --bogus"),
    (EX, ["--depth", "0"], "argument --depth: must be >= 1, got 0"),
    (EX, ["--depth", "x"], "argument --depth: expected an integer, got 'x'"),
    (["--out", "hfout"], ["--ckpt", "{ck.pt}.nope"], "--ckpt {ck.pt}.nope: no such file"),
    (["--out", "hfout"], ["--ckpt", "{ro}"], "--ckpt {ro}: not a regular file"),
    (["--ckpt", "{ck.pt}"], ["--out", UNDER_FILE], "--out {afile}/sub: {afile} is a file, not a directory"),
    (["--ckpt", "{ck.pt}"], ["--out", READ_ONLY], "--out {ro}/sub: cannot create it, {ro} is not writable"),
    (["--ckpt", "{ck.pt}"], ["--out", "{afile}"], "--out {afile}: exists and is not a directory"),
    (["--ckpt", "{ck.pt}"], ["--out", NUL], "contains a NUL byte"),
    (["--out", "hfout"], ["--ckpt", "{ck.pt}"], "checkpoint {ck.pt} is unreadable"),
]

LE = ["--ckpt", "{ck.pt}", "--tasks", "t"]
LM_EVAL_CASES = [
    ([], [], "the following arguments are required: --ckpt, --tasks"),
    (LE, ["--thresholds", "-1"],
     "argument --thresholds: threshold must be a finite number >= 0 or none, got '-1'"),
    (LE, ["--thresholds", ","], "argument --thresholds: no thresholds in ','"),
    (LE, ["--thresholds", "x"], "argument --thresholds: could not convert string to float: 'x'"),
    (LE, ["--limit", "-1"], "argument --limit: must be a finite number >= 0, got -1"),
    (LE, ["--num_fewshot", "x"], "argument --num_fewshot: expected an integer, got 'x'"),
    (LE, ["--batch_size", "0"], "argument --batch_size: must be in [1, 65536], got 0"),
    (LE, ["--device", "tpu"], "--device 'tpu' is not a device"),
    (LE, ["--include_path", "{afile}"], "--include_path {afile}: not a directory"),
    (LE, ["--out", READ_ONLY], "--out {ro}/sub: cannot create it, {ro} is not writable"),
    (["--ckpt", "{ck.pt}"], ["--tasks", ","], "--tasks ',': no task names"),
    (["--tasks", "t"], ["--ckpt", "{ck.pt}.nope"], "--ckpt {ck.pt}.nope: no such file"),
    (LE, ["--thresholds", "0.5"], "checkpoint {ck.pt} is unreadable"),
]

# the trainer: every constant gets a value of the wrong type; then ranges, consistency, paths
TR = TINY + ["--dataset={data}", "--log_dir=logs", "--img_dir=logs/img", "--run_name=bad"]


def _wrong_type(key, default):
    """A bool/int/float key gets a string on the command line; a str key (where any text is a
    string) gets an int from a config file, wt_{key}.py in the workspace."""
    want = train_gpt2.NONE_TYPES.get(key, type(default))
    if want is str:
        return (TR, [f"{{wt_{key}.py}}"], f"error: {key} expects str")
    value = {bool: "3", int: "'x'", float: "'x'"}[want]
    return (TR, [f"--{key}={value}"], f"error: {key} expects {want.__name__}")


TRAIN_CASES = [_wrong_type(k, v) for k, v in train_gpt2.all_defaults().items()] + [
    (TR, ["--bogus=1"], "error: unknown config key 'bogus'"),
    (TR, ["{afile}"], "{afile}"),
    (TR, ["--T=0"], "T must be positive, got 0"),
    (TR, ["--max_steps=-5"], "max_steps must be positive, got -5"),
    (TR, ["--eval_iters=0"], "eval_iters must be positive, got 0"),
    (TR, ["--batch_reuse=0"], "batch_reuse must be positive, got 0"),
    (TR, ["--keep_checkpoints=0"], "keep_checkpoints must be positive, got 0"),
    (TR, ["--lr_find_steps=0"], "lr_find_steps must be positive, got 0"),
    (TR, ["--num_samples=0"], "num_samples must be positive, got 0"),
    (TR, ["--eval_interval=-1"], "eval_interval must be >= 0, got -1"),
    (TR, ["--log_interval=-1"], "log_interval must be >= 0, got -1"),
    (TR, ["--size_interval=-2"], "size_interval must be >= 0, got -2"),
    (TR, ["--sample_interval=-1"], "sample_interval must be >= 0, got -1"),
    (TR, ["--checkpoint_interval=-1"], "checkpoint_interval must be >= 0, got -1"),
    (TR, ["--sample_tokens=-1"], "sample_tokens must be >= 0, got -1"),
    (TR, ["--stats_rows=-1"], "stats_rows must be >= 0, got -1"),
    (TR, ["--warmup_steps=-1"], "warmup_steps must be >= 0, got -1"),
    (TR, ["--max_lr=0"], "max_lr must be > 0"),
    (TR, ["--min_lr=-0.1"], "min_lr >= 0"),
    (TR, ["--min_lr=0.1"], "min_lr (0.1) must not exceed max_lr (0.01)"),
    (TR, ["--max_lr=1e999"], "max_lr must be finite, got inf"),
    (TR, ["--grad_clip=-1.0"], "grad_clip must be >= 0 (0: no clipping), got -1.0"),
    (TR, ["--weight_decay=-0.1"], "weight_decay must be >= 0, got -0.1"),
    (TR, ["--beta1=1.0"], "beta1 and beta2 must be in [0, 1), got 1.0, 0.95"),
    (TR, ["--beta2=-0.5"], "beta1 and beta2 must be in [0, 1), got 0.9, -0.5"),
    (TR, ["--lr_schedule=onecycle", "--onecycle_pct=1.5"], "onecycle_pct must be in (0, 1), got 1.5"),
    (TR, ["--onecycle_div=0"], "onecycle_div and onecycle_final_div must be > 0"),
    (TR, ["--onecycle_final_div=-1"], "onecycle_div and onecycle_final_div must be > 0"),
    (TR, ["--lr_find_start=0"], "lr_find needs 0 < lr_find_start < lr_find_end"),
    (TR, ["--lr_find_end=1e-9"], "lr_find needs 0 < lr_find_start < lr_find_end"),
    (TR, ["--residual_limit=0"], "residual_limit must be > 0 or None, got 0"),
    (TR, ["--stop_at_step=-1"], "stop_at_step must be in [0, max_steps) = [0, 6), got -1"),
    (TR, ["--seed=-1"], "seed must be >= 0, got -1"),
    (TR, ["--hellaswag_limit=0"], "hellaswag_limit must be positive or None, got 0"),
    (TR, ["--hellaswag={afile}x"], "hellaswag {afile}x: no such file"),
    (TR, ["--hellaswag={data}"], "hellaswag {data}: not a regular file"),
    (TR, ["--dataset={data}x"], "data directory does not exist: {data}x"),
    (TR, ["--dataset={ro}"], "no manifest meta.json in {ro}"),
    (TR, ["--dataset={ro}/new", "--dataset_source={afile}x.txt"],
     "could not build {ro}/new from dataset_source '{afile}x.txt': source path does not exist"),
    (TR, ["--dataset=new", "--dataset_source={afile}.csv"], "source path does not exist"),
    (TR, ["--dataset=new", "--dataset_source={src.txt}", "--tokenizer=char", "--vocab_size=64",
          "--log_dir={ro}/logs"], "log_dir {ro}/logs: cannot create it, {ro} is not writable"),
    (TR, ["--tokenizer=bpe"], "unknown tokenizer 'bpe'; known: gpt2, char"),
    (TR, ["--tokenizer=gpt2"], "tokenizer 'gpt2' does not match the data's 'char'"),
    (TR, ["--shuffle=None"], "shuffle expects bool"),
    (TR, ["--log_dir={afile}/sub"], "log_dir {afile}/sub: {afile} is a file, not a directory"),
    (TR, ["--log_dir={ro}/sub"], "log_dir {ro}/sub: cannot create it, {ro} is not writable"),
    (TR, ["--log_dir={ro}"], "log_dir {ro}: not writable"),
    (TR, ["--img_dir={afile}/img"], "img_dir {afile}/img: {afile} is a file, not a directory"),
    (TR, ["--img_dir={ro}/img"], "img_dir {ro}/img: cannot create it, {ro} is not writable"),
    (TR, ["--img_dir=None", "--lr_find"], "img_dir=None: exit_table and lr_find draw figures"),
    (TR, ["--img_dir=None", "--exit_table=0.5"], "img_dir=None: exit_table and lr_find draw"),
    (TR, ["--run_name=" + "r" * 300], "must be a plain file name"),
    (TR, ["--run_name=../up"], "must be a plain file name"),
    (TR, ["--run_name=afile", "--log_dir=."], "checkpoint directory "),
    (TR, ["--resume={afile}x"], "resume checkpoint not found: {afile}x"),
    (TR, ["--resume={afile}"], "is unreadable"),
    (TR, ["--device=tpu"], "device 'tpu' is not a device"),
    (TR, ["--device=cuda:99"], "device cuda:99: "),
    (TR, ["--device=meta"], "device meta: device type 'meta' is not supported"),
    (TR, ["--parallel=zero3"], "unknown parallel 'zero3'; known: "),
    (TR, ["--dtype=float16"], "unknown dtype 'float16'; known: auto, float32, bfloat16"),
    (TR, ["--preset_scale=huge"], "unknown preset_scale 'huge'"),
    (TR, ["--compile=1"], "compile expects bool"),
    (TR, ["--n_layer=0"], "n_layer must be a positive int, got 0"),
    (TR, ["--n_head=-2"], "n_head must be a positive int, got -2"),
    (TR, ["--block_size=0"], "block_size must be a positive int, got 0"),
    (TR, ["--vocab_size=32"], "data vocab_size 40 > model vocab_size 32"),
    (TR, ["--n_embd=274877906944", "--n_head=1"], "cannot build the model on cpu"),
    (TR, ["--dropout=1.0"], "dropout must be in [0, 1), got 1.0"),
    (TR, ["--exit_threshold=-0.5"], "exit_threshold must be >= 0"),
    (TR, ["--rope_base=0.0"], "rope_base must be > 0"),
    (TR, ["--layerskip_rotation=0"], "layerskip_rotation must be an int >= 1, got 0"),
    (TR, ["--prev_token_shift=2"], "prev_token_shift must be 0 or 1, got 2"),
    (TR, ["--layerskip_scale=-1.0"], "layerskip_scale must be >= 0"),
    (TR, ["--argmax_stable_k=0"], "argmax_stable_k must be an int >= 1, got 0"),
    (TR, ["--depth_max=-1"], "depth_max must be an int >= 1 (0: 2 * n_layer - 1), got -1"),
    (TR, ["--depth_sampling=uniform"], "depth_sampling 'uniform' applies one block a random "
                                       "number of times: needs share_weights"),
] + [(TR, [f"--{k}=nope"], f"unknown {k} 'nope'; known: ")
     for k in ("block_type", "pos_encoding", "exit_mode", "confidence", "exit_loss", "head_impl",
               "layerskip_curriculum", "depth_sampling")]

MATRIX = {"train_gpt2": TRAIN_CASES, "fineweb": FINEWEB_CASES, "eval_exit": EVAL_CASES, "hellaswag": HELLASWAG_CASES,
          "plot": PLOT_CASES, "sweep": SWEEP_CASES, "bench": BENCH_CASES, "sample": SAMPLE_CASES,
          "export_hf": EXPORT_CASES, "lm_eval_exit": LM_EVAL_CASES}


def _immutable(path, on):
    """chattr +i/-i: as root, a mode-0555 directory is still writable; an immutable one is not."""
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The workspace: fixture files and a directory nobody can write."""
    d = tmp_path_factory.mktemp("ws")
    (d / "src.txt").write_text("some text to tokenise\n" * 50)
    make_char_dataset(str(d / "data"), n_train=600, n_val=200)
    (d / "ck.pt").write_bytes(b"a checkpoint stand-in: parse-time cases never load it")
    (d / "run.txt").write_text("@ 0 train 5.0000 , lr:1e-3\n@ 1 train 4.0000 , lr:1e-3\n")
    (d / "hs.jsonl").write_text('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 0}\n')
    (d / "sw.py").write_text('GRID = {"n_embd": [32]}\nBASE = {"max_steps": 2}\n')
    (d / "bad_syntax.py").write_text("GRID = {\n")
    (d / "bad_name.py").write_text("GRID = undefined\n")
    (d / "bad_grid.py").write_text("GRID = {'n_embd': []}\n")
    (d / "bad_key.py").write_text("GRID = {'n-embd': [32]}\n")
    (d / "afile").write_text("a regular file\n")
    for key, value in train_gpt2.all_defaults().items():
        if train_gpt2.NONE_TYPES.get(key, type(value)) is str:
            (d / f"wt_{key}.py").write_text(f"{key} = 5\n")
    ro = d / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    _immutable(ro, True)
    if os.access(ro, os.W_OK):
        _immutable(ro, False)
        ro.chmod(0o755)
        pytest.skip("cannot make a directory unwritable here")
    yield d
    _immutable(ro, False)
    ro.chmod(0o755)


def _fill(arg, ws):
    return re.sub(r"\{([\w.]+)\}", lambda m: str(ws / m.group(1)), arg)


def _snapshot(d):
    out = {}
    for root, dirs, files in os.walk(d):
        out[root] = (sorted(dirs), sorted(files))
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[p] = (os.stat(p).st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


def run_main(script, argv, capsys):
    """SCRIPTS[script](argv) -> (exit code, stdout, stderr)."""
    try:
        code = SCRIPTS[script](argv)
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("script,base,args,msg", [
    pytest.param(s, b, a, m, id=f"{s}:{' '.join(a)[:50]}") for s, cases in MATRIX.items()
    for b, a, m in cases])
def test_bad_argument(ws, monkeypatch, capsys, script, base, args, msg):
    monkeypatch.chdir(ws)
    before = _snapshot(ws)
    code, out, err = run_main(script, [_fill(a, ws) for a in base + args], capsys)
    lines = err.splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert _fill(msg, ws) in lines[0], lines[0]
    assert out == ""
    assert _snapshot(ws) == before, "a bad command changed files"


def _help(script, capsys):
    code, out, err = run_main(script, ["--help"], capsys)
    assert code == 0 and err == "", err
    return out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_lists_defaults_and_matrix_covers_every_option(script, capsys):
    text = _help(script, capsys)
    options = set(re.findall(r"^\s+(--[\w-]+)", text, re.M)) - {"--help"}
    assert options, text
    used = {a.split("=")[0] for _, args, _ in MATRIX[script] for a in args if a.startswith("--")}
    used |= {"--" + a[4:-4] for _, args, _ in MATRIX[script] for a in args if a.startswith("{wt_")}
    used |= {a for base, _, _ in MATRIX[script] for a in base if a.startswith("--")} & \
        {a for _, args, m in MATRIX[script] for a in args}
    assert options <= used, f"options without a bad-input case: {sorted(options - used)}"
    if script == "train_gpt2":       # generated from the constants: --key=default  comment
        assert f"--max_steps={train_gpt2.max_steps}  " in text and "--B=64 " in text
        assert re.search(r"--grad_clip=1\.0 +max grad norm", text), text
    else:
        assert "(default: " in text
