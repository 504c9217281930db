"""Tokenizers work offline and round-trip (tokenizer.py)."""
import numpy as np
import pytest

import tokenizer


def test_gpt2_ids_offline():
    import tiktoken
    ids = tiktoken.get_encoding("gpt2").encode("Hello, I'm a language model,")
    assert ids == [15496, 11, 314, 1101, 257, 3303, 2746, 11]


def test_gpt2_tokenizer_round_trip_and_eot():
    tok = tokenizer.get_tokenizer("gpt2")
    text = "def f(x):\n    return x ** 2  # ünïcode ✓ <|endoftext|> stays text"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tokenizer.GPT2_EOT not in ids                  # encode_ordinary: no special tokens
    assert tok.decode([tokenizer.GPT2_EOT]) == "<|endoftext|>"
    assert (tok.vocab_size, tok.eot) == (50257, 50256)


def test_char_tokenizer_round_trip():
    text = "First Citizen:\nBefore we proceed any further, hear me speak. ünï ✓"
    tok = tokenizer.CharTokenizer.from_text(text)
    assert tok.chars == "".join(sorted(set(text)))
    ids = tok.encode(text)
    assert ids == [tok.chars.index(c) for c in text]
    assert tok.decode(ids) == text
    again = tokenizer.get_tokenizer("char", tok.chars)     # rebuilt from a manifest's "chars"
    assert again.encode(text) == ids and again.vocab_size == len(set(text))
    with pytest.raises(ValueError, match="not in the char vocabulary"):
        tok.encode("Z")


def test_get_tokenizer_errors():
    with pytest.raises(ValueError, match="unknown tokenizer 'bpe'; known: gpt2, char"):
        tokenizer.get_tokenizer("bpe")
    with pytest.raises(ValueError, match="needs its vocabulary"):
        tokenizer.get_tokenizer("char")


def test_fineweb_encoder_matches_encode_ordinary():
    """fineweb's fast path (encode_to_numpy) gives exactly tiktoken's encode_ordinary ids."""
    import fineweb
    enc = tokenizer.gpt2_encoding()
    texts = ["plain text", "", "has <|endoftext|> inside", "lone \ud800 surrogate", "ünï ✓ 😀\n\n  x"]
    fineweb._init_worker("gpt2", None)
    toks, lens = fineweb.encode_batch(texts)
    want = []
    for t in texts:
        if t:
            want += [tokenizer.GPT2_EOT] + enc.encode_ordinary(t)
    assert toks.dtype == np.uint16 and toks.tolist() == want
    assert lens.tolist() == [len(enc.encode_ordinary(t)) + 1 if t else 0 for t in texts]
