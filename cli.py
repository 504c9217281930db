"""Command-line plumbing shared by the scripts: bad input is one `error: ...` line and exit 2.

`Parser` is argparse with one-line errors and defaults in --help; the `*_arg` functions are
argparse `type=`s that refuse out-of-range values at parse time; `check_output`,
`check_input_file` and `check_device` refuse paths and devices before any work starts, so a bad
command leaves no file behind.
"""
import argparse
import math
import os
import sys


class UsageError(ValueError):
    """Bad command-line input: the script prints `error: <message>` and exits 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and appends "(default: X)" to every option's help."""


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one line on stderr, exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        fail(f"{message} (see python {self.prog} --help)")


def fail(message, code=2):
    """Print the one error line and exit (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def doc_head(doc):
    """A module docstring's first paragraph (the --help description)."""
    return doc.split("\n\n")[0]


# ----------------------------------------------------------------------------- argument types

def int_arg(lo=None, hi=None):
    """argparse type: an int in [lo, hi] (either bound optional)."""
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {_range(lo, hi)}, got {s}")
        return v
    parse.__name__ = "int"
    return parse


def float_arg(lo=None, hi=None, hi_open=False):
    """argparse type: a finite float in [lo, hi] ([lo, hi) with hi_open)."""
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v) or (lo is not None and v < lo) or \
                (hi is not None and (v >= hi if hi_open else v > hi)):
            raise argparse.ArgumentTypeError(f"must be a finite number {_range(lo, hi, hi_open)}, got {s}")
        return v
    parse.__name__ = "float"
    return parse


def _range(lo, hi, hi_open=False):
    if hi is None:
        return f">= {lo}"
    if lo is None:
        return f"<= {hi}"
    return f"in [{lo}, {hi}{')' if hi_open else ']'}"


# ----------------------------------------------------------------------------- paths, devices

def _path_problem(path):
    """Why a path cannot name a file at all (NUL byte, too long), or None."""
    if "\0" in str(path):
        return "contains a NUL byte"
    try:
        os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (36, 40):                 # ENAMETOOLONG, ELOOP
            return e.strerror.lower()
    return None


def check_output(path, flag, is_dir=False):
    """Raise UsageError unless `path` (a file, or with is_dir a directory) can be written:
    an existing one must be of that kind and writable, a new one's nearest existing ancestor
    must be a writable directory. Creates nothing."""
    why = _path_problem(path)
    if why:
        raise UsageError(f"{flag} {str(path)!r}: {why}")
    p = os.path.abspath(path)
    if os.path.exists(p):
        if is_dir and not os.path.isdir(p):
            raise UsageError(f"{flag} {path}: exists and is not a directory")
        if not is_dir and os.path.isdir(p):
            raise UsageError(f"{flag} {path}: is a directory")
        if not os.access(p, os.W_OK | (os.X_OK if is_dir else 0)):
            raise UsageError(f"{flag} {path}: not writable")
        return
    parent = os.path.dirname(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot create it, {parent} is not writable")


def check_input_file(path, flag):
    """Raise UsageError unless `path` is a readable regular file."""
    why = _path_problem(path)
    if why:
        raise UsageError(f"{flag} {str(path)!r}: {why}")
    if not os.path.exists(path):
        raise UsageError(f"{flag} {path}: no such file")
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{flag} {path}: not readable")


def check_device(name, flag="--device"):
    """torch.device for a device name this torch build and machine have ("auto": cuda if
    available, else mps, else cpu); UsageError otherwise."""
    import torch
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"{flag} {name!r} is not a device ({str(e).splitlines()[0][:120]})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {name}: CUDA is not available in this torch build / machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"{flag} {name}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise UsageError(f"{flag} {name}: device type {dev.type!r} is not supported (cpu, cuda, mps)")
    return dev


# ----------------------------------------------------------------------------- constants --help

def constants_help(path, defaults, usage, description="", fields_path=None, fields_title="other"):
    """--help for a script configured by module constants (nanoGPT style), generated from its
    source: every constant in `defaults` as `--name=default` with its trailing comment (and the
    indented comment lines under it), grouped under the section comments above them. Keys of
    `defaults` that are not constants there are listed under `fields_title`, with the comments
    of the dataclass fields of that name in `fields_path`."""
    import io
    import tokenize
    with open(path, encoding="utf-8") as f:
        src = f.read()
    rows, section, last = [], None, None      # rows: (section, name, [comment parts])
    pending_name = None
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        kind, text, (line, col) = tok.type, tok.string, tok.start
        if kind == tokenize.NAME and col == 0:
            pending_name = text if text in defaults else None
        elif kind == tokenize.OP and text == "=" and pending_name:
            rows.append((section, pending_name, []))
            last, pending_name = rows[-1], None
        elif kind == tokenize.COMMENT:
            body = text.lstrip("#").strip()
            if last is not None and last[2] is not None and tok.line.strip() != text:
                last[2].append(body)                          # trailing comment of a constant
            elif last is not None and col > 0 and tok.line.strip() == text:
                last[2].append(body)                          # indented continuation line
            elif col == 0:
                section, last = body, None                    # a section heading
        elif kind == tokenize.NEWLINE:
            pending_name = None
        elif kind == tokenize.NL and last is not None and tok.line.strip() == "":
            last = None                                       # a blank line ends a comment
    seen, out = set(), [usage, ""]
    if description:
        out.append(description)
    current = object()
    width = min(max([len(_opt(n, defaults[n])) for _, n, _ in rows] + [0]), 36)
    for sec, name, comment in rows:
        if name in seen:
            continue
        seen.add(name)
        if sec != current:
            out += ["", f"{sec}:" if sec else "constants:"]
            current = sec
        opt = _opt(name, defaults[name])
        text = " ".join(comment)
        out.append(f"  {opt:<{width}}  {text}".rstrip() if len(opt) <= width
                   else f"  {opt}\n  {'':<{width}}  {text}".rstrip())
    missing = [n for n in defaults if n not in seen]
    if missing:
        notes = _field_comments(fields_path) if fields_path else {}
        out += ["", fields_title + ":"]
        for n in missing:
            opt = _opt(n, defaults[n])
            out.append(f"  {opt:<{width}}  {notes.get(n, '')}".rstrip())
    return "\n".join(out) + "\n"


def _opt(name, value):
    return f"--{name}={value}" if isinstance(value, str) else f"--{name}={value!r}"


def _field_comments(path):
    """{field: comment} of the annotated class fields (`    name: type = value  # comment`,
    indented comment lines under it appended) in a source file."""
    import re
    out, last = {}, None
    field = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+=[^#]*#\s*(.*)$")
    more = re.compile(r"^\s+#\s*(.*)$")
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = field.match(line)
            if m:
                last = m.group(1)
                out[last] = m.group(2).strip()
            elif last and more.match(line):
                out[last] += " " + more.match(line).group(1).strip()
            else:
                last = None
    return out
