"""Sample text from a trained checkpoint or from OpenAI's GPT-2 weights (nanoGPT's sample.py).

    python sample.py --ckpt log/quickstart/ckpt_000799.pt          # a checkpoint file
    python sample.py --ckpt quickstart                             # a run name: its latest checkpoint
    python sample.py --ckpt quickstart --exit_threshold 0.5 --show_depth
    python sample.py --ckpt quickstart --draft_layers 2 --draft_tokens 4   # self-speculative
    python sample.py --init_from gpt2 --prompt "Hello, I'm a language model,"

--prompt is text, or FILE:path to read it from a file. Decoding is full depth unless
--exit_threshold is given (a checkpoint's own early_exit is a training choice): then a token
leaves at the first layer whose confidence reaches the threshold (model.generate's
`exit_threshold`). --draft_layers d: self-speculative decoding (the first d layers draft
--draft_tokens tokens, the whole model verifies them: full depth's output). --show_depth marks every new token with the layer its prediction exited at:
coloured on a terminal, `token[3]` otherwise. Bad input (missing or corrupt checkpoint, unknown
--init_from name offline, unreadable prompt file): one `error:` line, exit 2.
"""
import contextlib
import os
import sys

import torch

import cli
from tokenizer import decode_known

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# ANSI foreground colours from shallow to deep exits (blue ... red)
DEPTH_COLOURS = ("34", "36", "32", "33", "35", "31")


class SampleError(ValueError):
    """Bad input: reported as one `error:` line, exit 2."""


def parse_args(argv=None):
    p = cli.Parser(prog="sample.py", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint file log/<run>/ckpt_*.pt, a run directory, or a "
                                    "run name (its latest checkpoint under --log_dir)")
    src.add_argument("--init_from", help=f"OpenAI GPT-2 weights through transformers: "
                                         f"{', '.join(GPT2_NAMES)}, or a saved transformers directory")
    p.add_argument("--log_dir", default="log", help="where run names are looked up")
    p.add_argument("--prompt", default=None,
                   help="prompt text, or FILE:path (default: a newline; symbol 0 of a char "
                        "vocabulary without one)")
    p.add_argument("--num_samples", type=cli.int_arg(1, 10000), default=3, help="samples")
    p.add_argument("--max_new_tokens", type=cli.int_arg(1), default=200, help="tokens per sample")
    p.add_argument("--temperature", type=cli.float_arg(0), default=0.8, help="0: greedy")
    p.add_argument("--top_k", type=cli.int_arg(0), default=200, help="0: no top-k filter")
    p.add_argument("--seed", type=cli.int_arg(0, 2 ** 63 - 1), default=1337, help="torch seed")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--exit_threshold", type=cli.float_arg(0), default=None,
                   help="decode with early exit at this confidence threshold (default: full depth)")
    p.add_argument("--draft_layers", type=cli.int_arg(1), default=None,
                   help="self-speculative decoding: draft with the first d layers (1..n_layer-1)")
    p.add_argument("--draft_tokens", type=cli.int_arg(1, 1024), default=4,
                   help="tokens drafted per verification (with --draft_layers)")
    p.add_argument("--depth", type=cli.int_arg(1), default=None,
                   help="apply the blocks this many times (shared weights: any depth >= 1; "
                        "default: n_layer)")
    p.add_argument("--show_depth", action="store_true",
                   help="mark each new token with its exit layer (1-based)")
    args = p.parse_args(argv)
    try:
        args.device = str(cli.check_device(args.device))
    except cli.UsageError as e:
        cli.fail(e)
    return args


def check_args(args):
    """Combinations the per-argument types cannot refuse."""
    if args.draft_layers is not None and (args.exit_threshold is not None or args.show_depth):
        raise SampleError("--draft_layers (self-speculative decoding, every token verified at "
                          "full depth) goes with neither --exit_threshold nor --show_depth")


# ---------------------------------------------------------------------------------------------
# model + tokenizer


def resolve_ckpt(spec, log_dir):
    """A checkpoint file, a run directory (latest checkpoint) or a run name -> checkpoint path."""
    from checkpoint import list_checkpoints
    if os.path.isfile(spec):
        return spec
    run_dir = spec if os.path.isdir(spec) else os.path.join(log_dir, spec)
    if not os.path.isdir(run_dir):
        raise SampleError(f"checkpoint not found: {spec} (neither a file nor a run under {log_dir}/)")
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise SampleError(f"no checkpoint ckpt_*.pt in {run_dir}")
    return ckpts[-1][1]


def load_from_ckpt(path):
    """(model in eval mode, tokenizer) from a trainer checkpoint (checkpoint.load_model: the
    trainer's loader, content digest checked)."""
    import checkpoint
    from tokenizer import get_tokenizer
    try:
        model, ck = checkpoint.load_model(path)
    except checkpoint.CheckpointError as e:
        raise SampleError(str(e)) from None
    tok = ck.get("tokenizer") or {"name": "gpt2"}
    return model, get_tokenizer(tok["name"], tok.get("chars"))


def load_from_pretrained(name):
    """(model, GPT-2 tokenizer) from OpenAI's weights through transformers (local cache or hub)."""
    if name not in GPT2_NAMES and not os.path.isdir(name):
        raise SampleError(f"unknown --init_from {name!r}: one of {', '.join(GPT2_NAMES)} "
                          "or a directory saved by transformers")
    from model import GPT
    from tokenizer import GPT2Tokenizer
    try:
        model = GPT.from_pretrained(name)
    except ImportError as e:
        raise SampleError(f"--init_from needs transformers (pip install -r requirements-dev.txt): "
                          f"{e}") from None
    except OSError as e:    # offline and not cached, or a directory without a model
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise SampleError(f"cannot load {name!r} through transformers (offline and not in the "
                          f"Hugging Face cache?): {first}") from None
    return model.eval(), GPT2Tokenizer()


def read_prompt(spec):
    """--prompt text, or the contents of FILE:path (None: the default)."""
    if spec is None or not spec.startswith("FILE:"):
        return spec
    path = spec[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SampleError(f"cannot read prompt file {path!r}: "
                          f"{getattr(e, 'strerror', None) or e}") from None


def encode_prompt(tok, text, block_size):
    """Prompt ids (1, T) int64; the last block_size tokens when longer. text None: a newline,
    or id 0 when the tokenizer has no newline."""
    if text is None:
        try:
            text = tok.encode("\n") and "\n"
        except ValueError:
            text = tok.decode([0])
    try:
        ids = tok.encode(text)
    except ValueError as e:       # a character outside a char vocabulary
        raise SampleError(f"prompt: {e}") from None
    if not ids:
        raise SampleError("prompt is empty after tokenisation")
    return torch.tensor(ids[-block_size:], dtype=torch.long)[None]


# ---------------------------------------------------------------------------------------------
# generation


def generate(model, idx, args):
    """Sample args.max_new_tokens after idx (1, T) with model.generate's keyword interface.

    Returns (ids (T + n,) list, depths [n] or None). With --show_depth the tokens are drawn one
    generate call at a time (each re-runs the prompt: quadratic, fine for a screenful) so that
    last_generate_stats["avg_exit_depth"] is the exit layer of that one token's prediction."""
    kw = dict(temperature=args.temperature, top_k=args.top_k or None, depth=args.depth)
    if args.exit_threshold is not None:
        kw["exit_threshold"] = args.exit_threshold
    if args.draft_layers is not None:
        kw.update(draft_layers=args.draft_layers, draft_tokens=args.draft_tokens)
    if not args.show_depth:
        return model.generate(idx, args.max_new_tokens, **kw)[0].tolist(), None
    depths = []
    for _ in range(args.max_new_tokens):
        idx = model.generate(idx, 1, **kw)
        depths.append(int(round(model.last_generate_stats["avg_exit_depth"])))
    return idx[0].tolist(), depths


def render(tok, ids, n_prompt, depths, n_layer, colour):
    """The prompt, then each new token marked with its exit layer: ANSI colour (shallow blue ..
    deep red) when `colour`, else `token[d]`."""
    out = [decode_known(tok, ids[:n_prompt])]
    for t, d in zip(ids[n_prompt:], depths):
        text = decode_known(tok, [t])
        if colour:
            c = DEPTH_COLOURS[min(len(DEPTH_COLOURS) - 1, (d - 1) * len(DEPTH_COLOURS) // n_layer)]
            out.append(f"\033[{c}m{text}\033[0m")
        else:
            out.append(f"{text}[{d}]")
    return "".join(out)


def legend(n_layer):
    """One line showing which colour is which exit layer."""
    cells = []
    for d in range(1, n_layer + 1):
        c = DEPTH_COLOURS[min(len(DEPTH_COLOURS) - 1, (d - 1) * len(DEPTH_COLOURS) // n_layer)]
        cells.append(f"\033[{c}m{d}\033[0m")
    return "exit layer: " + " ".join(cells)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_args(args)
        text = read_prompt(args.prompt)
        if args.ckpt is not None:
            model, tok = load_from_ckpt(resolve_ckpt(args.ckpt, args.log_dir))
        else:
            model, tok = load_from_pretrained(args.init_from)
        cfg = model.config
        cfg.early_exit = False               # full depth unless --exit_threshold
        if args.draft_layers is not None and not 1 <= args.draft_layers < cfg.n_layer:
            raise SampleError(f"--draft_layers must be in 1..{cfg.n_layer - 1} (n_layer "
                              f"{cfg.n_layer}), got {args.draft_layers}")
        if args.exit_threshold is not None and cfg.confidence == "target-prob":
            raise SampleError("this model's confidence is 'target-prob', which needs targets: "
                              "early-exit decoding is undefined for it")
        try:
            with model.at_depth(args.depth):      # validates --depth against the model
                pass
        except ValueError as e:
            raise SampleError(f"--depth: {e}") from None
        idx = encode_prompt(tok, text, cfg.block_size)
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = args.device
    model.to(device)
    idx = idx.to(device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else contextlib.nullcontext())
    colour = args.show_depth and sys.stdout.isatty()
    if colour:
        print(legend(cfg.n_layer))
    torch.manual_seed(args.seed)
    for i in range(args.num_samples):
        with autocast:
            ids, depths = generate(model, idx, args)
        if depths is None:
            print(decode_known(tok, ids))
        else:
            print(render(tok, ids, idx.size(1), depths, cfg.n_layer, colour))
            print(f"(average exit layer {sum(depths) / len(depths):.2f} of {cfg.n_layer})")
        print("---------------")
    return 0


if __name__ == "__main__":
    sys.exit(main())
