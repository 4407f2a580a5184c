"""Tests of data/tokenizer.py: deterministic WordPiece training, cased save/load, special ids."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from data import tokenizer as tk

ROOT = Path(__file__).resolve().parents[1]

CORPUS = [
    "Crème Brûlée. 4 egg yolks. 1/2 cup sugar. 2 cups heavy cream. Whisk the yolks; bake at 150°C!",
    "Chocolate Chip Cookies. 2 1/4 cups flour. 1 cup butter, softened. Preheat oven to 375 F. Bake 10 min.",
    "Pelmeni. мука — 500 г. вода — 200 мл. Замесить тесто (не слишком мягкое). Варить 7 минут.",
    "Käsespätzle. 400 g Mehl. 4 Eier. Den Käse reiben, Zwiebeln rösten. Schichten und backen.",
    "Tarte Tatin. 6 pommes. 100 g de sucre. Caraméliser le sucre, puis cuire 35 min. Démouler.",
    "Hello hello HELLO. Mix, mix again; mixing is fun. 中文 text too.",
] * 3


def _words(texts):
    """Brute force: pre-tokenise each whole normalised text with the tokenizers library."""
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                      lowercase=False)
    pre = pre_tokenizers.BertPreTokenizer()
    return Counter(w for text in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))


def _naive_vocab(word_counts, vocab_size):
    """Brute-force reference of learn_vocab: recount every pair after every merge."""
    chars = sorted({c for w in word_counts for c in w})
    vocab = list(tk.SPECIAL_TOKENS) + sorted(set(chars) | {"##" + c for c in chars})
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in word_counts if len(w) >= 2}
    while len(vocab) < vocab_size:
        pairs = Counter()
        for w, symbols in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += word_counts[w]
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], p))
        merged = a + b[2:]
        if merged not in vocab:
            vocab.append(merged)
        for w, symbols in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[w] = out
    return vocab


def test_word_counter_matches_pretokenizer():
    assert tk.count_words(CORPUS) == _words(CORPUS)
    counter = tk.WordCounter(flush_every=3)  # flushing often must not change the counts
    for text in CORPUS:
        counter.add(text)
    assert counter.counts() == _words(CORPUS)


def test_learn_vocab_matches_brute_force():
    counts = _words(CORPUS)
    assert 2 * len({c for w in counts for c in w}) + 5 < 200  # the whole alphabet fits
    for size in (200, 260, 320):
        assert tk.learn_vocab(counts, size) == _naive_vocab(counts, size)


def test_vocab_layout_and_no_needless_unk():
    counts = _words(CORPUS)
    vocab = tk.learn_vocab(counts, 220)
    assert len(vocab) == 220 and len(set(vocab)) == 220
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for char in {c for w in counts for c in w}:
        assert char in vocab and "##" + char in vocab
    tokenizer = tk.build_tokenizer(vocab)
    for text in CORPUS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tk.special_ids(tokenizer)["unk"] not in ids
        assert tokenizer.decode(ids).replace(" ", "") == text.replace(" ", "")


def test_merges_learnt_from_the_most_frequent_words_only():
    counts = Counter({"abab": 9, "cdcd": 8, "xyzq": 1})
    vocab = tk.learn_vocab(counts, 40, max_words=2)
    assert {"x", "##y", "##z", "##q"} <= set(vocab)  # every character is kept
    assert not any(len(t.removeprefix("##")) > 1 and set(t.removeprefix("##")) <= set("xyzq") for t in vocab[5:])
    assert vocab == tk.learn_vocab(counts | {"xyzq": 0}, 40, max_words=None)  # as if the word were absent
    assert "xyzq" in tk.learn_vocab(counts, 40, max_words=None)


def test_alphabet_capped_to_most_frequent_characters():
    counts = Counter({"aaaa": 10, "bbb": 5, "cc": 3, "xyz": 1})
    vocab = tk.learn_vocab(counts, 5 + 4)  # room for two characters and their ## forms
    assert vocab[5:] == ["##a", "##b", "a", "b"]


def test_training_is_deterministic_across_orders_and_processes(tmp_path):
    first = tk.train_wordpiece(CORPUS, 200)
    second = tk.train_wordpiece(list(reversed(CORPUS)), 200)
    tk.save_tokenizer(first, tmp_path / "a")
    tk.save_tokenizer(second, tmp_path / "b")
    vocab_a = (tmp_path / "a" / "vocab.txt").read_bytes()
    assert vocab_a == (tmp_path / "b" / "vocab.txt").read_bytes()
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    # Another process with another string-hash seed (set and dict orders change) learns the same.
    script = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
              "from tests.test_tokenizer import CORPUS; from data import tokenizer as tk;"
              "tk.save_tokenizer(tk.train_wordpiece(CORPUS, 200), Path(sys.argv[2]))")
    env = dict(os.environ, PYTHONHASHSEED="12345", HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-c", script, str(ROOT), str(tmp_path / "c")], check=True, env=env,
                   cwd=ROOT, timeout=300)
    assert (tmp_path / "c" / "vocab.txt").read_bytes() == vocab_a


def test_save_load_round_trip_keeps_case(tmp_path):
    tokenizer = tk.train_wordpiece(CORPUS, 200)
    tk.save_tokenizer(tokenizer, tmp_path / "tok")
    loaded = tk.load_tokenizer(tmp_path / "tok")
    text = "Hello hello HELLO Crème Brûlée"
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == text  # not lowercased, accents kept
    tokens = loaded.convert_ids_to_tokens(ids)
    assert tokens[0].startswith("H") and "[UNK]" not in tokens
    assert loaded("Hello")["input_ids"] != loaded("hello")["input_ids"]
    # A folder holding only vocab.txt or tokenizer.json, and the vocab.txt file itself, load cased too.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "vocab.txt").write_bytes((tmp_path / "tok" / "vocab.txt").read_bytes())
    only_json = tmp_path / "only_json"
    only_json.mkdir()
    (only_json / "tokenizer.json").write_bytes((tmp_path / "tok" / "tokenizer.json").read_bytes())
    for source in (bare, bare / "vocab.txt", only_json):
        other = tk.load_tokenizer(source)
        assert other(text, add_special_tokens=False)["input_ids"] == ids
    assert tk.special_ids(loaded) == tk.special_ids(tokenizer)


def test_special_ids_and_pad_zero():
    tokenizer = tk.train_wordpiece(CORPUS, 150)
    assert tk.special_ids(tokenizer) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert tokenizer("Hello")["input_ids"][0] == 2 and tokenizer("Hello")["input_ids"][-1] == 3
    from transformers import BertTokenizerFast

    shifted = BertTokenizerFast(vocab={"[UNK]": 0, "[PAD]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5},
                                do_lower_case=False)
    with pytest.raises(tk.TokenizerError, match="pad id 1, not 0"):
        tk.special_ids(shifted)
    with pytest.raises(tk.TokenizerError, match="not 0"):
        tk.build_tokenizer(["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"])


def test_offline_hub_name_fails_fast_naming_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(tk.TokenizerError) as err:
        tk.load_tokenizer("xmrs-tests/no-such-tokenizer")  # a hub-style name no cache can hold
    # Offline must not wait for network retries (about 50 s); this bound only catches that.
    assert time.perf_counter() - start < 30
    assert "--tokenizer train" in str(err.value) and "local path" in str(err.value)
    with pytest.raises(tk.TokenizerError, match="does not exist"):
        tk.load_tokenizer(tmp_path / "missing" / "tokenizer")
