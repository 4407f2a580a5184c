"""Tiny models built on the spot for tests and benches (nothing can be downloaded here).

Import from the repository root: ``from tests.tiny_models import build_tiny_fsmt`` (``tests`` is a
namespace package; ``bench/translate.py`` uses it too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def build_tiny_fsmt(out_dir: str | os.PathLike, corpus: Iterable[str], langs: tuple[str, str] = ("en", "de"),
                    num_merges: int = 200, d_model: int = 32, layers: int = 1, seed: int = 0,
                    init_std: float = 0.3) -> Path:
    """Save a tiny randomly initialised FSMT model with real tokenizer files, for tests and benches.

    The tokenizer files (``vocab-src.json``, ``vocab-tgt.json``, ``merges.txt``) come from a
    deterministic BPE learnt on ``corpus`` after the Moses tokenization FSMT applies, so every
    sentence of the corpus is encoded without unknown tokens. The weights are random: the
    "translations" are garbage, but deterministic; ``init_std`` well above FSMT's 0.02 makes them
    depend on the input. Loadable with the transformers Auto classes.

    Returns:
        ``out_dir`` as a Path.
    """
    import torch
    from transformers import FSMTConfig, FSMTForConditionalGeneration, FSMTTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"src_vocab_file": out_dir / "vocab-src.json", "tgt_vocab_file": out_dir / "vocab-tgt.json",
             "merges_file": out_dir / "merges.txt"}

    def save_files(vocab: dict[str, int], merges: list[tuple[str, str]]) -> FSMTTokenizer:
        for key in ("src_vocab_file", "tgt_vocab_file"):
            files[key].write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        files["merges_file"].write_text("".join(f"{a} {b} 1\n" for a, b in merges), encoding="utf-8")
        return FSMTTokenizer(langs=list(langs), **{k: str(v) for k, v in files.items()})

    # A bootstrap tokenizer gives the exact pre-BPE tokens FSMT will see (Moses normalisation,
    # punctuation rewriting and tokenization), so the learnt vocabulary covers them.
    boot = save_files({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}, [])
    words: dict[tuple[str, ...], int] = {}
    for text in corpus:
        for token in boot.moses_tokenize(boot.moses_pipeline(text, langs[0]), langs[0]):
            word = (*token[:-1], token[-1] + "</w>")
            words[word] = words.get(word, 0) + 1
    symbols = {s for word in words for s in word}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):  # classic BPE; ties broken by the pair, so the result is fixed
        pairs: dict[tuple[str, str], int] = {}
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] = pairs.get(pair, 0) + freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        symbols.add(best[0] + best[1])
        merged: dict[tuple[str, ...], int] = {}
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + freq
        words = merged
    vocab = {tok: i for i, tok in enumerate(["<s>", "<pad>", "</s>", "<unk>", *sorted(symbols)])}
    tokenizer = save_files(vocab, merges)
    config = FSMTConfig(langs=list(langs), src_vocab_size=len(vocab), tgt_vocab_size=len(vocab),
                        d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                        encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
                        max_position_embeddings=256, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
                        init_std=init_std)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = FSMTForConditionalGeneration(config).eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
