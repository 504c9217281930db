"""The LR range test (seed 004): train_gpt2.py --lr_find.

    lrs, losses, smooth = run(step_fn, n, start, end, log)      # step_fn(lr, i) -> loss
    suggested, lowest = suggest_lr(lrs, smooth)
    range_test(step_fn, cfg, log, master)       # the trainer's: run, suggest, note, plot -> 0

The learning rate rises exponentially from `start` to `end` over n steps; the test stops when
the loss is non-finite or the smoothed loss (bias-corrected EMA, 0.98) exceeds 4x its minimum.
The suggestion is the steepest descent of the smoothed loss over log10(lr).
"""
import math
import os

import numpy as np


def run(step_fn, n, start, end, log):
    """One optimizer step per LR through step_fn(lr, i) -> loss; `@ {i} lr_find` lines in log."""
    lrs, losses, smooth = [], [], []
    avg, best = 0.0, float("inf")
    for i in range(n):
        lr = start * (end / start) ** (i / max(1, n - 1))
        loss = step_fn(lr, i)
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
    return lrs, losses, smooth


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


def range_test(step_fn, cfg, log, master):
    """run() over cfg's lr_find_steps/start/end, the suggestion as a `#` note and an
    lr_find_result event, the plot img/{run_name}_lr_find.png (master) -> exit code 0."""
    lrs, losses, smooth = run(step_fn, cfg["lr_find_steps"], cfg["lr_find_start"],
                              cfg["lr_find_end"], log)
    if len(lrs) < 3:
        log.note("lr_find: too few steps for a suggestion")
        return 0
    sug, lo = suggest_lr(lrs, smooth)
    log.note(f"lr_find suggested max_lr: {sug:.4e} (steepest descent of the smoothed loss); "
             f"lowest smoothed loss at lr {lo:.4e}")
    log.event("lr_find_result", suggested_lr=sug, min_loss_lr=lo)
    if master:
        out = os.path.join(cfg["img_dir"], f"{cfg['run_name']}_lr_find.png")
        try:
            import plot
            plot.plot_lr_find(lrs, losses, smooth, sug, out)
            log.note(f"plot written: {out}")
        except Exception as e:
            log.note(f"plot skipped ({type(e).__name__}: {e})")
    return 0
