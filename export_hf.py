"""Export a checkpoint as a Hugging Face transformers GPT2LMHeadModel directory.

    python export_hf.py --ckpt log/<run>/ckpt_019072.pt --out hf/<run> [--depth l]
    lm_eval --model hf --model_args pretrained=hf/<run> --tasks hellaswag

Writes config.json, model.safetensors (float32) and, for GPT-2-tokenised checkpoints, the
tokenizer (tokenizer.json, tokenizer_config.json, vocab.json, merges.txt), derived offline from
tiktoken's GPT-2 BPE ranks. The directory appears complete or not at all.

A checkpoint is exportable when it is a GPT-2 in disguise:
- block_type "pre-ln" or "res" (the same wiring); any other wiring -> error naming block_type;
- pos_encoding "learned" (wpe as is), "sinusoidal" (its fixed table becomes wpe) or "none"
  (wpe of zeros); "rope" -> error naming pos_encoding;
- share_weights: the one block is copied into every layer; ln_learnable=False / bias=False:
  LayerNorm scale 1, shifts and biases 0 (the same function);
- --depth l (1..n_layer, default n_layer): the first l blocks + ln_f + lm_head, i.e. the logits
  of the exit head after layer l. Early exit itself is not exported (fixed depth).
"""
import json
import os
import shutil
import sys

import torch


class ExportError(ValueError):
    """Bad input or a variant transformers cannot represent: one `error:` line, exit 2."""


EXPORTABLE_BLOCKS = ("pre-ln", "res")                    # pre-LN GPT-2 wiring ("res" = same)
EXPORTABLE_POS = ("learned", "sinusoidal", "none")       # anything added to wte as a table


def check_exportable(cfg, depth):
    """Raise ExportError naming the GPTConfig field (or --depth) that GPT2LMHeadModel lacks."""
    if cfg.block_type not in EXPORTABLE_BLOCKS:
        raise ExportError(f"block_type={cfg.block_type!r} has no GPT2LMHeadModel equivalent "
                          f"(exportable: {', '.join(EXPORTABLE_BLOCKS)})")
    if cfg.pos_encoding not in EXPORTABLE_POS:
        raise ExportError(f"pos_encoding={cfg.pos_encoding!r} has no GPT2LMHeadModel equivalent "
                          f"(exportable: {', '.join(EXPORTABLE_POS)})")
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= cfg.n_layer:
        raise ExportError(f"--depth must be in 1..{cfg.n_layer} (n_layer), got {depth!r}")


def hf_config(cfg, depth, tokenizer_name, source):
    """transformers.GPT2Config of the exported model (depth layers)."""
    from transformers import GPT2Config
    eot = 50256 if tokenizer_name == "gpt2" else None
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=depth, n_head=cfg.n_head, n_inner=4 * cfg.n_embd,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False, tie_word_embeddings=True,
        bos_token_id=eot, eos_token_id=eot,
        exported_from={"checkpoint": source, "n_layer": cfg.n_layer, "depth": depth,
                       "share_weights": cfg.share_weights, "block_type": cfg.block_type,
                       "pos_encoding": cfg.pos_encoding, "tokenizer": tokenizer_name})


def hf_state_dict(model, depth):
    """Our GPT -> {GPT2LMHeadModel parameter name: float32 tensor} for the first `depth` layers.
    nn.Linear (out, in) becomes Conv1D (in, out); absent biases / LN affines become 0 / 1."""
    cfg = model.config
    C = cfg.n_embd
    sd = {}

    def lin(name, m):
        sd[name + ".weight"] = m.weight.detach().t().float().contiguous()
        sd[name + ".bias"] = (m.bias.detach().float() if m.bias is not None
                              else torch.zeros(m.out_features))

    def ln(name, m):
        sd[name + ".weight"] = m.weight.detach().float() if m.weight is not None else torch.ones(C)
        sd[name + ".bias"] = m.bias.detach().float() if m.bias is not None else torch.zeros(C)

    tr = model.transformer
    sd["transformer.wte.weight"] = tr.wte.weight.detach().float()
    sd["lm_head.weight"] = sd["transformer.wte.weight"]                   # tied
    if cfg.pos_encoding == "learned":
        wpe = tr.wpe.weight.detach().float()
    elif cfg.pos_encoding == "sinusoidal":
        wpe = model.sin_pe.detach().float()
    else:
        wpe = torch.zeros(cfg.block_size, C)
    sd["transformer.wpe.weight"] = wpe
    for l in range(depth):
        blk, p = model.block(l), f"transformer.h.{l}"
        ln(p + ".ln_1", blk.ln_1)
        lin(p + ".attn.c_attn", blk.attn.c_attn)
        lin(p + ".attn.c_proj", blk.attn.c_proj)
        ln(p + ".ln_2", blk.ln_2)
        lin(p + ".mlp.c_fc", blk.mlp.c_fc)
        lin(p + ".mlp.c_proj", blk.mlp.c_proj)
    ln("transformer.ln_f", tr.ln_f)
    # a shared block yields the same tensor for every layer: copies, so each layer is its own
    return {k: v.clone() for k, v in sd.items()}


def build_hf_model(model, depth, tokenizer_name="gpt2", source=""):
    """GPT2LMHeadModel (eval mode) computing our model's exit-head logits after layer `depth`."""
    from transformers import GPT2LMHeadModel
    check_exportable(model.config, depth)
    hf = GPT2LMHeadModel(hf_config(model.config, depth, tokenizer_name, source))
    sd = hf_state_dict(model, depth)
    want = {k for k, _ in hf.named_parameters(remove_duplicate=False)}
    if set(sd) != want:
        raise RuntimeError(f"parameter names differ from GPT2LMHeadModel: missing "
                           f"{sorted(want - set(sd))[:4]}, extra {sorted(set(sd) - want)[:4]}")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(sd[name])
    return hf.eval()


# ---------------------------------------------------------------------------------------------
# tokenizer: GPT-2 BPE files from tiktoken's ranks (no network)

def _byte_symbols():
    """GPT-2's reversible byte -> printable-unicode map (printable Latin-1 bytes map to
    themselves, the other 68 to chr(256 + n) in byte order)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def _merge_parts(token, rank, ranks):
    """Byte-pair encode `token` using only merges ranked below `rank`; for a token of the
    vocabulary this stops at the two parts whose merge created it."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def gpt2_bpe_tables():
    """(vocab {symbol string: id}, merges [(left, right)] in rank order) of tiktoken's gpt2."""
    import tokenizer
    enc = tokenizer.gpt2_encoding()
    ranks = enc._mergeable_ranks                                  # bytes -> rank (= token id)
    sym = _byte_symbols()
    spell = lambda b: "".join(sym[x] for x in b)                  # noqa: E731
    vocab = {spell(tok): r for tok, r in ranks.items()}
    merges = []
    for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            parts = _merge_parts(tok, r, ranks)
            if len(parts) != 2:
                raise RuntimeError(f"token {tok!r} (id {r}) is not one merge of two lower tokens")
            merges.append((spell(parts[0]), spell(parts[1])))
    vocab["<|endoftext|>"] = enc.eot_token
    return vocab, merges


def save_gpt2_tokenizer(out_dir, model_max_length):
    """tokenizer.json + tokenizer_config.json (transformers) and vocab.json + merges.txt."""
    from transformers import GPT2Tokenizer
    vocab, merges = gpt2_bpe_tables()
    tok = GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tok.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


# ---------------------------------------------------------------------------------------------

def load(path):
    """(GPT in eval mode, tokenizer info dict or {}) from a verified trainer checkpoint."""
    import checkpoint
    try:
        model, ck = checkpoint.load_model(path)
    except checkpoint.CheckpointError as e:
        raise ExportError(str(e)) from None
    return model, ck.get("tokenizer") or {}


def export(ckpt, out, depth=None):
    """Write the GPT2LMHeadModel directory `out` (must not exist or be empty); returns notes."""
    model, tok = load(ckpt)
    cfg = model.config
    depth = cfg.n_layer if depth is None else depth
    check_exportable(cfg, depth)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ExportError(f"--out {out} exists and is not an empty directory")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ExportError("transformers is not installed: pip install -r requirements-dev.txt") from None
    name = tok.get("name")
    notes = [f"depth {depth} of n_layer {cfg.n_layer}"
             + (" (shared block copied into every layer)" if cfg.share_weights else "")]
    if cfg.early_exit:
        notes.append("early exit is not exported: the model always runs all its layers")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(out))}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf = build_hf_model(model, depth, name or "unknown", os.path.basename(ckpt))
        hf.save_pretrained(tmp)
        if name == "gpt2":
            save_gpt2_tokenizer(tmp, cfg.block_size)
        else:
            notes.append(f"no tokenizer files: the checkpoint's tokenizer is {name or 'not recorded'}"
                         " (only GPT-2 BPE is exported)")
        if os.path.isdir(out):
            os.rmdir(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return notes


def main(argv=None):
    import cli
    p = cli.Parser(prog="export_hf.py", description=cli.doc_head(__doc__))
    p.add_argument("--ckpt", required=True, help="trainer checkpoint log/<run>/ckpt_XXXXXX.pt")
    p.add_argument("--out", required=True, help="output directory (absent or empty)")
    p.add_argument("--depth", type=cli.int_arg(1), default=None,
                   help="layers to export: the exit head after layer l (None: n_layer)")
    args = p.parse_args(argv)
    try:
        cli.check_input_file(args.ckpt, "--ckpt")
        cli.check_output(args.out, "--out", is_dir=True)
        notes = export(args.ckpt, args.out, args.depth)
    except ValueError as e:             # cli.UsageError, ExportError
        cli.fail(e)
    print(f"wrote {args.out}: " + "; ".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
