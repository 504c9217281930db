"""Hyper-parameter sweeps: a grid of train_gpt2.py runs and seed 002's tables of final losses.

    python sweep.py config/sweeps/pe_size_cpu.py                 # runs one after another
    python sweep.py config/sweeps/002_pe_size.py --gpus 0,1,2,3  # one run per GPU, in parallel
    python sweep.py config/sweeps/pe_size_cpu.py --table-only    # just rewrite the table

A sweep file is Python that sets
    GRID   = {"pos_encoding": ["learned", "sinusoidal", "rope"], "n_embd": [384, 768], ...}
    BASE   = {"max_steps": 100, ...}          # overrides applied to every run (optional)
    PRESET = "config/shakespeare_char.py"     # config file passed to the trainer (optional)
    NAME   = "pe_size_cpu"                    # (optional; default: the file name)
Every combination of GRID is one run named `{NAME}-{values}` (e.g. pe_size_cpu-rope-e64-h2-l2),
launched as `python train_gpt2.py PRESET --k=v ... --run_name=...`; its stdout/stderr go to
log/sweeps/{NAME}/{run}.out. A run is skipped when it finished before: the sweep's own marker
log/sweeps/{NAME}/{run}.done exists, the run's log has train_gpt2.py's end line (`# done: ...`)
after its last start line, or the log reached its last step (train line of step max_steps-1 and
a val line at or after it). A run whose recorded arguments (in the marker, or the log's
`# command:` line) differ from what the sweep would pass now (BASE or PRESET edited) runs again.

The table, log/sweeps/{NAME}.md, has seed 002's layout: all runs by val loss and by train loss,
then per grid key the runs grouped by the other keys (groups separated by a `|---|` row),
sorted by val and by train. Final/val_loss is the last val line; Final/train_loss the mean of
the last `--train-window` logged train losses (seed 002 estimated it on train batches).

`--preset_scale` is forwarded to the trainer, which shrinks each run with
configurator.scale_preset.
"""
import itertools
import json
import os
import shlex
import subprocess
import sys
import time

import cli
import fineweb

ROOT = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------- sweep definition

_ABBREV = {"pos_encoding": "", "block_type": "", "exit_loss": "", "n_embd": "e", "n_head": "h",
           "n_layer": "l", "block_size": "bs", "max_lr": "lr", "dropout": "do"}


def load_sweep(path):
    """Exec a sweep file -> dict(name, grid, base, preset)."""
    if not os.path.isfile(path):
        raise ValueError(f"no such sweep file: {path}")
    ns = {}
    try:
        with open(path) as f:
            exec(compile(f.read(), path, "exec"), ns)
    except SyntaxError as e:
        raise ValueError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        raise ValueError(f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    grid = ns.get("GRID")
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, (list, tuple)) and v for v in grid.values()):
        raise ValueError(f"{path}: GRID must be a non-empty dict of non-empty lists")
    base = ns.get("BASE", {})
    if not isinstance(base, dict):
        raise ValueError(f"{path}: BASE must be a dict")
    both = sorted(set(base) & set(grid))
    if both:
        raise ValueError(f"{path}: keys both in BASE and GRID: {', '.join(both)}")
    name = ns.get("NAME") or os.path.splitext(os.path.basename(path))[0]
    if not isinstance(name, str) or "/" in name or name in (".", ".."):
        raise ValueError(f"{path}: NAME must be a plain file name, got {name!r}")
    keys = [k for k in list(grid) + list(base) if not isinstance(k, str) or not k.isidentifier()]
    if keys:
        raise ValueError(f"{path}: GRID/BASE keys must be trainer constant names, got {keys[0]!r}")
    preset = ns.get("PRESET")
    if preset and not os.path.isabs(preset) and not os.path.isfile(preset):
        preset = os.path.join(ROOT, preset)  # config/... relative to the repository
    return {"name": name, "grid": dict(grid), "base": dict(base), "preset": preset}


def _fmt(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def run_name(sweep_name, params):
    """'pe_size_cpu' + {pos_encoding: rope, n_embd: 64} -> 'pe_size_cpu-rope-e64'."""
    parts = []
    for k, v in params.items():
        p = _ABBREV.get(k, "".join(c for c in k if c.isalnum()))
        parts.append(f"{p}{_fmt(v)}")
    return "-".join([sweep_name] + parts).replace("/", "_").replace(" ", "")


def expand(sweep):
    """List of (run_name, params dict in GRID key order), GRID order (last key fastest)."""
    keys = list(sweep["grid"])
    runs = []
    for values in itertools.product(*(sweep["grid"][k] for k in keys)):
        params = dict(zip(keys, values))
        runs.append((run_name(sweep["name"], params), params))
    return runs


def _arg(k, v):
    return f"--{k}={v}" if isinstance(v, str) else f"--{k}={v!r}"


def command(sweep, name, params, trainer, python, extra=()):
    cmd = [python, trainer]
    if sweep["preset"]:
        cmd.append(sweep["preset"])
    for k, v in list(sweep["base"].items()) + list(params.items()):
        cmd.append(_arg(k, v))
    cmd.append(f"--run_name={name}")
    cmd += list(extra)
    return cmd


# ----------------------------------------------------------------------------- results

def _parse(path):
    from plot import parse_log
    return parse_log(path)


def _max_steps(sweep, log_path):
    """max_steps of a run: the sweep's BASE, else the resolved config in the log header, else None."""
    if "max_steps" in sweep["base"]:
        return int(sweep["base"]["max_steps"])
    if "max_steps" in sweep["grid"]:
        return None
    try:
        with open(log_path) as f:
            for _, line in zip(range(200), f):
                for tag in ('"max_steps": ', "max_steps: ", "max_steps="):
                    i = line.find(tag)
                    if i >= 0:
                        num = "".join(itertools.takewhile(str.isdigit, line[i + len(tag):]))
                        if num:
                            return int(num)
    except OSError:
        pass
    return None


def _log_state(log_path):
    """(done, args): whether the trainer's end line (`# done: ...`) follows the last start line,
    and the arguments of the last `# command: train_gpt2.py ...` header line (None if absent)."""
    done, args = False, None
    with open(log_path, errors="replace") as f:
        for line in f:
            if line.startswith("# done:"):
                done = True
            elif line.startswith("# ==== run "):  # a later (resumed) invocation started
                done = False
            elif line.startswith("# command: "):
                try:
                    args = shlex.split(line[len("# command: "):])[1:]
                except ValueError:
                    args = None
    return done, args


def finished(log_dir, sweep, name, max_steps=None, args=None):
    """True if the sweep marked the run done, the trainer's log says `# done`, or the log reached
    step max_steps-1 with a val line. With `args` (the trainer arguments this sweep would pass
    now), a run recorded with other arguments (BASE or PRESET edited since) is not finished."""
    marker = os.path.join(log_dir, "sweeps", sweep["name"], name + ".done")
    if os.path.isfile(marker):
        if args is None:
            return True
        try:
            with open(marker) as f:
                if json.load(f).get("args") == list(args):
                    return True
        except (OSError, ValueError, AttributeError):
            pass
    log_path = os.path.join(log_dir, name + ".txt")
    if not os.path.isfile(log_path):
        return False
    done, logged_args = _log_state(log_path)
    if args is not None and logged_args is not None and logged_args != list(args):
        return False
    if done:
        return True
    max_steps = max_steps or _max_steps(sweep, log_path)
    if not max_steps:
        return False
    r = _parse(log_path)
    last = max_steps - 1
    return (len(r["step"]) > 0 and r["step"][-1] >= last and len(r["val_step"]) > 0
            and r["val_step"][-1] >= last)


def result(log_dir, name, train_window=10):
    """dict(train=..., val=..., step=...) from log/{name}.txt, or None when it has no val line."""
    path = os.path.join(log_dir, name + ".txt")
    if not os.path.isfile(path):
        return None
    r = _parse(path)
    if not len(r["val"]) or not len(r["train"]):
        return None
    tr = r["train"][-train_window:]
    return {"train": float(sum(tr) / len(tr)), "val": float(r["val"][-1]), "step": int(r["step"][-1])}


# ----------------------------------------------------------------------------- tables

def _table(header, rows, groups=None):
    """Markdown table; `groups` (list of row lists) inserts seed 002's |---| rows between groups."""
    widths = [len(h) for h in header]
    cells = [[str(c) for c in r] for r in (rows if groups is None else [r for g in groups for r in g])]
    for r in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]

    numeric = [bool(cells) and all(_isnum(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(c.rjust(w) if num and c not in header else c.ljust(w)
                                 for c, w, num in zip(r, widths, numeric)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [line(header), sep]
    if groups is None:
        out += [line(r) for r in cells]
    else:
        for gi, g in enumerate(groups):
            if gi:
                out.append(sep)
            out += [line([str(c) for c in r]) for r in g]
    return "\n".join(out)


def _isnum(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def _loss(x):
    return f"{x:.6g}"


def build_table(name, grid, results):
    """Markdown of a sweep. results: list of dict(run, params, train, val) (finished runs);
    grid: GRID dict (its key order is the column order)."""
    keys = list(grid)
    varied = [k for k in keys if len(grid[k]) > 1]
    md = [f"# sweep {name}", "",
          f"{len(results)} runs; grid: " + ", ".join(f"{k} = {list(grid[k])}" for k in keys), ""]
    if not results:
        return "\n".join(md + ["(no finished runs)", ""])

    def row(r, cols, metrics):
        return [_fmt(r["params"][k]) for k in cols] + [_loss(r[m]) for m in metrics]

    for metric in ("val", "train"):
        md += [f"## all runs by Final/{metric}_loss", ""]
        rs = sorted(results, key=lambda r: (r[metric], r["run"]))
        md += [_table(["Experiment"] + keys + ["Final/train_loss", "Final/val_loss"],
                      [[r["run"]] + row(r, keys, ("train", "val")) for r in rs]), ""]
    for k in varied:
        others = [o for o in keys if o != k]
        cols = others + [k]
        md += [f"## {k}", ""]
        for metric in ("val", "train"):
            by = {}
            for r in results:
                by.setdefault(tuple(r["params"][o] for o in others), []).append(r)
            groups = [sorted(g, key=lambda r: (r[metric], r["run"])) for g in by.values()]
            groups.sort(key=lambda g: (g[0][metric], g[0]["run"]))
            md += [f"{k}, grouped by {', '.join(others) or '-'}, sorted by Final/{metric}_loss:", ""]
            md += [_table(cols + ["Final/train_loss", "Final/val_loss"], None,
                          [[row(r, cols, ("train", "val")) for r in g] for g in groups]), ""]
    return "\n".join(md)


def _args(sweep, name, params, extra=()):
    """The trainer arguments of a run (its command without python and the trainer path)."""
    return command(sweep, name, params, "train_gpt2.py", "python", extra)[2:]


def collect(sweep, log_dir, train_window=10, extra=()):
    """(finished results, list of (run, status) for the others)."""
    done, missing = [], []
    for name, params in expand(sweep):
        fin = finished(log_dir, sweep, name, args=_args(sweep, name, params, extra))
        res = result(log_dir, name, train_window) if fin else None
        if res is None:
            path = os.path.join(log_dir, name + ".txt")
            missing.append((name, "partial" if os.path.isfile(path) else "not run"))
        else:
            done.append(dict(run=name, params=params, **res))
    return done, missing


def write_table(sweep, log_dir, train_window=10, extra=()):
    done, missing = collect(sweep, log_dir, train_window, extra)
    md = build_table(sweep["name"], sweep["grid"], done)
    if missing:
        md += "\n## not finished\n\n" + "\n".join(f"- {n}: {s}" for n, s in missing) + "\n"
    out = os.path.join(log_dir, "sweeps", sweep["name"] + ".md")
    fineweb.write_text_atomic(out, md)
    return out, done, missing


# ----------------------------------------------------------------------------- running

def run_sweep(sweep, log_dir="log", trainer=None, python=None, gpus=None, extra=(), dry_run=False,
              cwd=None, echo=print):
    """Launch every unfinished run (sequentially, or one per GPU in `gpus`); returns
    {run: returncode or "skipped"}."""
    trainer = trainer or os.path.join(ROOT, "train_gpt2.py")
    python = python or sys.executable
    out_dir = os.path.join(log_dir, "sweeps", sweep["name"])
    todo, status = [], {}
    for name, params in expand(sweep):
        if finished(log_dir, sweep, name, args=_args(sweep, name, params, extra)):
            status[name] = "skipped"
            echo(f"skip {name} (finished)")
        else:
            todo.append((name, command(sweep, name, params, trainer, python, extra)))
    if dry_run:
        for name, cmd in todo:
            echo(" ".join(cmd))
        return status
    os.makedirs(out_dir, exist_ok=True)
    slots = list(gpus) if gpus else [None]
    running = {}  # slot -> (name, Popen, file, cmd)
    queue = list(todo)
    while queue or running:
        for slot in slots:
            if slot not in running and queue:
                name, cmd = queue.pop(0)
                env = dict(os.environ)
                if slot is not None:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot)
                f = open(os.path.join(out_dir, name + ".out"), "w")
                echo(f"start {name}" + (f" on GPU {slot}" if slot is not None else ""))
                running[slot] = (name, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                                        env=env, cwd=cwd), f, cmd)
        for slot, (name, p, f, cmd) in list(running.items()):
            rc = p.poll()
            if rc is None:
                continue
            f.close()
            del running[slot]
            status[name] = rc
            if rc == 0:
                fineweb.write_text_atomic(os.path.join(out_dir, name + ".done"),
                             json.dumps({"run": name, "args": cmd[2:], "finished": time.time()}) + "\n")
                echo(f"done {name}")
            else:
                echo(f"FAILED {name} (exit {rc}; see {os.path.join(out_dir, name + '.out')})")
        if running:
            time.sleep(0.5)
    return status


def parse_args(argv=None):
    """Parsed arguments (+ the loaded sweep); bad values and paths exit 2 with one error line."""
    p = cli.Parser(prog="sweep.py", description="Run a grid of train_gpt2.py runs and tabulate final losses.")
    p.add_argument("sweep", help="sweep file (GRID, BASE, PRESET, NAME), e.g. config/sweeps/pe_size_cpu.py")
    p.add_argument("--gpus", default=None, help="comma-separated GPU ids: one run per GPU in parallel "
                                                "(None: runs one after another)")
    p.add_argument("--log-dir", default="log", help="where the trainer logs and the table go")
    p.add_argument("--trainer", default=os.path.join(ROOT, "train_gpt2.py"), help="trainer script")
    p.add_argument("--preset_scale", default=None, choices=["none", "cpu", "tiny"],
                   help="forwarded to the trainer")
    p.add_argument("--train-window", type=cli.int_arg(1), default=10,
                   help="train lines averaged for Final/train_loss")
    p.add_argument("--table-only", action="store_true", help="only (re)write the table")
    p.add_argument("--dry-run", action="store_true", help="print the commands of unfinished runs")
    args = p.parse_args(argv)
    try:
        cli.check_input_file(args.sweep, "sweep file")
        args.sweep_def = load_sweep(args.sweep)
        args.gpu_list = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
        if args.gpus is not None and not args.gpu_list:
            raise ValueError("--gpus needs at least one id")
        if args.gpu_list and len(set(args.gpu_list)) != len(args.gpu_list):
            raise ValueError(f"--gpus lists an id twice: {args.gpus}")
        if not args.table_only:
            cli.check_input_file(args.trainer, "--trainer")
        if args.sweep_def["preset"] and not os.path.isfile(args.sweep_def["preset"]):
            raise ValueError(f"PRESET {args.sweep_def['preset']} does not exist")
        if not args.dry_run:
            cli.check_output(args.log_dir, "--log-dir", is_dir=True)
    except ValueError as e:
        cli.fail(e)
    return args


def main(argv=None):
    args = parse_args(argv)
    sweep, gpus = args.sweep_def, args.gpu_list
    extra = [f"--preset_scale={args.preset_scale}"] if args.preset_scale else []
    if os.path.normpath(args.log_dir) != "log":      # the trainer logs where the table looks
        extra += [f"--log_dir={args.log_dir}", f"--img_dir={os.path.join(args.log_dir, 'img')}"]
    failed = []
    if not args.table_only:
        status = run_sweep(sweep, args.log_dir, args.trainer, gpus=gpus, extra=extra, dry_run=args.dry_run)
        failed = [n for n, s in status.items() if s not in ("skipped", 0)]
        if args.dry_run:
            return
    out, done, missing = write_table(sweep, args.log_dir, args.train_window, extra)
    print(f"wrote {out} ({len(done)} finished, {len(missing)} not)")
    if failed:
        print(f"error: {len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
