"""Data preparation: a text corpus -> uint16 token shards (.npy) + a manifest (meta.json).

    python fineweb.py                                   # FineWeb-Edu sample-10BT -> data/edu_fineweb10B
    python fineweb.py --source builtin --out data/builtin   # embedded default corpus, no download
    python fineweb.py --source input.txt --tokenizer char   # char-level (seed 002/004 Shakespeare)

Default run (as build-nanogpt users expect): FineWeb-Edu `sample-10BT` through
`datasets.load_dataset`, GPT-2 tokens with `<|endoftext|>` (50256) *before* every document,
shards of 100M tokens, the first shard is val, tokenised by a process pool behind a tqdm bar.

Sources (`--source`):
  (none)        HuggingFaceFW/fineweb-edu, config sample-10BT, split train (`--streaming` streams)
  builtin       the embedded default corpus: the text of every `pydoc_data.topics` topic plus the
                standard library's .py sources (no tests, no site-packages), one document each,
                listed in sorted order then put in a fixed seeded shuffle (so val is a fair sample),
                capped at `--max-chars` characters (default 12M chars ~ 4M GPT-2 tokens)
  a path        a .txt file (one document; `--txt-split-lines`: one per line), a .jsonl/.json or
                .parquet file (`datasets` json/parquet loaders, column `--text-column`), or a
                directory of such files (recursively, sorted)
  anything else a Hugging Face dataset name (`--name` config, `--split`)

Splits: `--val-fraction F` puts the first F of all tokens in val shards (needs the token count:
one extra tokenisation pass unless the corpus fits in memory); `--val-fraction 0` makes the first
shard val. Default: 0 for Hugging Face datasets, 0.1 for builtin and local files.
`--val-position last` puts the last F in val instead: train = the first int(n * (1 - F)) tokens,
val the rest, nanoGPT's shakespeare_char split (`data[:int(n*0.9)]`, `data[int(n*0.9):]`).

Output (`--out`): shards `{prefix}_{split}_{i:06d}.npy` (1-D uint16, np.save format) and
`meta.json` = {source, tokenizer, vocab_size, eot, dtype, [chars], shards: [{file, split, tokens,
sha256, end}], complete, n_documents, n_tokens, build}. Each shard is written to a temp file and
renamed, then the manifest is rewritten atomically (complete=false until the end). Rerunning an
interrupted command resumes after the last finished shard (sha256-verified; `end` = [document
index, tokens of that document already used]); rerunning a finished one is a no-op.

`read_manifest(dir)` validates a finished directory for the trainer; `load_tokens(path)` memmaps
a shard.
"""
import errno
import hashlib
import json
import multiprocessing as mp
import os
import random
import sys
import time
from collections import deque

import numpy as np

import cli

ROOT = os.path.dirname(os.path.abspath(__file__))
MANIFEST = "meta.json"
FINEWEB = ("HuggingFaceFW/fineweb-edu", "sample-10BT")
DEFAULT_SHARD_SIZE = 100_000_000   # tokens per shard (build-nanogpt)
BUILTIN_MAX_CHARS = 12_000_000     # builtin corpus cap: ~4M GPT-2 tokens, builds in seconds
BUILTIN_SEED = 1337                # fixed shuffle of the builtin documents
LOCAL_EXTS = (".txt", ".jsonl", ".json", ".parquet")
UINT16_IDS = 1 << 16               # a vocabulary must have at most this many ids
BATCH_CHARS = 1 << 20              # characters per tokenisation task sent to a worker
CACHE_TOKENS = 64_000_000          # counting pass keeps the tokens when the corpus is at most this big
TOKENIZERS = ("gpt2", "char")
MAX_SHARD_SIZE = 1 << 32           # --shard-size cap (an 8 GiB uint16 buffer)
MAX_PROCS = 256                    # --procs cap


class DataError(ValueError):
    """Bad data input: one-line message naming the problem and the path."""


class SourceReadError(Exception):
    """Reading the source failed mid-way (network, I/O): finished shards are kept for a resume."""


# ----------------------------------------------------------------------------- reading (trainer)

def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_tokens(path):
    """A shard as a read-only uint16 memmap of shape (n_tokens,)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"shard file missing: {path}") from None
    except Exception as e:
        raise DataError(f"shard unreadable or truncated: {path} ({type(e).__name__}: {e})") from None
    if arr.dtype != np.uint16 or arr.ndim != 1:
        raise DataError(f"shard is not a 1-D uint16 array (dtype {arr.dtype}, shape {arr.shape}): {path}")
    return arr


def _load_meta(path):
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"manifest is not valid JSON: {path} ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("shards"), list):
        raise DataError(f"manifest has no shard list: {path}")
    return meta


def model_vocab_size(meta):
    """vocab_size a model for this data gets when none is set. GPT-2 BPE: 50257 padded up to a
    multiple of 64 (50304, nanoGPT's faster embedding/head matmuls; the padded rows are never
    targets). Char: the manifest's size exactly, as nanoGPT's meta.pkl: the head is a negligible
    share of the FLOPs at that size, and every row is a real symbol, so the initial loss is ln V
    and no probability goes to ids the tokenizer cannot decode."""
    n = int(meta["vocab_size"])
    return -(-n // 64) * 64 if meta["tokenizer"] == "gpt2" else n


def read_manifest(data_dir, check_sha=False):
    """Validated manifest of a finished data directory (dict as in meta.json, plus "data_dir").

    Raises DataError for a missing directory/manifest, an incomplete build, a missing or truncated
    shard, a token count mismatch, (check_sha) a sha256 mismatch or a token id >= vocab_size, and
    a missing val or train split.
    """
    data_dir = os.path.abspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"data directory does not exist: {data_dir} (build it with fineweb.py)")
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        raise DataError(f"no manifest {MANIFEST} in {data_dir} (build it with fineweb.py)")
    meta = _load_meta(path)
    for key in ("tokenizer", "vocab_size", "dtype"):
        if key not in meta:
            raise DataError(f"manifest lacks {key!r}: {path}")
    if meta["dtype"] != "uint16":
        raise DataError(f"manifest dtype {meta['dtype']!r} is not uint16: {path}")
    if meta["tokenizer"] == "char" and not isinstance(meta.get("chars"), str):
        raise DataError(f"char manifest lacks its vocabulary 'chars': {path}")
    if not meta.get("complete"):
        raise DataError(f"data build is incomplete (interrupted?): {path}; "
                        f"rerun the same fineweb.py command to finish it")
    splits = set()
    for s in meta["shards"]:
        try:
            fname, split, n, sha = s["file"], s["split"], int(s["tokens"]), s["sha256"]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"manifest shard entry malformed ({s!r}): {path}") from None
        spath = os.path.join(data_dir, fname)
        if not os.path.isfile(spath):
            raise DataError(f"shard file missing: {spath}")
        arr = load_tokens(spath)
        if arr.shape[0] != n:
            raise DataError(f"shard has {arr.shape[0]} tokens, manifest says {n}: {spath}")
        if check_sha:
            if _sha256_file(spath) != sha:
                raise DataError(f"shard sha256 mismatch (file changed or corrupted): {spath}")
            top = int(arr.max()) if n else 0
            if top >= int(meta["vocab_size"]):
                raise DataError(f"shard holds token id {top} >= manifest vocab_size "
                                f"{meta['vocab_size']}: {spath}")
        splits.add(split)
    for need in ("val", "train"):
        if need not in splits:
            raise DataError(f"manifest lists no {need} shard: {path}")
    meta["data_dir"] = data_dir
    return meta


def vocabulary_mismatch(meta, tokenizer):
    """Why data with manifest `meta` cannot feed a model trained with `tokenizer` (a checkpoint's
    {"name", "chars", "vocab_size"}), or None: another tokenizer, other characters behind the
    ids of a char vocabulary, or another vocabulary size."""
    if not tokenizer:
        return None
    name = tokenizer.get("name")
    if name is not None and name != meta["tokenizer"]:
        return f"tokenizer {meta['tokenizer']!r}, the checkpoint's is {name!r}"
    chars = tokenizer.get("chars")
    if meta["tokenizer"] == "char" and chars is not None and chars != meta.get("chars"):
        diff = next((i for i, (a, b) in enumerate(zip(chars, meta.get("chars") or "")) if a != b),
                    min(len(chars), len(meta.get("chars") or "")))
        return (f"another char vocabulary ({len(meta.get('chars') or '')} characters, the "
                f"checkpoint's {len(chars)}; they differ from id {diff} on)")
    size = tokenizer.get("vocab_size")
    if size is not None and int(size) != int(meta["vocab_size"]):
        return f"vocab_size {meta['vocab_size']}, the checkpoint's data had {size}"
    return None


def shard_paths(meta, split):
    """Absolute paths of a read_manifest() result's shards of one split, in order."""
    return [os.path.join(meta["data_dir"], s["file"]) for s in meta["shards"] if s["split"] == split]


# ----------------------------------------------------------------------------- sources
# A source yields every document's text in a fixed order (None/"" for empty ones, which give no
# tokens), so that a document index is a stable resume position.

class BuiltinSource:
    """pydoc topics + stdlib .py files, sorted, seeded shuffle, capped at max_chars characters."""
    prefix = "builtin"

    def __init__(self, max_chars):
        self.max_chars = max_chars
        self.label = "builtin"

    @staticmethod
    def entries():
        """Sorted list of ("topic", key) and ("file", path), then a fixed seeded shuffle."""
        import sysconfig
        from pydoc_data.topics import topics
        out = [("topic", k) for k in sorted(topics)]
        stdlib = sysconfig.get_paths()["stdlib"]
        skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
        files = []
        for d, dirs, names in os.walk(stdlib):
            dirs[:] = [x for x in dirs if x not in skip]
            files += [os.path.relpath(os.path.join(d, n), stdlib) for n in names if n.endswith(".py")]
        out += [("file", os.path.join(stdlib, f)) for f in sorted(f.replace(os.sep, "/") for f in files)]
        random.Random(BUILTIN_SEED).shuffle(out)
        return out

    def digest(self):
        """sha256 of the documents' text (the corpus depends on the Python install)."""
        h = hashlib.sha256()
        for text in self.documents():
            h.update(text.encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()

    def documents(self, skip=0):
        from pydoc_data.topics import topics
        left = self.max_chars
        for i, (kind, key) in enumerate(self.entries()):
            if left <= 0:
                return
            if kind == "topic":
                text = topics[key]
            else:
                try:
                    with open(key, encoding="utf-8") as f:
                        text = f.read()
                except (OSError, UnicodeDecodeError):
                    text = ""               # unreadable / not utf-8: an empty document
            text = text[:left]
            left -= len(text)
            if i >= skip:
                yield text


class LocalSource:
    """A .txt/.jsonl/.json/.parquet file or a directory of them."""

    def __init__(self, path, text_column="text", split_lines=False):
        self.path = os.path.abspath(path)
        self.label = self.path
        self.text_column = text_column
        self.split_lines = split_lines
        if os.path.isdir(self.path):
            files = []
            for d, dirs, names in os.walk(self.path):
                dirs[:] = [x for x in dirs if not x.startswith(".")]
                files += [os.path.join(d, n) for n in names
                          if os.path.splitext(n)[1].lower() in LOCAL_EXTS and not n.startswith(".")]
            if not files:
                raise DataError(f"no {'/'.join(LOCAL_EXTS)} files in directory {self.path}")
            self.files = sorted(files)
        else:
            ext = os.path.splitext(self.path)[1].lower()
            if ext not in LOCAL_EXTS:
                raise DataError(f"unknown source format {ext or '(no extension)'!r}: {self.path} "
                                f"(known: {', '.join(LOCAL_EXTS)}, a directory of them, 'builtin', "
                                f"or a Hugging Face dataset name)")
            self.files = [self.path]
        stem = os.path.splitext(os.path.basename(self.path.rstrip(os.sep)))[0]
        self.prefix = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "data"

    def _file_docs(self, path):
        ext = os.path.splitext(path)[1].lower()
        if ext == ".txt":
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError as e:
                raise DataError(f"not valid UTF-8 text ({e.reason} at byte {e.start}): {path}") from None
            if self.split_lines:
                yield from text.splitlines()
            else:
                yield text
            return
        import datasets
        kind = "parquet" if ext == ".parquet" else "json"
        try:
            ds = datasets.load_dataset(kind, data_files=[path], split="train", streaming=True)
            cols = ds.column_names
            if cols is None:                # json streaming may not know its columns up front
                first = next(iter(ds), None)
                cols = list(first) if first is not None else []
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read {kind} file {path}: {_one_line(e)}") from None
        if not cols:
            return                          # an empty file: no documents
        if self.text_column not in cols:
            raise DataError(f"column {self.text_column!r} not in {path} (columns: {', '.join(cols)}); "
                            f"use --text-column")
        yield from _column_texts(ds, self.text_column, path)

    def documents(self, skip=0):
        i = 0
        for path in self.files:
            for text in self._file_docs(path):
                if i >= skip:
                    yield text
                i += 1

    def digest(self):
        """sha256 over every source file's name (relative to the source) and bytes."""
        h = hashlib.sha256()
        base = self.path if os.path.isdir(self.path) else os.path.dirname(self.path)
        for path in self.files:
            h.update(os.path.relpath(path, base).encode() + b"\0")
            h.update(_sha256_file(path).encode())
        return h.hexdigest()


class HFSource:
    """A Hugging Face dataset through datasets.load_dataset (FineWeb-Edu by default)."""

    def __init__(self, name, config=None, split="train", streaming=False, text_column="text"):
        self.name, self.config, self.split, self.streaming = name, config, split, streaming
        self.text_column = text_column
        self.label = name
        self.prefix = "edufineweb" if (name, config) == FINEWEB else \
            "".join(c if c.isalnum() or c in "-_" else "_" for c in name.split("/")[-1])
        self._ds = None

    def dataset(self):
        if self._ds is None:
            import datasets
            try:
                self._ds = datasets.load_dataset(self.name, name=self.config, split=self.split,
                                                 streaming=self.streaming)
            except Exception as e:
                raise DataError(f"cannot load Hugging Face dataset {self.name!r} (config "
                                f"{self.config}, split {self.split}): {_one_line(e)}") from None
            cols = self._ds.column_names
            if cols is not None and self.text_column not in cols:
                raise DataError(f"column {self.text_column!r} not in dataset {self.name} "
                                f"(columns: {', '.join(cols)}); use --text-column")
        return self._ds

    def documents(self, skip=0):
        ds = self.dataset()
        try:
            if skip:
                ds = ds.skip(skip)
            yield from _column_texts(ds, self.text_column, self.name, first=skip, locate=False)
        except (DataError, GeneratorExit):
            raise
        except Exception as e:
            raise SourceReadError(f"reading Hugging Face dataset {self.name!r} failed: {_one_line(e)}") from None


def _column_texts(ds, column, where, first=0, locate=True):
    """The text column of a datasets.Dataset/IterableDataset, value by value; a value that is
    neither a string nor None (int, list, ...) is a DataError naming its record (1-based).
    A record that the datasets library itself fails to decode is found (locate) by reading the
    failing batch row by row."""
    n = first
    batches = ds.select_columns([column]).iter(batch_size=1024)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:
            if not locate:
                raise
            raise DataError(f"{where}: record {_first_bad_record(ds, n) + 1}: cannot read column "
                            f"{column!r} as text ({_one_line(e)})") from None
        for text in batch[column]:
            if text is not None and not isinstance(text, str):
                raise DataError(f"{where}: record {n + 1}: column {column!r} holds "
                                f"{type(text).__name__} {repr(text)[:60]}, not a string")
            yield text
            n += 1


def _first_bad_record(ds, start):
    """0-based index of the first record at or after start that fails to load (start if none)."""
    rows = iter(ds.skip(start))
    n = start
    while True:
        try:
            next(rows)
        except StopIteration:
            return start
        except Exception:
            return n
        n += 1


def _one_line(e):
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _looks_local(s):
    return s.startswith((".", "/", "~")) or os.path.splitext(s)[1].lower() in \
        LOCAL_EXTS + (".csv", ".tsv", ".gz", ".zip", ".arrow", ".md", ".xml", ".html")


def make_source(args):
    if args.source is None:
        return HFSource(FINEWEB[0], args.name or FINEWEB[1], args.split, args.streaming, args.text_column)
    if args.source == "builtin":
        return BuiltinSource(args.max_chars)
    path = os.path.expanduser(args.source)
    if os.path.exists(path):
        return LocalSource(path, args.text_column, args.txt_split_lines)
    if _looks_local(args.source):
        raise DataError(f"source path does not exist: {os.path.abspath(path)}")
    return HFSource(args.source, args.name, args.split, args.streaming, args.text_column)


# ----------------------------------------------------------------------------- tokenising
# A tokenised batch is (start, tokens, lens): documents start..start+len(lens)-1, their tokens
# concatenated (uint16, (sum(lens),)) and each document's token count (lens, int64).

_ENC = None      # per process: ("gpt2", tiktoken Encoding) or ("char", sorted code points (V,) uint32)


def _init_worker(kind, chars):
    global _ENC
    if kind == "gpt2":
        import tokenizer
        _ENC = ("gpt2", tokenizer.gpt2_encoding())
    else:
        _ENC = ("char", np.array([ord(c) for c in chars], dtype=np.uint32))


def _gpt2_ids(enc, text):
    """encode_ordinary(text) as a uint32 array (<|endoftext|> in the text is ordinary text)."""
    try:
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    except UnicodeEncodeError:  # lone surrogates: the same fix-up tiktoken's encode_ordinary does
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())


def encode_batch(texts):
    """Tokenise a list of documents with the process's tokenizer -> (tokens uint16, lens int64).

    gpt2: <|endoftext|> then the document's tokens; char: the characters' ids, no separator.
    Empty documents give no tokens.
    """
    kind, enc = _ENC
    pieces, lens = [], np.zeros(len(texts), dtype=np.int64)
    if kind == "gpt2":
        import tokenizer
        eot = np.array([tokenizer.GPT2_EOT], dtype=np.uint32)
        for i, text in enumerate(texts):
            if text:
                ids = _gpt2_ids(enc, text)
                pieces += [eot, ids]
                lens[i] = len(ids) + 1
    else:
        for i, text in enumerate(texts):
            if text:
                codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
                ids = np.searchsorted(enc, codes)
                if (ids >= len(enc)).any() or (enc[np.minimum(ids, len(enc) - 1)] != codes).any():
                    raise DataError("a character is missing from the char vocabulary (source changed?)")
                pieces.append(ids.astype(np.uint32))
                lens[i] = len(ids)
    toks = np.concatenate(pieces).astype(np.uint16) if pieces else np.zeros(0, dtype=np.uint16)
    return toks, lens


def _batches(docs, start):
    """Group documents into (start index, [texts]) tasks of about BATCH_CHARS characters."""
    texts, n = [], 0
    for text in docs:
        texts.append(text)
        n += len(text) if text else 0
        if n >= BATCH_CHARS or len(texts) >= 4096:
            yield start, texts
            start += len(texts)
            texts, n = [], 0
    if texts:
        yield start, texts


def tokenize_documents(docs, kind, chars=None, procs=1, start=0):
    """Iterate (start, tokens (n,) uint16, lens (docs,) int64) over docs, in order.

    procs > 1 tokenises in a process pool with at most 2*procs batches in flight.
    """
    if procs <= 1:
        _init_worker(kind, chars)
        for s, texts in _batches(docs, start):
            yield (s, *encode_batch(texts))
        return
    with mp.Pool(procs, initializer=_init_worker, initargs=(kind, chars)) as pool:
        pending = deque()
        for s, texts in _batches(docs, start):
            pending.append((s, pool.apply_async(encode_batch, (texts,))))
            if len(pending) >= 2 * procs:
                s0, r = pending.popleft()
                yield (s0, *r.get())
        while pending:
            s0, r = pending.popleft()
            yield (s0, *r.get())


def _trim(stream, doc, offset):
    """Drop everything before position (doc, offset) from a tokenised stream.

    Yields (start, tokens, lens, skip): the batch's first `skip` tokens (of document start) are gone.
    """
    for s, toks, lens in stream:
        if s + len(lens) <= doc:
            continue
        if s < doc or offset:
            k = doc - s
            if offset > lens[k]:
                raise DataError("resume position is inside a shorter document (source changed?)")
            drop = int(lens[:k].sum()) + offset
            yield doc, toks[drop:], lens[k:], offset
            offset = 0
            continue
        yield s, toks, lens, 0


def char_vocab(docs):
    """Sorted distinct characters of all documents and their total count."""
    seen, n = set(), 0
    for text in docs:
        if text:
            seen.update(text)
            n += len(text)
    return "".join(sorted(seen)), n


# ----------------------------------------------------------------------------- writing

def _save_npy(f, arr):
    """np.save's bytes (format 1.0 header + data), the data written with f.write: numpy's
    tofile turns a full disk into an OSError without errno, f.write keeps ENOSPC."""
    arr = np.ascontiguousarray(arr)
    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(arr))
    f.write(memoryview(arr).cast("B"))


def _after_shard_commit(n_shards):
    """Test hook: FINEWEB_TEST_KILL_AFTER_SHARDS=N sends SIGKILL to this process after N shards."""
    n = os.environ.get("FINEWEB_TEST_KILL_AFTER_SHARDS")
    if n and int(n) == n_shards:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path):
    """fsync a directory (makes a rename in it durable); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_json(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def write_text_atomic(path, text):
    """Write text to path through a temp file + fsync + rename: never visible half written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _write_shard(path, arr):
    """Write arr to path atomically (temp file + fsync + rename); returns the file's sha256."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            _save_npy(f, arr)
            f.flush()
            os.fsync(f.fileno())
        sha = _sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(os.path.dirname(path))
    return sha


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


class ShardWriter:
    """Fills shards from a tokenised stream; commits each with a manifest update.

    Split rule: val_tokens=None -> the first shard is val; else the first val_tokens tokens are
    val (in shards of at most shard_size) and the rest train; with val_last=True (needs the
    corpus' total) the first total - val_tokens tokens are train and the rest val.
    """

    def __init__(self, out, meta, shard_size, val_tokens, progress=lambda total, desc: None,
                 val_last=False, total=None):
        self.out, self.meta, self.shard_size, self.val_tokens = out, meta, shard_size, val_tokens
        self.val_last = val_last
        self.edge = None if val_tokens is None else (total - val_tokens if val_last else val_tokens)
        self.written = sum(s["tokens"] for s in meta["shards"])
        self.buf = np.empty(shard_size, dtype=np.uint16)
        self.fill = 0
        self.progress = progress      # (total, desc) -> tqdm bar or None
        self.bar = None
        self.t0 = time.time()
        self.n_docs = meta["shards"][-1]["end"][0] if meta["shards"] else 0

    def _split(self):
        if self.val_tokens is None:
            return "val" if not self.meta["shards"] else "train"
        before = self.written < self.edge     # in the first part (val, or train with val_last)
        return ("train" if before else "val") if self.val_last else ("val" if before else "train")

    def _capacity(self):
        if self.val_tokens is not None and self.written < self.edge:   # shards end at the edge
            return min(self.shard_size, self.edge - self.written)
        return self.shard_size

    def _bar(self):
        if self.bar is None:
            self.bar = self.progress(self._capacity(), f"Shard {len(self.meta['shards'])} ({self._split()})")
        return self.bar

    def add(self, start, toks, lens, skip=0):
        """Append one tokenised batch (whose first `skip` tokens were dropped); commits full shards."""
        cum = np.cumsum(lens) - skip    # end of each document, in positions of toks
        pos = 0
        while pos < len(toks):
            cap = self._capacity()
            take = min(cap - self.fill, len(toks) - pos)
            self.buf[self.fill:self.fill + take] = toks[pos:pos + take]
            self.fill += take
            pos += take
            if self._bar() is not None:
                self.bar.update(take)
            if self.fill == cap:
                j = int(np.searchsorted(cum, pos, side="right"))
                end = [start + j, int(pos - (cum[j - 1] if j else -skip))] if j < len(lens) \
                    else [start + len(lens), 0]
                self.commit(end)
        self.n_docs = start + len(lens)

    def commit(self, end):
        split = self._split()
        k = len(self.meta["shards"])
        fname = f"{self.meta['prefix']}_{split}_{k:06d}.npy"
        os.makedirs(self.out, exist_ok=True)
        sha = _write_shard(os.path.join(self.out, fname), self.buf[:self.fill])
        self.meta["shards"].append({"file": fname, "split": split, "tokens": int(self.fill),
                                    "sha256": sha, "end": end})
        self.written += self.fill
        self.fill = 0
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        _atomic_write_json(os.path.join(self.out, MANIFEST), self.meta)
        print(f"shard {k} ({split}): {self.meta['shards'][-1]['tokens']:,} tokens -> {fname} "
              f"({time.time() - self.t0:.1f}s)", flush=True)
        _after_shard_commit(len(self.meta["shards"]))

    def finish(self):
        if self.fill:
            self.commit([self.n_docs, 0])
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- build

def build_config(args, source):
    """What identifies a build: a rerun with the same config resumes, a different one is refused."""
    src = args.source if args.source in (None, "builtin") else getattr(source, "path", args.source)
    cfg = {"source": src or FINEWEB[0], "tokenizer": args.tokenizer, "shard_size": args.shard_size,
           "val_fraction": args.val_fraction}
    if isinstance(source, BuiltinSource):
        cfg["max_chars"] = args.max_chars
    if isinstance(source, LocalSource):
        cfg.update(text_column=args.text_column, txt_split_lines=args.txt_split_lines)
    if isinstance(source, HFSource):
        cfg.update(name=source.config, split=source.split, streaming=source.streaming,
                   text_column=args.text_column)
    else:               # an edited source is another build, whatever its path
        cfg["source_sha256"] = source.digest()
    return cfg


def _resume_state(out, cfg):
    """Existing manifest for this config with its verified shard prefix, or None for a fresh build."""
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        meta = _load_meta(path)
    except DataError:
        raise DataError(f"{path} exists but is not a valid manifest; delete {out} or choose another --out") from None
    old = meta.get("build")
    if isinstance(old, dict) and {**old, "source_sha256": None} == {**cfg, "source_sha256": None}:
        if old.get("source_sha256") != cfg.get("source_sha256"):
            print(f"{cfg['source']} changed since {out} was built from it: rebuilding", file=sys.stderr)
            for s in meta["shards"]:
                _remove(os.path.join(out, os.path.basename(s.get("file", ""))))
            _remove(path)
            return None
    if old != cfg:
        raise DataError(f"{out} already holds a different build ({json.dumps(meta.get('build'))}); "
                        f"choose another --out or delete it")
    if meta.get("complete"):
        try:
            read_manifest(out)      # finished: cheap check (files present, token counts)
            return meta
        except DataError as e:
            print(f"{e}: rebuilding from the first bad shard", file=sys.stderr)
    kept = []
    for s in meta["shards"]:        # interrupted: keep the prefix of shards whose sha256 matches
        p = os.path.join(out, s.get("file", ""))
        if not (os.path.isfile(p) and _sha256_file(p) == s.get("sha256")):
            print(f"shard {s.get('file')} missing or changed: rebuilding from there", file=sys.stderr)
            break
        kept.append(s)
    meta["shards"] = kept
    meta["complete"] = False
    return meta


def _progress(args, total, desc):
    """A tqdm bar on stderr (None with --quiet or when stderr is not a terminal)."""
    if args.quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="tokens", unit_scale=True, desc=desc, file=sys.stderr, dynamic_ncols=True)


def build(args):
    """Run one data build; returns the manifest. Raises DataError for bad input."""
    t0 = time.time()
    source = make_source(args)
    out = os.path.abspath(args.out or os.path.join(
        ROOT, "data", "edu_fineweb10B" if isinstance(source, HFSource) and source.prefix == "edufineweb"
        else source.prefix))
    cli.check_output(out, "--out", is_dir=True)
    cfg = build_config(args, source)
    val_fraction = args.val_fraction
    if val_fraction is None:
        val_fraction = 0.0 if isinstance(source, HFSource) else 0.1
    cfg["val_fraction"] = val_fraction
    val_last = args.val_position == "last"
    if val_last:      # (absent for "first": manifests built before the option stay resumable)
        if val_fraction <= 0:
            raise DataError("--val-position last needs --val-fraction > 0")
        cfg["val_position"] = "last"

    meta = _resume_state(out, cfg)
    if meta is not None and meta.get("complete"):
        print(f"{out} is already complete ({len(meta['shards'])} shards, {meta['n_tokens']:,} tokens): "
              f"nothing to do")
        return meta
    for name in os.listdir(out) if os.path.isdir(out) else []:
        if ".tmp." in name:     # left behind by a killed run
            _remove(os.path.join(out, name))
    resumed = meta is not None and bool(meta["shards"])
    if meta is not None and not meta["shards"]:
        meta = None
    created_dir = not os.path.isdir(out)

    kind = args.tokenizer
    chars = meta.get("chars") if meta else None
    total = meta.get("total_tokens") if meta else None
    cache = None
    if kind == "char" and chars is None:            # vocabulary pass (also counts the tokens)
        chars, total = char_vocab(source.documents())
        if len(chars) > UINT16_IDS:
            raise DataError(f"char vocabulary has {len(chars)} distinct characters, more than uint16 "
                            f"token ids hold ({UINT16_IDS}): {source.label}")
    if val_fraction > 0 and total is None:          # counting pass; keep the tokens when small
        total, cache = 0, []
        bar = _progress(args, None, "counting tokens")
        for batch in tokenize_documents(source.documents(), kind, chars, args.procs):
            total += len(batch[1])
            if bar is not None:
                bar.update(len(batch[1]))
            if cache is not None:
                cache.append(batch)
                if total > CACHE_TOKENS:
                    cache = None
        if bar is not None:
            bar.close()
    if total == 0:
        raise DataError(f"empty corpus: {source.label} has no tokens")
    val_tokens = None
    if val_fraction > 0:
        val_tokens = (total - int(total * (1 - val_fraction)) if val_last
                      else int(round(val_fraction * total)))
        if not 0 < val_tokens < total:
            raise DataError(f"--val-fraction {val_fraction} of {total} tokens leaves val or train empty: "
                            f"{source.label}")

    if meta is None:
        import tokenizer
        meta = {"source": source.label, "tokenizer": kind,
                "vocab_size": tokenizer.GPT2_VOCAB if kind == "gpt2" else len(chars),
                "eot": tokenizer.GPT2_EOT if kind == "gpt2" else None, "dtype": "uint16"}
        if kind == "char":
            meta["chars"] = chars
        meta.update(prefix=source.prefix, shards=[], complete=False, build=cfg)
        if total is not None:
            meta["total_tokens"] = total
    meta["complete"] = False
    doc, offset = meta["shards"][-1]["end"] if meta["shards"] else (0, 0)
    if resumed:
        print(f"resuming {out} after {len(meta['shards'])} finished shards (document {doc:,})", file=sys.stderr)

    writer = ShardWriter(out, meta, args.shard_size, val_tokens, progress=lambda n, d: _progress(args, n, d),
                         val_last=val_last, total=total)
    stream = iter(cache) if cache is not None else \
        tokenize_documents(source.documents(skip=doc), kind, chars, args.procs, start=doc)
    trimmed = _trim(stream, doc, offset)
    try:
        for batch in trimmed:
            writer.add(*batch)
        ntok = writer.written + writer.fill
        if ntok == 0:
            raise DataError(f"empty corpus: {source.label} has no tokens")
        splits = {s["split"] for s in meta["shards"]} | ({writer._split()} if writer.fill else set())
        if "train" not in splits:
            raise DataError(f"corpus has {ntok:,} tokens, not more than one shard (--shard-size "
                            f"{args.shard_size:,}), so there is no train shard: {source.label}; "
                            f"use --val-fraction or a smaller --shard-size")
        writer.finish()
    except DataError:
        if not resumed:     # bad input found mid-way: leave nothing of this run behind
            for s in meta["shards"]:
                _remove(os.path.join(out, s["file"]))
            if meta["shards"]:
                _remove(os.path.join(out, MANIFEST))
            if created_dir and os.path.isdir(out) and not os.listdir(out):
                os.rmdir(out)
        raise
    finally:
        trimmed.close()
        if hasattr(stream, "close"):
            stream.close()
        if writer.bar is not None:
            writer.bar.close()
    meta["n_documents"] = writer.n_docs
    meta["n_tokens"] = writer.written
    meta["split_tokens"] = {sp: sum(s["tokens"] for s in meta["shards"] if s["split"] == sp)
                            for sp in ("val", "train")}
    meta["complete"] = True
    meta["python"] = sys.version.split()[0]
    _atomic_write_json(os.path.join(out, MANIFEST), meta)
    print(f"wrote {len(meta['shards'])} shards, {meta['n_tokens']:,} tokens ({meta['split_tokens']['val']:,} "
          f"val) from {meta['n_documents']:,} documents to {out} in {time.time() - t0:.1f}s")
    return meta


# ----------------------------------------------------------------------------- CLI

def parse_args(argv=None):
    p = cli.Parser(prog="fineweb.py", description=cli.doc_head(__doc__),
                   epilog="Sources: (none) = FineWeb-Edu sample-10BT; builtin; a .txt/.jsonl/.json/.parquet "
                          "file or a directory of them; any Hugging Face dataset name.")
    p.add_argument("--source", default=None, help="builtin | path | HF dataset name (None: FineWeb-Edu)")
    p.add_argument("--name", default=None, help="HF dataset config (None: sample-10BT for FineWeb-Edu)")
    p.add_argument("--split", default="train", help="HF dataset split")
    p.add_argument("--streaming", action="store_true", help="stream the HF dataset instead of downloading it")
    p.add_argument("--text-column", default="text", help="text column of json/parquet/HF data")
    p.add_argument("--txt-split-lines", action="store_true", help=".txt: every line is a document")
    p.add_argument("--max-chars", type=cli.int_arg(1), default=BUILTIN_MAX_CHARS,
                   help="builtin corpus size cap in characters")
    p.add_argument("--tokenizer", default="gpt2", choices=TOKENIZERS, help="tokenizer of the shards")
    p.add_argument("--shard-size", type=cli.int_arg(1, MAX_SHARD_SIZE), default=DEFAULT_SHARD_SIZE,
                   help="tokens per shard")
    p.add_argument("--val-fraction", type=cli.float_arg(0, 1, hi_open=True), default=None,
                   help="fraction of tokens that goes to val; 0 = the first shard is val "
                        "(None: 0 for HF datasets, 0.1 for builtin and local files)")
    p.add_argument("--val-position", default="first", choices=("first", "last"),
                   help="val is the first or the last --val-fraction of the tokens "
                        "(last: nanoGPT's shakespeare_char split)")
    p.add_argument("--out", default=None, help="output directory (None: data/edu_fineweb10B for "
                                                "FineWeb-Edu, data/<source name> otherwise)")
    p.add_argument("--procs", type=cli.int_arg(1, MAX_PROCS), default=max(1, (os.cpu_count() or 2) // 2),
                   help="tokenising processes (half the CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not args.text_column:
        p.error("--text-column must not be empty")
    src = args.source
    if src is not None and "\0" in src:
        p.error(f"--source {src!r} contains a NUL byte")
    if src is not None and (src == "builtin" or os.path.exists(os.path.expanduser(src)) or _looks_local(src)):
        given = [f for f, v in (("--name", args.name), ("--split", args.split != "train"),
                                ("--streaming", args.streaming)) if v]
        if given:
            p.error(f"{', '.join(given)} only apply to Hugging Face datasets, not to --source {src}")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        build(args)
    except (DataError, cli.UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"error: out of memory (a shard buffer holds --shard-size {args.shard_size:,} tokens; "
              f"lower it)", file=sys.stderr)
        return 2
    except SourceReadError as e:
        print(f"error: {e}; finished shards are kept, rerun the same command to resume", file=sys.stderr)
        return 2
    except OSError as e:
        what = "disk full: " if e.errno == errno.ENOSPC else ""
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {what}{e.strerror or e}{where}; finished shards are kept, rerun the same "
              f"command to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished shards are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
