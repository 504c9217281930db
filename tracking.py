"""Experiment tracking: the trainer's jsonl events, fanned out to Weights & Biases (optional).

Config keys (nanoGPT's names): wandb_log (False), wandb_project, wandb_run_name ("" = the
run_name). wandb is not a requirement: wandb_log=True without it installed is one error line
naming the install command. Works offline with WANDB_MODE=offline (run directory under
WANDB_DIR, `wandb sync` uploads it later).

Every event that carries a step becomes one wandb.log at that step (the trainer step is also
the x-axis "step"): scalars as "<event>/<field>" (train/loss, val/loss, hellaswag/acc_norm, ...),
per-layer lists as their own chart group "<event>.<field>/L<l>" (train.layer_losses/L1,
train.earlystopdict/L3, val.layer_losses/L2), per-layer rows of named columns likewise
(size.residual_std/L1.prev, .mid, .next). Text (samples) and bookkeeping events are skipped.
The resolved config is the run config; rank 0 only. A resumed run continues the same wandb run:
its id is kept in <checkpoint dir>/wandb_run_id.
"""
import math
import secrets
import os

INSTALL = "pip install wandb"
ID_FILE = "wandb_run_id"
COLUMNS = {"residual_std": ("prev", "mid", "next")}   # names of per-layer row columns
SKIP_EVENTS = ("sample",)                              # text, no metric


class TrackingError(ValueError):
    """Bad configuration: one `error:` line."""


def check(cfg):
    """Raise TrackingError when wandb_log=True cannot work (wandb missing)."""
    if not cfg.get("wandb_log"):
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise TrackingError(f"wandb_log=True needs the wandb package: {INSTALL}") from None


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metrics(event):
    """One jsonl event dict -> {wandb key: float} (empty for events without numbers or step)."""
    kind, out = event.get("event"), {}
    if "step" not in event or kind in SKIP_EVENTS:
        return out
    for key, v in event.items():
        if key in ("event", "time", "step"):
            continue
        if _number(v):
            out[f"{kind}/{key}"] = float(v)
        elif isinstance(v, (list, tuple)):
            for l, x in enumerate(v, start=1):
                if _number(x):
                    out[f"{kind}.{key}/L{l}"] = float(x)
                elif isinstance(x, (list, tuple)):
                    names = COLUMNS.get(key) or [str(j) for j in range(len(x))]
                    for name, y in zip(names, x):
                        if _number(y):
                            out[f"{kind}.{key}/L{l}.{name}"] = float(y)
    return out


class WandbTracker:
    """One wandb run; `log(event)` for each jsonl event, `finish()` at the end."""

    def __init__(self, project, run_name, config, id_dir, resume):
        import wandb
        id_path = os.path.join(id_dir, ID_FILE)
        run_id = None
        if resume and os.path.isfile(id_path):
            with open(id_path) as f:
                run_id = f.read().strip() or None
        fresh = run_id is None
        if fresh:
            run_id = secrets.token_hex(4)                 # wandb ids: [a-z0-9]
        try:
            self.run = wandb.init(project=project, name=run_name, id=run_id, resume="allow",
                                  config=config)
        except Exception as e:   # no network / login: say so in one line
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise TrackingError(f"wandb.init failed ({type(e).__name__}: {first}); "
                                "WANDB_MODE=offline logs locally") from None
        if fresh:
            os.makedirs(id_dir, exist_ok=True)
            with open(id_path, "w") as f:
                f.write(run_id + "\n")
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.id = run_id

    def log(self, event):
        m = metrics(event)
        if m:
            step = int(event["step"])
            self.run.log({"step": step, **m}, step=step)

    def finish(self, exit_code=0):
        self.run.finish(exit_code=exit_code)


def start(cfg, resolved, id_dir, resume, master):
    """The tracker for this run, or None (wandb_log off, or not rank 0)."""
    if not (cfg.get("wandb_log") and master):
        return None
    check(cfg)
    return WandbTracker(cfg.get("wandb_project") or "early-exit-gpt2",
                        cfg.get("wandb_run_name") or cfg.get("run_name"), resolved, id_dir, resume)
