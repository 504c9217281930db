"""Plots of training logs (log/{run_name}.txt) into img/.

    python plot.py log/5-test.txt log/0-noearly.txt --out img/ --kind all

Figures (one colour per run, legend by run name):
  loss       train (raw faint + smoothed) and val loss over steps     -> img/{runs}.png
  layers     per-layer val loss heat map over steps (layer x step)    -> img/{run}-layers.png
  exits      earlystopdict over steps: fraction exiting at each layer -> img/{run}-exits.png
  residuals  SIZE COMPARISON prev / mid / next per layer, log-scale y -> img/{run}-residuals.png

The log format is the journal's (train_gpt2.py writes it):
  @ 949 train 5.2751 , allloss: 64.1261, ..., earlystopdict: [0.0, ...], lr:5.9999e-04, ...
  SIZE COMPARISON prev 1.06 mid 0.05 next 1.09        (n_layer lines; older logs have no mid)
  @ 1000 val 4.1234                                     (optionally followed by `, key: value` pairs)
  @ 1000 val-layers [5.1, 4.6, ...]                     (per-layer val loss)
When log/{run}.jsonl (train_gpt2.py's twin of the text log) exists beside the .txt, the numbers
are read from it (full precision); otherwise from the text, which also covers the journal's own
logs. Parsing is lenient: unknown lines are skipped, a partial last line (a run still writing) is
ignored, and when a resumed run re-logs steps the later lines replace the earlier ones.
Every figure is written atomically (temp file, then os.replace).
"""
import json
import math
import os
import re
import sys

import numpy as np

import cli

_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)"
_TRAIN_RE = re.compile(r"^@?\s*(\d+)\s+train\s+(" + _NUM + r")(.*)$", re.IGNORECASE)
_VAL_RE = re.compile(r"^@?\s*(\d+)\s+val\s+(" + _NUM + r")(.*)$", re.IGNORECASE)
_VAL_LAYERS_RE = re.compile(r"^@?\s*(\d+)\s+val[-_ ]layers?\s*:?\s*\[([^\]]*)\](.*)$", re.IGNORECASE)
_HELLA_RE = re.compile(r"^@?\s*(\d+)\s+hella(?:swag)?\s*:?\s*(" + _NUM + r")", re.IGNORECASE)
_SIZE_RE = re.compile(r"^SIZE COMPARISON\s+prev\s+(" + _NUM + r")(?:\s+mid\s+(" + _NUM + r"))?"
                      r"\s+next\s+(" + _NUM + r")\s*$", re.IGNORECASE)
# `key: value` pairs after the loss; value is a [list] or a token up to the next comma
_KV_RE = re.compile(r"([A-Za-z][\w/\-]*)\s*:\s*(\[[^\]]*\]|[^,]+)")


def _float(s):
    s = s.strip()
    for unit in ("ms", "s", "%"):
        if s.endswith(unit) and not s.endswith("nan"):
            s = s[: -len(unit)]
            break
    try:
        return float(s)
    except ValueError:
        return None


def _floats(s):
    """'[1.0, 2, nan]' or '1.0, 2' -> list of float (None for unparsable items dropped)."""
    s = s.strip().strip("[]")
    if not s.strip():
        return []
    out = [_float(x) for x in s.split(",")]
    return [x for x in out if x is not None]


def _key(k):
    """Log field name -> dict key: 'tok/sec' -> 'tok_sec', 'batch-reuse' -> 'batch_reuse'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", k).strip("_").lower()


def _parse_kv(rest):
    out = {}
    for k, v in _KV_RE.findall(rest):
        v = v.strip()
        out[_key(k)] = _floats(v) if v.startswith("[") else _float(v)
    return out


def read_lines(path):
    """Complete lines of a text file; a last line without its newline (still being written) is dropped."""
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = text.split("\n")
    return lines[:-1]  # after the last "\n" comes either "" or a partial line


def _truncate(series, step_key, step):
    """Drop the entries of a dict of parallel lists whose step is >= step (a resumed run re-logs them)."""
    steps = series[step_key]
    keep = 0
    while keep < len(steps) and steps[keep] < step:
        keep += 1
    if keep < len(steps):
        for k in series:
            del series[k][keep:]


class _Series:
    """What a log holds, filled line by line (text) or event by event (jsonl); a resumed run
    re-logs steps, and the later entries replace the earlier ones."""

    def __init__(self):
        self.train = {"step": [], "train": []}
        self.train_extra = []
        self.val = {"val_step": [], "val": [], "_extra": []}
        self.vl = {"val_layers_step": [], "val_layers": []}
        self.hs = {"hella_step": [], "hella": []}
        self.size = {"size_step": [], "blocks": []}

    def add_train(self, step, loss, extra):
        if self.train["step"] and step <= self.train["step"][-1]:
            n = len(self.train["step"])
            _truncate(self.train, "step", step)
            del self.train_extra[len(self.train["step"]):n]
            _truncate(self.size, "size_step", step)
        self.train["step"].append(step)
        self.train["train"].append(loss)
        self.train_extra.append(extra)

    def add_val_layers(self, step, losses):
        if self.vl["val_layers_step"] and step <= self.vl["val_layers_step"][-1]:
            _truncate(self.vl, "val_layers_step", step)
        self.vl["val_layers_step"].append(step)
        self.vl["val_layers"].append(losses)

    def add_val(self, step, loss, extra):
        if self.val["val_step"] and step <= self.val["val_step"][-1]:
            _truncate(self.val, "val_step", step)
        self.val["val_step"].append(step)
        self.val["val"].append(loss)
        self.val["_extra"].append(extra)

    def add_hella(self, step, acc):
        if self.hs["hella_step"] and step <= self.hs["hella_step"][-1]:
            _truncate(self.hs, "hella_step", step)
        self.hs["hella_step"].append(step)
        self.hs["hella"].append(acc)

    def add_size(self, step, rows):
        self.size["size_step"].append(step)
        self.size["blocks"].append(rows)


def parse_log(path):
    """Parse one run log: log/{run}.jsonl when it exists beside log/{run}.txt (full precision,
    no text parsing), else the text (also the journal's pasted logs). Returns a dict of lists
    (numpy arrays where rectangular):

    name            run name (file name without extension)
    step, train     train steps and losses; every other `key: value` of the train line under its
                    key (allloss, confloss, targetloss, earlystop, lr, norm, dt, tok_sec, flops,
                    batch_reuse), list-valued ones (earlystopdict) as lists of lists
    val_step, val   val lines
    val_extra       dict key -> list of the extra `key: value` pairs of val lines (aligned with val_step)
    val_layers_step, val_layers   per-layer val loss lines, val_layers (n, L)
    hella_step, hella             HellaSwag accuracy lines (`@ step hella 0.2950`)
    size_step       step of each SIZE COMPARISON block (the preceding train line's step)
    size_prev, size_mid, size_next   (n_blocks, L) arrays; size_mid is None for logs without mid
    """
    stem, ext = os.path.splitext(str(path))
    jsonl = stem + ".jsonl" if ext != ".jsonl" else str(path)
    series = _read_jsonl(jsonl) if os.path.isfile(jsonl) else _read_text(path)
    return _assemble(os.path.basename(stem), series)


def _read_jsonl(path):
    """train_gpt2.py's jsonl events -> _Series (a partial last line is skipped)."""
    r = _Series()
    for line in read_lines(path):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        kind, step = e.get("event"), e.get("step")
        if kind == "train":
            extra = {k: v for k, v in e.items() if k not in ("event", "time", "step", "loss")}
            extra["dt"] = extra.pop("dt_ms", None)
            r.add_train(step, e["loss"], extra)
        elif kind == "val":
            r.add_val(step, e["loss"], {})
            r.add_val_layers(step, e["layer_losses"])
        elif kind == "hellaswag":
            r.add_hella(step, e["acc_norm"])
        elif kind == "size":
            r.add_size(step, [tuple(row) for row in e["residual_std"]])
    return r


def _read_text(path):
    """The journal's text format -> _Series."""
    r = _Series()
    block, last_step = None, -1
    for line in read_lines(path):
        line = line.strip()
        m = _SIZE_RE.match(line)
        if m:
            if block is None:
                block = (last_step, [])
            block[1].append(tuple(_float(g) if g is not None else None for g in m.groups()))
            continue
        if block:
            r.add_size(*block)
        block = None
        m = _TRAIN_RE.match(line)
        if m:
            last_step = int(m.group(1))
            r.add_train(last_step, _float(m.group(2)), _parse_kv(m.group(3)))
            continue
        m = _VAL_LAYERS_RE.match(line)
        if m:
            r.add_val_layers(int(m.group(1)), _floats(m.group(2)))
            continue
        m = _VAL_RE.match(line)
        if m:
            step, extra = int(m.group(1)), _parse_kv(m.group(3))
            r.add_val(step, _float(m.group(2)), extra)
            for k, v in extra.items():  # per-layer val loss given on the val line itself
                if isinstance(v, list) and "layer" in k:
                    r.add_val_layers(step, v)
                    break
            continue
        m = _HELLA_RE.match(line)
        if m:
            r.add_hella(int(m.group(1)), _float(m.group(2)))
    if block:
        r.add_size(*block)
    return r


def _assemble(name, r):
    """_Series -> parse_log's dict."""
    out = {"name": name, "step": np.array(r.train["step"], dtype=np.int64),
           "train": np.array(r.train["train"], dtype=np.float64)}
    keys = []
    for e in r.train_extra:
        keys += [k for k in e if k not in keys]
    for k in keys:
        vals = [e.get(k) for e in r.train_extra]
        if any(isinstance(v, list) for v in vals):
            out[k] = [v if isinstance(v, list) else [] for v in vals]
        else:
            out[k] = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
    out["val_step"] = np.array(r.val["val_step"], dtype=np.int64)
    out["val"] = np.array(r.val["val"], dtype=np.float64)
    extra_keys = []
    for e in r.val["_extra"]:
        extra_keys += [k for k in e if k not in extra_keys]
    out["val_extra"] = {k: [e.get(k) for e in r.val["_extra"]] for k in extra_keys}
    out["val_layers_step"] = np.array(r.vl["val_layers_step"], dtype=np.int64)
    out["val_layers"] = _rect(r.vl["val_layers"])
    out["hella_step"] = np.array(r.hs["hella_step"], dtype=np.int64)
    out["hella"] = np.array(r.hs["hella"], dtype=np.float64)

    # SIZE COMPARISON: keep blocks with the usual number of layers (a trailing partial block of a
    # run still writing, or a block cut by "..." in a pasted log, is dropped)
    blocks, bsteps = r.size["blocks"], r.size["size_step"]
    if blocks:
        lens = [len(b) for b in blocks]
        L = max(set(lens), key=lambda n: (lens.count(n), n))
        keep = [i for i, b in enumerate(blocks) if len(b) == L]
        blocks = [blocks[i] for i in keep]
        bsteps = [bsteps[i] for i in keep]
    arr = np.array([[[np.nan if v is None else v for v in row] for row in b] for b in blocks],
                   dtype=np.float64).reshape(len(blocks), len(blocks[0]) if blocks else 0, 3)
    out["size_step"] = np.array(bsteps, dtype=np.int64)
    out["size_prev"] = arr[:, :, 0]
    has_mid = bool(blocks) and not np.isnan(arr[:, :, 1]).all()
    out["size_mid"] = arr[:, :, 1] if has_mid else None
    out["size_next"] = arr[:, :, 2]
    return out


def _rect(rows):
    """List of equal-length lists -> (n, L) float array; rows of another length are dropped."""
    if not rows:
        return np.zeros((0, 0))
    lens = [len(r) for r in rows]
    L = max(set(lens), key=lambda n: (lens.count(n), n))
    return np.array([r for r in rows if len(r) == L], dtype=np.float64).reshape(-1, L)


def smooth_ema(y, smooth):
    """Exponential moving average s_t = smooth*s_{t-1} + (1-smooth)*y_t, s_0 = y_0; NaN/inf skipped."""
    y = np.asarray(y, dtype=np.float64)
    out = np.empty_like(y)
    s = None
    for i, v in enumerate(y):
        if math.isfinite(v):
            s = v if s is None else smooth * s + (1.0 - smooth) * v
        out[i] = np.nan if s is None else s
    return out


# ----------------------------------------------------------------------------- figures

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_png):
    """Write fig to out_png atomically (temp file in the same directory, then os.replace)."""
    d = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(out_png)}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, out_png)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _logs(logs):
    """Accept one path, a list of paths, or already-parsed dicts."""
    if isinstance(logs, (str, os.PathLike, dict)):
        logs = [logs]
    return [l if isinstance(l, dict) else parse_log(l) for l in logs]


def plot_loss(logs, out_png=None, smooth=0.9, title=None):
    """Train (raw, faint; EMA-smoothed, solid) and val (dashed, dots) loss of each run over steps.

    Lines carry gids "{run}:train-raw", "{run}:train", "{run}:val" (tests read them back).
    Returns the Figure (closed after saving when out_png is given).
    """
    plt = _plt()
    runs = _logs(logs)
    fig, ax = plt.subplots(figsize=(9, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(runs):
        c = colors[i % len(colors)]
        if len(r["step"]):
            raw, = ax.plot(r["step"], r["train"], color=c, alpha=0.2, lw=0.8)
            raw.set_gid(f"{r['name']}:train-raw")
            sm, = ax.plot(r["step"], smooth_ema(r["train"], smooth), color=c, lw=1.6,
                          label=f"{r['name']} train")
            sm.set_gid(f"{r['name']}:train")
        if len(r["val_step"]):
            v, = ax.plot(r["val_step"], r["val"], color=c, ls="--", marker="o", ms=3, lw=1.2,
                         label=f"{r['name']} val")
            v.set_gid(f"{r['name']}:val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or ("loss: " + ", ".join(r["name"] for r in runs)))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
        finite = np.concatenate([np.asarray(l.get_ydata(), dtype=float) for l in ax.lines])
        finite = finite[np.isfinite(finite)]
        if finite.size:  # clip the first steps' ~11 so the interesting part is visible
            lo, hi = finite.min(), np.percentile(finite, 99)
            ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    if out_png:
        _save(fig, out_png)
        plt.close(fig)
    return fig


def plot_layer_heatmap(log, out_png=None):
    """Per-layer val loss heat map: image (L, n_evals), row l = layer l+1, column = eval step.

    Uses the val-layers lines; raises ValueError when the log has none.
    """
    plt = _plt()
    r = _logs(log)[0]
    data = r["val_layers"]
    if data.size == 0:
        raise ValueError(f"{r['name']}: no per-layer val lines (`@ step val-layers [...]`)")
    steps = r["val_layers_step"][: data.shape[0]]
    fig, ax = plt.subplots(figsize=(9, 4))
    finite = data[np.isfinite(data)]
    vmax = float(np.percentile(finite, 95)) if finite.size else None  # step 0's ~ln(V) would wash it out
    im = ax.imshow(data.T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                   vmax=vmax, extent=(-0.5, data.shape[0] - 0.5, 0.5, data.shape[1] + 0.5))
    _step_ticks(ax, steps)
    _layer_ticks(ax, data.shape[1])
    ax.set_ylabel("layer")
    ax.set_title(f"{r['name']}: per-layer val loss")
    fig.colorbar(im, ax=ax, label="val loss")
    if out_png:
        _save(fig, out_png)
        plt.close(fig)
    return fig


def plot_exit_hist(log, out_png=None):
    """earlystopdict over steps: image (L, n_steps) of the fraction of tokens exiting at each layer.

    Raises ValueError when the log has no earlystopdict.
    """
    plt = _plt()
    r = _logs(log)[0]
    rows = r.get("earlystopdict") or []
    data = _rect([x for x in rows if x])
    if data.size == 0:
        raise ValueError(f"{r['name']}: no earlystopdict in the train lines")
    steps = np.array([s for s, x in zip(r["step"], rows) if x and len(x) == data.shape[1]])
    fig, ax = plt.subplots(figsize=(9, 4))
    im = ax.imshow(data.T, aspect="auto", origin="lower", cmap="magma", interpolation="nearest",
                   vmin=0.0, vmax=max(1e-9, float(np.nanmax(data))),
                   extent=(-0.5, data.shape[0] - 0.5, 0.5, data.shape[1] + 0.5))
    _step_ticks(ax, steps)
    _layer_ticks(ax, data.shape[1])
    ax.set_ylabel("exit layer")
    es = r.get("earlystop")
    mean_es = float(np.nanmean(es)) if isinstance(es, np.ndarray) and es.size else float("nan")
    ax.set_title(f"{r['name']}: earlystopdict (fraction of tokens exiting at each layer); "
                 f"mean earlystop {mean_es:.3f}")
    fig.colorbar(im, ax=ax, label="fraction")
    if out_png:
        _save(fig, out_png)
        plt.close(fig)
    return fig


def plot_residuals(log, out_png=None):
    """SIZE COMPARISON over steps, one line per layer (gid "prev:{l}", "mid:{l}", "next:{l}",
    l 1-based), one panel each for prev / mid (when logged) / next, log-scale y.

    Raises ValueError when the log has no SIZE COMPARISON lines.
    """
    plt = _plt()
    r = _logs(log)[0]
    if r["size_prev"].size == 0:
        raise ValueError(f"{r['name']}: no SIZE COMPARISON lines")
    panels = [("prev", r["size_prev"])]
    if r["size_mid"] is not None:
        panels.append(("mid", r["size_mid"]))
    panels.append(("next", r["size_next"]))
    L = r["size_prev"].shape[1]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, (kind, data) in zip(axes[0], panels):
        for l in range(L):
            line, = ax.plot(r["size_step"], data[:, l], color=cmap(l / max(1, L - 1)),
                            label=f"layer {l + 1}", marker="." if len(data) < 30 else None)
            line.set_gid(f"{kind}:{l + 1}")
        pos = data[np.isfinite(data) & (data > 0)]
        if pos.size and (kind != "next" or pos.max() > 10 * pos.min()):
            ax.set_yscale("log")  # blow-ups are obvious; a flat `next` (~1.0006) stays linear
        else:
            ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.set_title(f"{kind} std")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("std of residual stream (SIZE COMPARISON)")
    axes[0][-1].legend(fontsize=7, ncol=2 if L > 6 else 1)
    fig.suptitle(f"{r['name']}: residual size per layer")
    if out_png:
        _save(fig, out_png)
        plt.close(fig)
    return fig


def _layer_ticks(ax, L):
    ax.set_yticks(np.unique(np.linspace(1, L, min(L, 12)).round().astype(int)))


def _step_ticks(ax, steps):
    n = len(steps)
    idx = np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(int)) if n else []
    ax.set_xticks(idx)
    ax.set_xticklabels([str(steps[i]) for i in idx])
    ax.set_xlabel("step")


def plot_lr_find(lrs, losses, smooth, suggested, out_png):
    """train_gpt2.py --lr_find: loss and smoothed loss over the learning rate (log x), the
    suggested LR as a dashed line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smooth, label="smoothed")
    ax.axvline(suggested, color="r", ls="--", label=f"suggested {suggested:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out_png)
    plt.close(fig)


KINDS = {"layers": (plot_layer_heatmap, "-layers"), "exits": (plot_exit_hist, "-exits"),
         "residuals": (plot_residuals, "-residuals")}


def plot_all(paths, out_dir="img", kind="all", smooth=0.9, name=None):
    """Write the requested figures; returns (written paths, skip messages)."""
    runs = _logs(paths)
    written, skipped = [], []
    if kind in ("all", "loss"):
        stem = name or "+".join(r["name"] for r in runs)
        out = os.path.join(out_dir, stem + ".png")
        if not any(len(r["step"]) or len(r["val_step"]) for r in runs):
            skipped.append(f"loss: no train/val lines in {', '.join(r['name'] for r in runs)}")
        else:
            plot_loss(runs, out, smooth=smooth)
            written.append(out)
    for k, (fn, suffix) in KINDS.items():
        if kind not in ("all", k):
            continue
        for r in runs:
            out = os.path.join(out_dir, r["name"] + suffix + ".png")
            try:
                fn(r, out)
                written.append(out)
            except ValueError as e:
                skipped.append(f"{k}: {e}")
    return written, skipped


def plot_run(txt_path, out_dir):
    """The trainer's end of run: plot_all on its log -> notes ("plot written: ...", "plot
    skipped: ..."); never raises."""
    try:
        written, skipped = plot_all([txt_path], out_dir)
    except Exception as e:
        return [f"plot skipped ({type(e).__name__}: {e})"]
    return [f"plot written: {w}" for w in written] + [f"plot skipped: {w}" for w in skipped]


def parse_args(argv=None):
    """Parsed arguments; bad values and paths exit 2 with one error line, before any work."""
    p = cli.Parser(prog="plot.py", description="Plot training logs (log/*.txt) into img/.")
    p.add_argument("logs", nargs="+", help="log/{run_name}.txt files")
    p.add_argument("--out", default="img", help="output directory")
    p.add_argument("--kind", default="all", choices=["all", "loss"] + list(KINDS), help="which figures")
    p.add_argument("--smooth", type=cli.float_arg(0, 1, hi_open=True), default=0.9,
                   help="EMA factor for train loss in [0, 1)")
    p.add_argument("--name", default=None, help="file stem of the loss figure (None: the run names joined by +)")
    args = p.parse_args(argv)
    try:
        for path in args.logs:
            cli.check_input_file(path, "log file")
        stem = args.name if args.name is not None else \
            "+".join(os.path.splitext(os.path.basename(l))[0] for l in args.logs)
        if not stem or "/" in stem or os.sep in stem or "\0" in stem:
            raise cli.UsageError(f"--name {args.name!r} must be a plain file name")
        if len(os.fsencode(stem)) > 250:
            raise cli.UsageError(f"the loss figure's name ({len(stem)} characters) is too long for a "
                                 f"file name; give one with --name")
        for path in args.logs:
            if len(os.fsencode(os.path.basename(path))) > 236:      # + "-residuals.png"
                raise cli.UsageError(f"log file name too long for its figures' names: {path}")
        cli.check_output(args.out, "--out", is_dir=True)
    except cli.UsageError as e:
        cli.fail(e)
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        written, skipped = plot_all(args.logs, args.out, args.kind, args.smooth, args.name)
    except OSError as e:
        cli.fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    for s in skipped:
        print(f"skip {s}")
    for w in written:
        print(f"wrote {w}")
    if not written:
        print("error: nothing to plot (see skip lines above)", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
