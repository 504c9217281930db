"""What train_gpt2.py writes after its last step (rank 0): the plots of the run, the early-exit
table of the final checkpoint (exit_table=...) and the commands to run next.

    run_summary.write(s, ckpt)       # s: the trainer's State; ckpt: the final checkpoint or None

The table comes from `eval_exit.py --summary` in a child process: the trainer does not import
the tools that read its checkpoints.
"""
import os
import re
import shlex
import subprocess
import sys

import plot
import runlog


def write(s, ckpt):
    """The plots (what `python plot.py log/<run>.txt --out <img_dir>` writes; img_dir None: none),
    then with a final checkpoint the exit table (exit_table set) and the next-step commands."""
    if s.cfg["img_dir"] is not None:
        for note in plot.plot_run(s.log.txt_path, s.cfg["img_dir"]):
            s.log.note(note)
    if ckpt is not None:
        next_steps(s, ckpt, exit_table(s, ckpt) if s.cfg["exit_table"] else None)


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
