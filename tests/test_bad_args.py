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

from conftest import make_char_dataset

import bench
import eval_exit
import fineweb
import hellaswag
import plot
import sweep

SCRIPTS = {"fineweb": fineweb.main, "eval_exit": eval_exit.main, "hellaswag": hellaswag.main,
           "plot": plot.main, "sweep": sweep.main, "bench": bench.main}

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
    (EV, ["--decode-tokens", "many"], "argument --decode-tokens: expected an integer"),
    (EV, ["--out", UNDER_FILE], "--out {afile}/sub: {afile} is a file, not a directory"),
    (EV, ["--out", READ_ONLY], "--out {ro}/sub: cannot create it, {ro} is not writable"),
    (EV, ["--out", "{data}"], "--out {data}: is a directory"),
    (EV, ["--img-dir", UNDER_FILE], "--img-dir {afile}/sub: {afile} is a file, not a directory"),
    (EV, ["--img-dir", READ_ONLY], "--img-dir {ro}/sub: cannot create it, {ro} is not writable"),
    (EV, ["--device", "tpu"], "--device 'tpu' is not a device"),
    (EV, ["--device", "cuda:99"], "--device cuda:99: "),
    (EV, ["--device", "meta"], "--device meta: device type 'meta' is not supported"),
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
] + [(BE, [f"--{k}", v], f"argument --{k}: " + ("must be in [1, 1048576]" if v != "x" else
                                                 "expected an integer, got 'x'"))
     for k in bench.FULL_SHAPE for v in ("0", "x", str(1 << 30))]

MATRIX = {"fineweb": FINEWEB_CASES, "eval_exit": EVAL_CASES, "hellaswag": HELLASWAG_CASES,
          "plot": PLOT_CASES, "sweep": SWEEP_CASES, "bench": BENCH_CASES}


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
    used |= {a for base, _, _ in MATRIX[script] for a in base if a.startswith("--")} & \
        {a for _, args, m in MATRIX[script] for a in args}
    assert options <= used, f"options without a bad-input case: {sorted(options - used)}"
    assert "(default: " in text
