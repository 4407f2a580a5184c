"""translate_text.py: alignment, empty texts, deduplication, crash-safe resume, shards, CLI end to end."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import translate_text
from data.recipe1m import iter_layer1
from data.translation import (
    TranslationCache,
    batch_digest,
    build_tiny_fsmt,
    collect_unique,
    is_empty,
    num_batches,
    parse_shard,
    sort_key,
    translate_batches,
)

# Duplicates across recipes and across fields, empty and whitespace-only texts, an empty title,
# an empty ingredient list, non-ASCII text.
RECIPES = [
    ("000000000a", "train", "Chocolate Cake", ["1 cup sugar", "", "2 eggs", "salt and pepper"],
     ["Preheat the oven to 350 degrees.", "Mix the flour and butter.", "   ", "Bake for 30 minutes."]),
    ("000000000b", "val", "", ["1 cup sugar", "salt and pepper", "1 cup sugar"],
     ["Serve.", "Preheat the oven to 350 degrees."]),
    ("000000000c", "test", "Crème brûlée", [], ["Whisk the cream; chill overnight (8 hours).", ""]),
    ("000000000d", "train", "Chocolate Cake", ["200 g dark chocolate", "2 eggs"],
     ["Melt the chocolate.", "Serve."]),
    ("000000000e", "train", "Salt and pepper", ["salt and pepper", "1 tsp vanilla-extract"],
     ["Mix the flour and butter.", "Bake for 30 minutes.", "Let it cool down before serving."]),
    ("000000000f", "val", "Easy Bread", ["3 cups flour", "1 cup warm water", "2 tsp yeast", ""],
     ["Knead for 10 minutes.", "Let rise for 1 hour.", "Bake for 30 minutes.", "Serve."]),
]
BEAM, MAX_LEN, BATCH = "2", "6", "4"


def write_layer1(folder: Path, recipes=RECIPES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = [{"id": rid, "url": f"http://example.org/{rid}", "partition": part, "title": title,
                "ingredients": [{"text": t} for t in ingr], "instructions": [{"text": t} for t in inst]}
               for rid, part, title, ingr, inst in recipes]
    (folder / "layer1.json").write_text(json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8")
    return folder


def all_texts(recipes=RECIPES) -> list[str]:
    return [t for _, _, title, ingr, inst in recipes for t in [title, *ingr, *inst]]


def tagger(calls: list[list[str]] | None = None):
    """A fake translator tagging each sentence with its source; records every batch it sees."""
    def translate(sentences: list[str]) -> list[str]:
        if calls is not None:
            calls.append(list(sentences))
        return [f"<{s}>" for s in sentences]
    return translate


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: one thread avoids oversubscription stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_fsmt(tmp_path_factory) -> Path:
    return build_tiny_fsmt(tmp_path_factory.mktemp("fsmt"), all_texts(), langs=("en", "de"))


def fsmt_args(r1m: Path, model: Path, *extra: str) -> list[str]:
    return ["de", "--r1m_path", str(r1m), "--model", str(model), "--beam", BEAM, "--max_length", MAX_LEN,
            "--batch_size", BATCH, "--no_cuda", *extra]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_fsmt) -> tuple[bytes, dict]:
    """An uninterrupted single-process run through the CLI, model loaded from its folder."""
    r1m = write_layer1(tmp_path_factory.mktemp("ref"))
    result = translate_text.main(fsmt_args(r1m, tiny_fsmt))
    return (r1m / "layer1_de.json").read_bytes(), result


def test_collect_unique_counts_and_order(tmp_path):
    texts = all_texts()
    unique, stats = collect_unique(iter_layer1(write_layer1(tmp_path) / "layer1.json", "en"))
    non_empty = [t for t in texts if t.strip()]
    assert stats.to_dict() == {"recipes": len(RECIPES), "texts": len(texts), "empty": len(texts) - len(non_empty),
                               "sentences": len(non_empty), "unique": len(set(non_empty))}
    assert unique == sorted(set(non_empty), key=lambda t: (len(t), t))
    assert stats.unique < stats.sentences  # the corpus repeats lines


def test_alignment_empty_texts_and_dedup(tmp_path):
    r1m = write_layer1(tmp_path)
    calls: list[list[str]] = []
    result = translate_text.main(["de", "--r1m_path", str(r1m), "--model", "fake-tagger", "--batch_size", "3"],
                                 translate_fn=tagger(calls))
    out = json.loads((r1m / "layer1_de.json").read_text(encoding="utf-8"))
    assert [e["id"] for e in out] == [r[0] for r in RECIPES]
    for entry, (rid, part, title, ingr, inst) in zip(out, RECIPES):
        assert list(entry) == ["id", "url", "partition", "title_de", "ingredients_de", "instructions_de"]
        assert entry["url"] == f"http://example.org/{rid}" and entry["partition"] == part

        def expect(text: str) -> str:
            return "" if is_empty(text) else f"<{text}>"
        assert entry["title_de"] == expect(title)
        assert [x["text"] for x in entry["ingredients_de"]] == [expect(t) for t in ingr]
        assert [x["text"] for x in entry["instructions_de"]] == [expect(t) for t in inst]

    seen = [s for batch in calls for s in batch]
    non_empty = [t for t in all_texts() if t.strip()]
    assert sorted(seen) == sorted(set(non_empty))  # each distinct sentence exactly once, no empties
    assert all(len(b) <= 3 for b in calls)
    assert seen == sorted(seen, key=sort_key)  # batches formed over the length-sorted list
    assert result["stats"]["sentences"] == len(non_empty) and result["stats"]["unique"] == len(set(non_empty))
    assert result["batches"] == len(calls) == num_batches(len(set(non_empty)), 3)

    # Back-translation reads layer1_de.json and writes the de-en fields.
    translate_text.main(["de-en", "--r1m_path", str(r1m), "--model", "fake-tagger"], translate_fn=tagger())
    back = list(iter_layer1(r1m / "layer1_de-en.json", "de-en"))
    assert [(r.id, r.partition) for r in back] == [(r[0], r[1]) for r in RECIPES]
    for recipe, (_, _, title, ingr, inst) in zip(back, RECIPES):
        got = [recipe.title, *recipe.ingredients, *recipe.instructions]
        assert got == ["" if is_empty(t) else f"<<{t}>>" for t in [title, *ingr, *inst]]


def test_limit_and_rerun_from_cache(tmp_path):
    r1m = write_layer1(tmp_path)
    translate_text.main(["fr", "--r1m_path", str(r1m), "--model", "fake", "--limit", "2"], translate_fn=tagger())
    out = json.loads((r1m / "layer1_fr.json").read_text(encoding="utf-8"))
    assert [e["id"] for e in out] == ["000000000a", "000000000b"]
    assert out[1]["ingredients_fr"] == [{"text": "<1 cup sugar>"}, {"text": "<salt and pepper>"},
                                        {"text": "<1 cup sugar>"}]

    def refuse(sentences):
        raise AssertionError("a finished run must not translate again")
    again = translate_text.main(["fr", "--r1m_path", str(r1m), "--model", "fake", "--limit", "2"],
                                translate_fn=refuse)
    assert again["translated_batches"] == 0 and again["cached_batches"] == again["batches"]


def test_cli_end_to_end_tiny_fsmt(tmp_path, tiny_fsmt, reference_run):
    ref_bytes, ref_result = reference_run
    out = json.loads(ref_bytes)
    assert len(out) == len(RECIPES)
    translation: dict[str, str] = {}
    for entry, (_, _, title, ingr, inst) in zip(out, RECIPES):
        pairs = [(title, entry["title_de"])]
        assert len(entry["ingredients_de"]) == len(ingr) and len(entry["instructions_de"]) == len(inst)
        pairs += [(s, x["text"]) for s, x in zip(ingr, entry["ingredients_de"])]
        pairs += [(s, x["text"]) for s, x in zip(inst, entry["instructions_de"])]
        for src, dst in pairs:
            assert isinstance(dst, str)
            if is_empty(src):
                assert dst == ""
            else:
                assert translation.setdefault(src, dst) == dst  # one translation per distinct sentence
    assert len(set(translation.values())) > 1  # the random model does read its input
    assert ref_result["translated_batches"] == ref_result["batches"]

    # A fresh run (own cache) translates again and writes the same bytes: deterministic.
    r1m = write_layer1(tmp_path / "again")
    translate_text.main(fsmt_args(r1m, tiny_fsmt, "--cache_dir", str(tmp_path / "cache2")))
    assert (r1m / "layer1_de.json").read_bytes() == ref_bytes


def test_resume_after_kill_equals_uninterrupted(tmp_path, tiny_fsmt, reference_run):
    translator = translate_text.HFTranslator(str(tiny_fsmt), torch.device("cpu"), False, int(BEAM), int(MAX_LEN))
    calls = []

    class Killed(Exception):
        pass

    def dies_after_two(sentences):
        if len(calls) == 2:
            raise Killed
        calls.append(sentences)
        return translator(sentences)

    r1m = write_layer1(tmp_path)
    with pytest.raises(Killed):
        translate_text.main(fsmt_args(r1m, tiny_fsmt), translate_fn=dies_after_two)
    assert not (r1m / "layer1_de.json").exists()
    cache_dir = next((r1m / ".translate_cache" / "de").iterdir())
    shard_file = cache_dir / "shard-0-of-1.jsonl"
    assert len(shard_file.read_text(encoding="utf-8").splitlines()) == 2
    with open(shard_file, "ab") as handle:  # a kill in the middle of writing the third record
        handle.write(b'{"batch": 2, "digest": "0123", "transl')

    calls.clear()
    result = translate_text.main(fsmt_args(r1m, tiny_fsmt), translate_fn=lambda s: calls.append(s) or translator(s))
    assert result["cached_batches"] == 2 and len(calls) == result["batches"] - 2
    assert (r1m / "layer1_de.json").read_bytes() == reference_run[0]
    lines = shard_file.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line)["batch"] >= 0 for line in lines[:-1])


def test_two_shards_equal_one_process(tmp_path, tiny_fsmt, reference_run):
    r1m = write_layer1(tmp_path)
    first = translate_text.main(fsmt_args(r1m, tiny_fsmt, "--shard", "0/2"))
    assert first["output"] is None and not (r1m / "layer1_de.json").exists()
    with pytest.raises(SystemExit, match="--shard 1/2"):
        translate_text.main(fsmt_args(r1m, tiny_fsmt, "--assemble"))
    second = translate_text.main(fsmt_args(r1m, tiny_fsmt, "--shard", "1/2"))
    assert first["translated_batches"] + second["translated_batches"] == first["batches"]
    assert second["output"] == str(r1m / "layer1_de.json")
    assert (r1m / "layer1_de.json").read_bytes() == reference_run[0]
    # --assemble alone rewrites the same file from the cache.
    (r1m / "layer1_de.json").unlink()
    translate_text.main(fsmt_args(r1m, tiny_fsmt, "--assemble"))
    assert (r1m / "layer1_de.json").read_bytes() == reference_run[0]


def test_torchrun_ranks(tmp_path, monkeypatch):
    r1m = write_layer1(tmp_path)
    argv = ["ru", "--r1m_path", str(r1m), "--model", "fake", "--batch_size", "2", "--no_cuda", "--wait", "0"]
    calls: list[list[str]] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert translate_text.main(argv, translate_fn=tagger(calls))["output"] is None  # rank 1 never writes
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = translate_text.main(argv, translate_fn=tagger(calls))
    assert result["output"] == str(r1m / "layer1_ru.json")
    assert sorted(s for b in calls for s in b) == sorted({t for t in all_texts() if t.strip()})
    monkeypatch.delenv("WORLD_SIZE")
    single = write_layer1(tmp_path / "single")
    translate_text.main(["ru", "--r1m_path", str(single), "--model", "fake", "--batch_size", "2"],
                        translate_fn=tagger())
    assert (r1m / "layer1_ru.json").read_bytes() == (single / "layer1_ru.json").read_bytes()


def test_cache_skips_bad_records(tmp_path):
    unique = ["a", "bb", "ccc", "dddd", "eeeee"]
    cache = TranslationCache(tmp_path, {"model": "m", "beam": 5})
    other = TranslationCache(tmp_path, {"model": "m", "beam": 4})
    assert cache.dir != other.dir  # the settings key the folder
    cache.prepare()
    with cache.writer(0, 1) as writer:
        writer.append(0, unique[0:2], ["A", "BB"])
        writer.append(2, unique[4:5], ["E"])
    with open(cache.dir / "shard-0-of-1.jsonl", "ab") as handle:
        handle.write(json.dumps({"batch": 1, "digest": "bad", "translations": ["C", "D"]}).encode() + b"\n")
        handle.write(json.dumps({"batch": 1, "digest": batch_digest(unique[2:4]),
                                 "translations": ["C"]}).encode() + b"\n")  # wrong count
        handle.write(b'{"batch": 1, "dig')
    assert cache.load(unique, 2) == {0: ["A", "BB"], 2: ["E"]}
    with cache.writer(0, 1) as writer:  # appending first cuts the partial line
        writer.append(1, unique[2:4], ["C", "D"])
    assert cache.load(unique, 2) == {0: ["A", "BB"], 1: ["C", "D"], 2: ["E"]}
    with cache.writer(0, 1) as writer, pytest.raises(RuntimeError, match="batch 0"):
        translate_batches(unique, 2, [0], lambda sentences: ["only one"], writer)
    # Batch 1 of another sentence list holds other sentences: its record does not apply.
    assert cache.load(["a", "bb", "cc", "dddd"], 2) == {0: ["A", "BB"]}


def test_bad_inputs(tmp_path):
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    r1m = write_layer1(tmp_path)
    with pytest.raises(SystemExit, match=r"translate_text\.py de"):
        translate_text.main(["de-en", "--r1m_path", str(r1m)], translate_fn=tagger())
    with pytest.raises(SystemExit, match="--model"):
        translate_text.main(["de", "--r1m_path", str(r1m), "--model", str(tmp_path / "no_such_model")])
    empty_model = tmp_path / "empty_model"
    empty_model.mkdir()
    with pytest.raises(SystemExit, match=r"--model.*no config.json"):
        translate_text.main(["de", "--r1m_path", str(r1m), "--model", str(empty_model), "--no_cuda"])
    (empty_model / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"could not load --model"):
        translate_text.main(["de", "--r1m_path", str(r1m), "--model", str(empty_model), "--no_cuda"])


def test_unreachable_hub_model_names_a_local_path(tmp_path, monkeypatch):
    import transformers

    def offline(name, *args, **kwargs):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    r1m = write_layer1(tmp_path)
    with pytest.raises(SystemExit, match=r"(?s)--model 'facebook/wmt19-en-de'.*--model DIR, a local path"):
        translate_text.main(["de", "--r1m_path", str(r1m), "--no_cuda"])


def test_bad_layer1_entry(tmp_path):
    r1m = write_layer1(tmp_path)
    entries = json.loads((r1m / "layer1.json").read_text(encoding="utf-8"))
    entries[3]["ingredients"][1] = {"txt": "2 eggs"}
    (r1m / "layer1.json").write_text(json.dumps(entries), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"layer1\.json: entry 3 \(id '000000000d'\)"):
        translate_text.main(["de", "--r1m_path", str(r1m), "--model", "fake"], translate_fn=tagger())


def test_marian_model_end_to_end(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    model_dir = tmp_path / "marian"
    model_dir.mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(all_texts() * 3), model_prefix=str(model_dir / "source"), vocab_size=80,
        model_type="bpe", character_coverage=1.0, hard_vocab_limit=False, bos_id=-1, eos_id=-1, unk_id=0,
        pad_id=-1, num_threads=1, minloglevel=2)
    os.replace(model_dir / "source.model", model_dir / "source.spm")
    shutil.copy(model_dir / "source.spm", model_dir / "target.spm")
    pieces = spm.SentencePieceProcessor(model_file=str(model_dir / "source.spm"))
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for i in range(pieces.get_piece_size()):
        vocab.setdefault(pieces.id_to_piece(i), len(vocab))
    (model_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(source_spm=str(model_dir / "source.spm"), target_spm=str(model_dir / "target.spm"),
                                vocab=str(model_dir / "vocab.json"), source_lang="en", target_lang="fr")
    config = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=2, eos_token_id=0,
                          decoder_start_token_id=2, forced_eos_token_id=0)
    torch.manual_seed(0)
    MarianMTModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    r1m = write_layer1(tmp_path / "r1m")
    result = translate_text.main(["fr", "--r1m_path", str(r1m), "--model", str(model_dir), "--beam", "2",
                                  "--max_length", "5", "--no_cuda", "--limit", "3"])
    assert result["translated_batches"] == result["batches"] == 1
    out = json.loads((r1m / "layer1_fr.json").read_text(encoding="utf-8"))
    assert [e["id"] for e in out] == [r[0] for r in RECIPES[:3]]
    for entry, (_, _, title, ingr, inst) in zip(out, RECIPES[:3]):
        got = [entry["title_fr"], *(x["text"] for x in entry["ingredients_fr"]),
               *(x["text"] for x in entry["instructions_fr"])]
        assert len(entry["ingredients_fr"]) == len(ingr) and len(entry["instructions_fr"]) == len(inst)
        # Empty sources stay empty (a random model may also say nothing for a real sentence).
        assert all(isinstance(t, str) and (t == "" or not is_empty(src))
                   for src, t in zip([title, *ingr, *inst], got))
        assert all(t == "" for src, t in zip([title, *ingr, *inst], got) if is_empty(src))


def test_bench_runs_both_ways():
    from bench.translate import main as bench_main
    from bench.translate import make_corpus

    corpus = make_corpus(4, seed=1)
    texts = [t for r in corpus for t in [r.title, *r.ingredients, *r.instructions] if t.strip()]
    result = bench_main(["--recipes", "4", "--seed", "1", "--d_model", "16", "--layers", "1", "--beam", "2",
                         "--max_length", "4", "--batch_size", "8", "--no_cuda", "--ablation"])
    assert result["sentences"] == len(texts) and result["unique"] == len(set(texts))
    assert result["ours_sps"] > 0 and result["reference_sps"] > 0 and result["sorted_no_dedup_sps"] > 0
    assert result["ratio"] == pytest.approx(result["ours_sps"] / result["reference_sps"])
