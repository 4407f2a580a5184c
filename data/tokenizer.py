"""The WordPiece tokenizer of the recipe texts: loading, saving, deterministic training (docs/data.md).

Every tokenizer this module returns is a fast, *cased* BERT tokenizer (``BertTokenizerFast``,
which transformers 5 calls ``BertTokenizer``) whose ``[PAD]`` id is 0, because the text encoder's
attention mask is ``token id > 0``.

``train_wordpiece`` learns a vocabulary deterministically: the ``tokenizers`` WordPiece trainer
is not (its parallel counting breaks ties in arbitrary order). Texts are normalised and split
with the same ``BertNormalizer(lowercase=False, strip_accents=False)`` and ``BertPreTokenizer``
the tokenizer applies, words are counted, and the vocabulary is grown from the characters by
BPE-style merges of the most frequent adjacent pair of symbols (word-internal symbols carry the
``##`` prefix), ties broken by the two symbols' strings. The result is the same for the same word
counts on any machine. Vocabulary order: ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4), then every
character seen and its ``##`` form sorted by string, then the merged tokens in the order learnt.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from itertools import chain
from pathlib import Path

import numpy as np

from utils.io import atomic_write_text

__all__ = [
    "SPECIAL_TOKENS", "ChunkEncoder", "TokenizerError", "WordCounter", "build_tokenizer", "count_words",
    "learn_vocab", "load_tokenizer", "save_tokenizer", "special_ids", "train_wordpiece",
    "train_wordpiece_from_counts",
]

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_WORD_CHARS = 100  # WordPiece maps longer words to [UNK], so they teach nothing
MAX_WORDS = 300_000  # most frequent words whose merges are learnt (see learn_vocab)
CACHE_ENTRIES = 200_000  # chunks whose ids a ChunkEncoder keeps (some 40 MB at most)
VOCAB_TXT = "vocab.txt"


class TokenizerError(RuntimeError):
    """A tokenizer that cannot be loaded or used; the message says what to do instead."""


def _normalizer():
    from tokenizers import normalizers

    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=False, lowercase=False)


def build_tokenizer(vocab: list[str]):
    """A cased fast BERT tokenizer over ``vocab`` (token ``i`` has id ``i``).

    Built from a ``tokenizers.Tokenizer``: WordPiece model, ``BertNormalizer`` without lowercasing
    or accent stripping, ``BertPreTokenizer``, WordPiece decoder.

    Raises:
        TokenizerError: a special token missing, or ``[PAD]`` not at id 0.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import BertTokenizerFast

    token2id = {token: i for i, token in enumerate(vocab)}
    if len(token2id) != len(vocab):
        raise TokenizerError("the vocabulary holds a token twice")
    missing = [t for t in SPECIAL_TOKENS if t not in token2id]
    if missing:
        raise TokenizerError(f"the vocabulary lacks the special tokens {missing}")
    if token2id["[PAD]"] != 0:
        raise TokenizerError(f"[PAD] has id {token2id['[PAD]']}, not 0 (the attention mask is id > 0)")
    backend = Tokenizer(models.WordPiece(token2id, unk_token="[UNK]", max_input_chars_per_word=MAX_WORD_CHARS))
    backend.normalizer = _normalizer()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    # ``vocab`` too: BertTokenizerFast rebuilds a default backend first, then takes ``tokenizer_object``.
    return BertTokenizerFast(tokenizer_object=backend, vocab=token2id, do_lower_case=False,
                             strip_accents=False, tokenize_chinese_chars=True)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def load_tokenizer(name_or_path: str | os.PathLike):
    """Load a fast BERT tokenizer from a local folder or file, or from the Hugging Face hub.

    A folder written by ``save_pretrained`` is loaded as saved; a folder holding only a
    ``vocab.txt`` (or a ``.txt`` vocabulary file) is loaded *cased*, since every tokenizer of this
    project is cased. With ``HF_HUB_OFFLINE=1`` a hub name is looked up in the local cache only,
    so an uncached name fails at once.

    Raises:
        TokenizerError: a path that does not exist, a name the hub cannot give (the message
            names ``--tokenizer train`` and local paths), or a tokenizer without a fast backend
            or the special tokens (see :func:`special_ids`).
    """
    from transformers import BertTokenizerFast  # AutoTokenizer is imported only when needed: it imports torch

    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_file():
        vocab = path.read_text(encoding="utf-8").splitlines()
        tokenizer = build_tokenizer(vocab)
    elif path.is_dir():
        try:
            config = path / "tokenizer_config.json"
            if config.is_file():
                saved_class = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
                if saved_class in (None, "BertTokenizer", "BertTokenizerFast"):
                    tokenizer = BertTokenizerFast.from_pretrained(str(path))
                else:
                    from transformers import AutoTokenizer

                    tokenizer = AutoTokenizer.from_pretrained(str(path))
            elif (path / "tokenizer.json").is_file():
                # Without a config, BertTokenizerFast would lowercase: follow the saved normaliser.
                norm = json.loads((path / "tokenizer.json").read_text(encoding="utf-8")).get("normalizer") or {}
                tokenizer = BertTokenizerFast.from_pretrained(
                    str(path), do_lower_case=bool(norm.get("lowercase", False)),
                    strip_accents=norm.get("strip_accents", False))
            elif (path / VOCAB_TXT).is_file():
                # from_pretrained would lowercase a bare vocab.txt; this project is cased.
                tokenizer = BertTokenizerFast.from_pretrained(str(path), do_lower_case=False,
                                                              strip_accents=False)
            else:
                raise TokenizerError(f"{path}: no tokenizer.json, tokenizer_config.json or vocab.txt in this folder")
        except TokenizerError:
            raise
        except Exception as err:  # transformers raises many kinds; all mean "not a tokenizer"
            raise TokenizerError(f"{path}: cannot load a tokenizer from this folder: {err}") from None
    elif _looks_like_path(name):
        raise TokenizerError(f"tokenizer path {name} does not exist; give a folder written by "
                             f"save_pretrained, or use --tokenizer train to learn one from the data")
    else:
        from transformers import AutoTokenizer

        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
        except Exception as err:
            raise TokenizerError(
                f"cannot load tokenizer {name!r} from the Hugging Face hub"
                f"{' (HF_HUB_OFFLINE is set and it is not cached)' if offline else ''}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. Use --tokenizer train "
                f"to learn a vocabulary from the data, or --tokenizer <local path> to a saved tokenizer "
                f"folder") from None
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerError(f"{name}: not a fast (tokenizers-backed) tokenizer")
    special_ids(tokenizer)  # fail now, not halfway through indexing
    return tokenizer


def special_ids(tokenizer) -> dict[str, int]:
    """``{"pad", "unk", "cls", "sep", "mask"}`` -> ids of ``tokenizer``.

    Raises:
        TokenizerError: a special token is missing, or the pad id is not 0 (the text encoder's
            attention mask is ``id > 0``, so padding must be id 0).
    """
    ids = {key: getattr(tokenizer, f"{key}_token_id", None) for key in ("pad", "unk", "cls", "sep", "mask")}
    missing = [key for key, value in ids.items() if value is None]
    if missing:
        raise TokenizerError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no "
                             f"{', '.join(missing)} token; a BERT WordPiece tokenizer is needed")
    if ids["pad"] != 0:
        raise TokenizerError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has pad id {ids['pad']}, "
                             f"not 0: the attention mask is id > 0, so padding must be id 0; use "
                             f"--tokenizer train or a BERT tokenizer with [PAD] = 0")
    return {key: int(value) for key, value in ids.items()}


def save_tokenizer(tokenizer, out_dir: str | os.PathLike) -> None:
    """``save_pretrained`` into ``out_dir``, plus a ``vocab.txt`` (one token per line, by id)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise TokenizerError("the tokenizer's vocabulary ids are not 0..n-1")
    atomic_write_text(out_dir / VOCAB_TXT, "".join(f"{token}\n" for token, _ in by_id))


class ChunkEncoder:
    """Token ids (no special tokens) of texts, as native int32 bytes, each distinct chunk tokenised once.

    The BERT normaliser acts on each character alone and the BERT pre-tokenizer always splits at
    an ASCII space, so a text's ids are the concatenation of its space-separated chunks' ids.
    Recipes repeat their words ("1", "cup", "sugar.") endlessly: after the first batches nearly
    every chunk is in the cache and a text costs one split and one bytes join, in C. The cache is
    emptied when it would pass ``max_entries`` chunks (bounded memory; the ids never depend on it).
    With another normaliser or pre-tokenizer, or an added token holding a space, whole texts are
    tokenised instead. Not thread-safe: one worker thread uses it.
    """

    def __init__(self, tokenizer, max_entries: int = CACHE_ENTRIES) -> None:
        from tokenizers import normalizers, pre_tokenizers

        backend = tokenizer.backend_tokenizer
        self._encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
        self._cache: dict[str, bytes] = {"": b""}
        self._max = max_entries
        self.chunked = (isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
                        and (backend.normalizer is None
                             or isinstance(backend.normalizer, normalizers.BertNormalizer))
                        and not any(" " in token for token in tokenizer.get_added_vocab()))

    def _tokenise(self, texts: list[str]) -> list[bytes]:
        out = []
        for start in range(0, len(texts), 2048):  # slices: the Encoding objects are heavy
            out += [np.array(e.ids, dtype=np.int32).tobytes()
                    for e in self._encode_batch(texts[start:start + 2048], add_special_tokens=False)]
        return out

    def __call__(self, texts: list[str]) -> list[bytes]:
        if not self.chunked:
            return self._tokenise(texts)
        cache = self._cache
        chunked = [text.split(" ") for text in texts]
        missing = [c for c in dict.fromkeys(chain.from_iterable(chunked)) if c not in cache]
        if len(cache) + len(missing) > self._max:
            cache.clear()
            cache[""] = b""
            missing = [c for c in dict.fromkeys(chain.from_iterable(chunked)) if c not in cache]
        cache.update(zip(missing, self._tokenise(missing)))
        join = b"".join
        return [join(map(cache.__getitem__, chunks)) for chunks in chunked]


class WordCounter:
    """Counts the words the BERT pre-tokenizer makes of texts, fed one text at a time.

    Texts are first split on whitespace in C (``str.split``) and the distinct chunks are
    normalised and pre-tokenised only once each, which is many times faster than
    pre-tokenising every text.
    """

    def __init__(self, flush_every: int = 1_000_000) -> None:
        from tokenizers import pre_tokenizers

        self._normalizer = _normalizer()
        self._pre = pre_tokenizers.BertPreTokenizer()
        self._chunks: Counter[str] = Counter()
        self._words: Counter[str] = Counter()
        self._flush_every = flush_every

    def add(self, text: str) -> None:
        """Count the words of ``text``."""
        self._chunks.update(text.split())
        if len(self._chunks) >= self._flush_every:
            self._flush()

    def _flush(self) -> None:
        normalize, pre = self._normalizer.normalize_str, self._pre.pre_tokenize_str
        words = self._words
        for chunk, count in self._chunks.items():
            for word, _ in pre(normalize(chunk)):
                words[word] += count
        self._chunks.clear()

    def counts(self) -> Counter[str]:
        """The word counts so far."""
        self._flush()
        return self._words


def count_words(texts: Iterable[str]) -> Counter[str]:
    """Word counts of ``texts`` as the BERT pre-tokenizer splits them (cased, accents kept)."""
    counter = WordCounter()
    for text in texts:
        counter.add(text)
    return counter.counts()


def _merge_word(symbols: list[int], a: int, b: int, new: int) -> list[int]:
    out, i, n = [], 0, len(symbols)
    while i < n:
        if i + 1 < n and symbols[i] == a and symbols[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_vocab(word_counts: Mapping[str, int], vocab_size: int, max_words: int | None = MAX_WORDS) -> list[str]:
    """Learn a WordPiece vocabulary of at most ``vocab_size`` tokens from word counts.

    Deterministic: the same counts give the same list. The alphabet (every character and its
    ``##`` form) is always included so no word needlessly becomes ``[UNK]``; if it alone would not
    fit, the most frequent characters are kept (ties by character). Then the most frequent pair
    of adjacent symbols (ties: smallest pair of strings) is merged, repeatedly, until the
    vocabulary is full or no pair is left. Pair counts are kept up to date incrementally, touching
    only the words holding the merged pair, with a lazily-invalidated heap.

    Args:
        word_counts: word -> count (words as the BERT pre-tokenizer yields them).
        vocab_size: the total size, special tokens included.
        max_words: merges are learnt from this many most frequent words (ties by word), which
            bounds time and memory on a large corpus; characters come from every word. None: all.

    Returns:
        The vocabulary, token ``i`` having id ``i``.
    """
    room = vocab_size - len(SPECIAL_TOKENS)
    if room < 2:
        raise ValueError(f"vocab_size {vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} special tokens")
    char_counts: Counter[str] = Counter()
    for word, count in word_counts.items():
        for char in word:
            char_counts[char] += count
    chars = sorted(char_counts)
    if 2 * len(chars) > room:
        chars = sorted(sorted(chars, key=lambda c: (-char_counts[c], c))[:room // 2])
    charset = set(chars)
    vocab = list(SPECIAL_TOKENS) + sorted(set(chars) | {"##" + c for c in chars})
    token2id = {token: i for i, token in enumerate(vocab)}

    # Words as symbol ids; single characters cannot merge and over-long words become [UNK].
    words: list[list[int]] = []
    counts: list[int] = []
    items = word_counts.items()
    if max_words is not None and len(word_counts) > max_words:
        items = sorted(items, key=lambda item: (-item[1], item[0]))[:max_words]
    for word, count in sorted(items):
        if count <= 0 or not 2 <= len(word) <= MAX_WORD_CHARS or not charset.issuperset(word):
            continue
        words.append([token2id[word[0]]] + [token2id["##" + c] for c in word[1:]])
        counts.append(count)

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # may hold words that lost the pair
    for wi, symbols in enumerate(words):
        count = counts[wi]
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += count
            where[pair].add(wi)
    # Heap entries (-count, string a, string b, a, b): most frequent first, ties by strings.
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg, str_a, str_b, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        merged = str_a + str_b[2:]  # b is always word-internal ("##...")
        new = token2id.get(merged)
        if new is None:
            new = token2id[merged] = len(vocab)
            vocab.append(merged)
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for wi in where.pop((a, b)):
            symbols = words[wi]
            if a not in symbols:
                continue
            out = _merge_word(symbols, a, b, new)
            if len(out) == len(symbols):
                continue
            count = counts[wi]
            for pair in zip(symbols, symbols[1:]):
                delta[pair] -= count
            for pair in zip(out, out[1:]):
                delta[pair] += count
                if new in pair:  # other pairs were already in this word, so already in ``where``
                    where[pair].add(wi)
            words[wi] = out
        for pair, change in delta.items():
            if change == 0:
                continue
            total = pair_counts[pair] + change
            if total > 0:
                pair_counts[pair] = total
                heapq.heappush(heap, (-total, vocab[pair[0]], vocab[pair[1]], pair[0], pair[1]))
            else:
                del pair_counts[pair]
    return vocab


def train_wordpiece_from_counts(word_counts: Mapping[str, int], vocab_size: int):
    """A cased fast BERT tokenizer whose vocabulary :func:`learn_vocab` learns from ``word_counts``."""
    return build_tokenizer(learn_vocab(word_counts, vocab_size))


def train_wordpiece(texts: Iterable[str], vocab_size: int):
    """Learn, deterministically, a cased WordPiece tokenizer of ``vocab_size`` tokens from ``texts``.

    Returns:
        A ``BertTokenizerFast`` ([PAD] id 0); save it with :func:`save_tokenizer`.
    """
    return train_wordpiece_from_counts(count_words(texts), vocab_size)
