"""HellaSwag, completion style, as build-nanogpt reports it.

Each example has a context and 4 endings. Each ending is appended to the context (ending encoded
with a leading space, " " + ending) and scored by the model's cross-entropy over the ending
tokens only:
  acc_norm  the ending with the lowest MEAN token loss is the prediction (build-nanogpt's number)
  acc       the ending with the lowest SUM of token losses
Ties go to the lowest index (torch.argmin).

    python hellaswag.py --ckpt log/my-run/ckpt_019072.pt          # HF datasets Rowan/hellaswag
    python hellaswag.py --model gpt2 --data hellaswag_val.jsonl   # local jsonl, original format

Data: `datasets.load_dataset("Rowan/hellaswag", split="validation")` (10042 examples), or a local
jsonl in the original HellaSwag format, one object per line with at least
`ctx` (or `ctx_a` + `ctx_b`), `endings` (4 strings) and `label` (int or "0".."3").

From the trainer (DDP): each rank scores examples i with i % world_size == rank; all_reduce the
three counts returned by `evaluate`.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

import cli


def load_examples(data=None, limit=None):
    """List of example dicts from a local jsonl path, or (data=None) from Hugging Face datasets."""
    if data is None:
        from datasets import load_dataset  # lazy: heavy import, and needs the network or HF cache
        ds = load_dataset("Rowan/hellaswag", split="validation")
        examples = [dict(ds[i]) for i in range(len(ds) if limit is None else min(limit, len(ds)))]
    else:
        examples = []
        with open(data, "r", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    examples.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{data}:{n}: not JSON ({e.msg})") from None
                if limit is not None and len(examples) >= limit:
                    break
    for i, ex in enumerate(examples):
        _check(ex, i)
    return examples


def _check(ex, i):
    if not isinstance(ex, dict):
        raise ValueError(f"example {i}: not a JSON object ({type(ex).__name__})")
    if "endings" not in ex or "label" not in ex or not ("ctx" in ex or "ctx_a" in ex):
        raise ValueError(f"example {i}: needs fields ctx (or ctx_a/ctx_b), endings, label")
    if not isinstance(ex["endings"], list) or len(ex["endings"]) != 4:
        raise ValueError(f"example {i}: expected 4 endings, got {ex['endings']!r:.80}")
    texts = [ex["endings"], ex.get("ctx", ""), ex.get("ctx_a", ""), ex.get("ctx_b", "")]
    if not all(isinstance(t, str) for t in texts[0] + texts[1:]):
        raise ValueError(f"example {i}: ctx, ctx_a, ctx_b and endings must be strings")
    if str(ex["label"]) not in ("0", "1", "2", "3"):
        raise ValueError(f"example {i}: label {ex['label']!r} not in 0..3")


def context_of(ex):
    """The context string: `ctx`, else ctx_a + " " + ctx_b (the original format has both)."""
    if ex.get("ctx"):
        return ex["ctx"]
    return (ex.get("ctx_a", "") + " " + ex.get("ctx_b", "")).strip()


def render_example(ex, tokenizer, max_len=None):
    """Token rows for the 4 endings.

    Returns tokens (4, T) int64 (zero padded), mask (4, T) float (1 on ending tokens), label int.
    With max_len (the model's block_size), the context is cut from the left so every row fits.
    """
    ctx = tokenizer.encode(context_of(ex))
    ends = [tokenizer.encode(" " + e) for e in ex["endings"]]
    if max_len is not None:
        longest = max(len(e) for e in ends)
        if longest >= max_len:
            raise ValueError(f"an ending has {longest} tokens, block_size is {max_len}")
        ctx = ctx[max(0, len(ctx) + longest - max_len):]
    T = max(len(ctx) + len(e) for e in ends)
    tokens = torch.zeros((4, T), dtype=torch.long)
    mask = torch.zeros((4, T))
    for i, e in enumerate(ends):
        row = ctx + e
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, len(ctx):len(row)] = 1.0
    return tokens, mask, int(ex["label"])


@torch.no_grad()
def score_example(model, ex, device, tokenizer, max_len=None):
    """Ending losses of one example: (sum_loss (4,), mean_loss (4,), label), fp32 on CPU.

    Position t's logits score token t+1; only ending tokens (mask) count.
    """
    tokens, mask, label = render_example(ex, tokenizer, max_len)
    tokens, mask = tokens.to(device), mask.to(device)
    logits = model(tokens)[0]                                 # (4, T, V)
    logits = logits[:, :-1, :].float()                        # (4, T-1, V) predicts tokens[:, 1:]
    xe = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1),
                         reduction="none").view(4, -1)        # (4, T-1)
    m = mask[:, 1:]                                           # (4, T-1)
    sum_loss = (xe * m).sum(dim=1)
    mean_loss = sum_loss / m.sum(dim=1)
    return sum_loss.cpu(), mean_loss.cpu(), label


def evaluate(model, examples, device, tokenizer, rank=0, world_size=1, max_len="auto"):
    """Score the examples i with i % world_size == rank.

    Returns (n_correct_norm, n_correct, n_total) as ints (this rank's share); the model is put in
    eval mode for the duration and restored. max_len="auto" uses model.config.block_size if present.
    """
    if max_len == "auto":
        max_len = getattr(getattr(model, "config", None), "block_size", None)
    was_training = model.training
    model.eval()
    n_norm = n_plain = n_total = 0
    try:
        for i, ex in enumerate(examples):
            if i % world_size != rank:
                continue
            sum_loss, mean_loss, label = score_example(model, ex, device, tokenizer, max_len)
            n_norm += int(mean_loss.argmin().item() == label)
            n_plain += int(sum_loss.argmin().item() == label)
            n_total += 1
    finally:
        model.train(was_training)
    return n_norm, n_plain, n_total


def _load_model(args):
    """(model, tokenizer) from --ckpt (this project's checkpoint) or --model (HF GPT-2 name/dir)."""
    import checkpoint
    import tokenizer as tok
    from model import GPT
    if args.ckpt:
        model, ckpt = checkpoint.load_model(args.ckpt)      # CheckpointError is a ValueError
        t = ckpt.get("tokenizer") or {"name": "gpt2"}
        return model, tok.get_tokenizer(t.get("name", "gpt2"), t.get("chars"))
    try:
        return GPT.from_pretrained(args.model), tok.get_tokenizer("gpt2")
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"cannot load --model {args.model}: {type(e).__name__}: {first}") from None


def parse_args(argv=None):
    """Parsed arguments; bad values and paths exit 2 with one error line, before any work."""
    p = cli.Parser(prog="hellaswag.py", description="HellaSwag completion-style accuracy (acc_norm, acc).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint log/{run}/ckpt_XXXXXX.pt")
    src.add_argument("--model", help="Hugging Face GPT-2 name (gpt2, gpt2-medium, ...) or local dir")
    p.add_argument("--data", default=None, help="local jsonl in the original format (None: HF Rowan/hellaswag)")
    p.add_argument("--limit", type=cli.int_arg(1), default=None, help="only the first N examples (None: all)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    args = p.parse_args(argv)
    try:
        if args.data is not None:
            cli.check_input_file(args.data, "--data")
        if args.ckpt is not None:
            cli.check_input_file(args.ckpt, "--ckpt")
        if args.model is not None and args.model.startswith((".", "/", "~")) and \
                not os.path.isdir(os.path.expanduser(args.model)):
            raise cli.UsageError(f"--model {args.model}: no such directory")
        args.device = str(cli.check_device(args.device))
    except ValueError as e:
        cli.fail(e)
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        examples = load_examples(args.data, args.limit)
        model, tokenizer = _load_model(args)
        model.to(args.device)
        n_norm, n_plain, n = evaluate(model, examples, args.device, tokenizer)
    except (ValueError, OSError, KeyError, TypeError) as e:
        cli.fail(e)
    print(f"hellaswag {n} examples: acc_norm {n_norm}/{n} = {n_norm / max(n, 1):.4f}, "
          f"acc {n_plain}/{n} = {n_plain / max(n, 1):.4f}")


if __name__ == "__main__":
    main()
