"""translate_text.py: alignment, empty texts, deduplication, crash-safe resume, shards, CLI end to end,
fairseq checkpoints converted to FSMT."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

import translate_text
from data.fairseq_convert import (
    FairseqConversionError,
    convert_fairseq_checkpoint,
    load_fairseq_checkpoint,
    read_fairseq_dict,
)
from data.recipe1m import iter_layer1
from data.translation import (
    TranslationCache,
    batch_digest,
    collect_unique,
    is_empty,
    num_batches,
    parse_shard,
    sort_key,
    translate_batches,
)
from tests.tiny_models import build_tiny_fsmt

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


# --------------------------------------------------------------------------- fairseq checkpoints

class AverageMeter:
    """Stands for fairseq.meters.AverageMeter, which old fairseq trainers pickled into extra_state."""

    def __init__(self):
        self.avg, self.count = 0.5, 3


def export_fairseq(hf_dir: Path, out: Path, *, old_names: bool, shared: bool, legacy: bool,
                   **arg_changes) -> Path:
    """Write ``hf_dir``'s FSMT model as a fairseq release folder: model1.pt, dict.en.txt, dict.de.txt, bpecodes.

    ``old_names``: 2019 fairseq names (stacked ``in_proj_weight``, ``layer_norms.<i>``, ``embed_out``,
    version counters, a pickled training meter), as in the WMT19 ``model1.pt``; else today's names.
    ``shared``: the model has one embedding for encoder, decoder and output (``share_all_embeddings``).
    ``legacy``: torch's pre-1.6 file format (what fairseq wrote in 2019).
    """
    from transformers import FSMTForConditionalGeneration

    model = FSMTForConditionalGeneration.from_pretrained(hf_dir)
    cfg = model.config
    weights = {k: v.clone() for k, v in model.model.state_dict().items() if ".embed_positions." not in k}
    if not shared:  # an unshared output projection is fairseq's decoder.embed_out
        weights["decoder.embed_out"] = weights.pop("decoder.output_projection.weight")
    else:
        del weights["decoder.output_projection.weight"]
    if old_names:
        for key in [k for k in weights if k.endswith(".q_proj.weight") or k.endswith(".q_proj.bias")]:
            prefix, kind = key.rsplit(".q_proj.", 1)
            weights[f"{prefix}.in_proj_{kind}"] = torch.cat(
                [weights.pop(f"{prefix}.{n}.{kind}") for n in ("q_proj", "k_proj", "v_proj")])
        for side, norms in (("encoder", ["self_attn_layer_norm", "final_layer_norm"]),
                            ("decoder", ["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"])):
            for key in [k for k in weights if k.startswith(f"{side}.layers.")]:
                for i, norm in enumerate(norms):
                    if f".{norm}." in key:
                        weights[key.replace(f".{norm}.", f".layer_norms.{i}.")] = weights.pop(key)
        for side in ("encoder", "decoder"):
            weights[f"{side}.version"] = torch.tensor([3.0])
            weights[f"{side}.embed_positions._float_tensor"] = torch.tensor([])
        weights["encoder.embed_positions.weights"] = torch.randn(9, cfg.d_model)  # pre-2019.08 sinusoid table
    else:
        weights["decoder.output_projection.weight"] = weights.get("decoder.embed_out",
                                                                  weights["decoder.embed_tokens.weight"])
        weights.pop("decoder.embed_out", None)
    args = argparse.Namespace(
        arch="transformer_wmt_en_de_big", source_lang="en", target_lang="de", bpe="fastbpe", tokenizer="moses",
        encoder_embed_dim=cfg.d_model, decoder_embed_dim=cfg.d_model,
        encoder_attention_heads=cfg.encoder_attention_heads, decoder_attention_heads=cfg.decoder_attention_heads,
        max_source_positions=cfg.max_position_embeddings, max_target_positions=cfg.max_position_embeddings,
        share_all_embeddings=shared, share_decoder_input_output_embed=shared, no_scale_embedding=False,
        encoder_normalize_before=False, decoder_normalize_before=False, encoder_learned_pos=False,
        decoder_learned_pos=False, activation_fn="relu", dropout=0.2, attention_dropout=0.1, relu_dropout=0.0)
    for key, value in arg_changes.items():
        setattr(args, key, value)
    out.mkdir(parents=True)
    # A pickled class of a module that is not installed at conversion time, as fairseq's meters are.
    package, meters = types.ModuleType("fairseq"), types.ModuleType("fairseq.meters")
    package.meters, meters.AverageMeter = meters, AverageMeter
    AverageMeter.__module__ = "fairseq.meters"
    sys.modules.update({"fairseq": package, "fairseq.meters": meters})
    try:
        torch.save({"args": args, "model": weights, "optimizer_history": [{"num_updates": 7}],
                    "extra_state": {"train_meters": {"loss": AverageMeter()}}}, out / "model1.pt",
                   _use_new_zipfile_serialization=not legacy)
    finally:
        del sys.modules["fairseq"], sys.modules["fairseq.meters"]
        AverageMeter.__module__ = __name__
    vocab = json.loads((hf_dir / "vocab-src.json").read_text(encoding="utf-8"))
    lines = [(tok[:-4] if tok.endswith("</w>") else tok + "@@") for tok, _ in sorted(vocab.items(), key=lambda x: x[1])
             if tok not in ("<s>", "<pad>", "</s>", "<unk>")]
    for lang in ("en", "de"):
        (out / f"dict.{lang}.txt").write_text("".join(f"{tok} {100 - i}\n" for i, tok in enumerate(lines)),
                                             encoding="utf-8")
    merges = (hf_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    (out / "bpecodes").write_text("".join(f"{' '.join(m.split()[:2])} {900 - i}\n" for i, m in enumerate(merges)),
                                  encoding="utf-8")
    return out / "model1.pt"


@pytest.fixture(scope="module")
def tiny_fsmt_shared(tmp_path_factory, tiny_fsmt) -> Path:
    """The tiny model with one embedding table for encoder input, decoder input and decoder output.

    Its layer norms get random gains and biases, so that mixing two of them up changes the output.
    """
    from transformers import FSMTForConditionalGeneration, FSMTTokenizer

    model = FSMTForConditionalGeneration.from_pretrained(tiny_fsmt)
    model.config.tie_word_embeddings = True
    shared = model.model.decoder.embed_tokens.weight
    model.model.encoder.embed_tokens.weight = shared
    model.model.decoder.output_projection.weight = shared
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    out = tmp_path_factory.mktemp("fsmt_shared")
    model.save_pretrained(out)
    FSMTTokenizer.from_pretrained(tiny_fsmt).save_pretrained(out)
    return out


def test_fairseq_checkpoint_converts_to_the_same_model(tmp_path, tiny_fsmt, reference_run):
    """2019-style fairseq release folder -> --convert_fairseq -> the translations of the original model."""
    ckpt = export_fairseq(tiny_fsmt, tmp_path / "wmt19.en-de", old_names=True, shared=False, legacy=True)
    r1m = write_layer1(tmp_path / "r1m")
    converted = tmp_path / "converted"
    result = translate_text.main(["de", "--convert_fairseq", str(ckpt), "--model", str(converted), "--r1m_path",
                                  str(r1m), "--beam", BEAM, "--max_length", MAX_LEN, "--batch_size", BATCH,
                                  "--no_cuda"])
    assert result["output"] == str(r1m / "layer1_de.json")
    assert (r1m / "layer1_de.json").read_bytes() == reference_run[0]  # aligned entries, same translations
    config = json.loads((converted / "config.json").read_text(encoding="utf-8"))
    assert config["langs"] == ["en", "de"] and config["tie_word_embeddings"] is False
    generation = json.loads((converted / "generation_config.json").read_text(encoding="utf-8"))
    # fairseq's generator: beam 5, --lenpen 1, a sentence ends when its beam has 5 finished hypotheses.
    assert (generation["num_beams"], generation["length_penalty"], generation["early_stopping"]) == (5, 1.0, True)
    for name in ("vocab-src.json", "vocab-tgt.json"):
        assert json.loads((converted / name).read_text(encoding="utf-8")) == \
            json.loads((tiny_fsmt / "vocab-src.json").read_text(encoding="utf-8"))
    pairs = [line.split()[:2] for line in (tiny_fsmt / "merges.txt").read_text(encoding="utf-8").splitlines()]
    assert [line.split() for line in (converted / "merges.txt").read_text(encoding="utf-8").splitlines()] == pairs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".converted")]  # no temporary folder left

    # A second conversion into the same folder is refused; the folder is kept.
    with pytest.raises(SystemExit, match="already exists"):
        translate_text.main(["de", "--convert_fairseq", str(ckpt), "--model", str(converted), "--convert_only"])
    # The en-de model is no Russian translator.
    with pytest.raises(SystemExit, match="translates en-de, not en-ru"):
        translate_text.main(["ru", "--model", str(converted), "--r1m_path", str(r1m), "--no_cuda"])


@pytest.mark.parametrize("old_names", [True, False], ids=["2019-names", "current-names"])
def test_fairseq_shared_embeddings_zip_format(tmp_path, tiny_fsmt_shared, old_names):
    """share_all_embeddings, the zip format, old or current weight names: the original's logits."""
    from transformers import FSMTForConditionalGeneration

    ckpt = export_fairseq(tiny_fsmt_shared, tmp_path / "release", old_names=old_names, shared=True, legacy=False)
    result = translate_text.main(["de", "--convert_fairseq", str(ckpt), "--model", str(tmp_path / "conv"),
                                  "--convert_only"])
    assert result == {"converted": str(tmp_path / "conv"), "output": None}
    assert json.loads((tmp_path / "conv" / "config.json").read_text(encoding="utf-8"))["tie_word_embeddings"] is True
    original = FSMTForConditionalGeneration.from_pretrained(tiny_fsmt_shared).eval()
    converted = FSMTForConditionalGeneration.from_pretrained(tmp_path / "conv").eval()
    ids = torch.tensor([[5, 9, 12, 2], [7, 2, 1, 1]])
    decoder = torch.tensor([[2, 6, 8], [2, 4, 1]])
    with torch.no_grad():
        want = original(input_ids=ids, attention_mask=ids.ne(1), decoder_input_ids=decoder).logits
        got = converted(input_ids=ids, attention_mask=ids.ne(1), decoder_input_ids=decoder).logits
    assert torch.allclose(got, want, atol=1e-5) and want.std() > 0.1


def test_fairseq_checkpoint_is_read_without_running_code(tmp_path, tiny_fsmt):
    ckpt = export_fairseq(tiny_fsmt, tmp_path / "release", old_names=True, shared=False, legacy=True)
    state = load_fairseq_checkpoint(ckpt)  # fairseq.meters is not importable here
    meter = state["extra_state"]["train_meters"]["loss"]
    assert type(meter).__name__ == "AverageMeter" and not isinstance(meter, AverageMeter)
    assert meter.state == {"avg": 0.5, "count": 3} and state["args"].source_lang == "en"


def test_fairseq_dict_numbering(tmp_path):
    path = tmp_path / "dict.en.txt"
    path.write_text("the 90\nca@@ 80\nke 70\nthe 5 #fairseq:overwrite\n", encoding="utf-8")
    assert read_fairseq_dict(path) == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "the": 7, "ca@@": 5, "ke": 6}
    path.write_text("the 90\nthe 80\n", encoding="utf-8")
    with pytest.raises(FairseqConversionError, match=r"dict\.en\.txt: line 2: duplicate token 'the'"):
        read_fairseq_dict(path)
    path.write_text("the\n", encoding="utf-8")
    with pytest.raises(FairseqConversionError, match="line 1: expected"):
        read_fairseq_dict(path)


def test_fairseq_files_that_are_not_release_files_are_typed_errors(tmp_path):
    """Files of another kind stop with a FairseqConversionError (an InputError) naming the file."""
    from utils.errors import InputError

    assert issubclass(FairseqConversionError, InputError)
    text = tmp_path / "model1.pt"
    text.write_text("hello\n", encoding="utf-8")  # the unpickler fails with a KeyError on it
    with pytest.raises(FairseqConversionError, match=r"model1\.pt: not a readable torch checkpoint \(KeyError"):
        load_fairseq_checkpoint(text)
    latin1 = tmp_path / "dict.de.txt"
    latin1.write_bytes("Stra\xdfe 12\n".encode("latin-1"))
    with pytest.raises(FairseqConversionError, match=r"dict\.de\.txt: not UTF-8 text"):
        read_fairseq_dict(latin1)


def test_fairseq_checkpoints_fsmt_cannot_hold(tmp_path, tiny_fsmt):
    prenorm = export_fairseq(tiny_fsmt, tmp_path / "prenorm", old_names=True, shared=False, legacy=True,
                             encoder_normalize_before=True)
    with pytest.raises(FairseqConversionError, match="encoder_normalize_before=True"):
        convert_fairseq_checkpoint(prenorm, tmp_path / "out1")
    ckpt = export_fairseq(tiny_fsmt, tmp_path / "nodict", old_names=True, shared=False, legacy=True)
    (ckpt.parent / "dict.de.txt").unlink()
    with pytest.raises(SystemExit, match=r"dict\.de\.txt: missing"):
        translate_text.main(["de", "--convert_fairseq", str(ckpt), "--model", str(tmp_path / "out2"),
                             "--convert_only"])
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
    with pytest.raises(SystemExit, match="--convert_only needs --convert_fairseq"):
        translate_text.main(["de", "--convert_only"])


def test_model_with_missing_weights_is_refused(tmp_path, tiny_fsmt):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_fsmt, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.decoder.output_projection.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    r1m = write_layer1(tmp_path / "r1m")
    with pytest.raises(SystemExit, match=r"lacks 1 weights \(model\.decoder\.output_projection\.weight\)"):
        translate_text.main(fsmt_args(r1m, broken))


def _refuse_loading(calls):
    def load(name, *args, **kwargs):
        calls.append(kwargs)
        raise OSError(f"the test stops here: {name}")
    return load


def test_offline_or_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    import huggingface_hub
    import transformers

    calls: list[dict] = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _refuse_loading(calls))
    r1m = write_layer1(tmp_path)
    # HF_HUB_OFFLINE (set for the tests) and a model not in the cache: no loading attempt at all.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(translate_text, "_hub_cached", lambda name: False)
    with pytest.raises(SystemExit, match=r"(?s)'facebook/wmt19-en-de': HF_HUB_OFFLINE is set.*--model DIR"):
        translate_text.main(["de", "--r1m_path", str(r1m), "--no_cuda"])
    assert calls == []
    # Online mode, but the hub's host does not answer: one connection try, then the advice.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    tries = []

    def unreachable(address, timeout=None):
        tries.append((address, timeout))
        raise OSError("Network is unreachable")
    monkeypatch.setattr("socket.create_connection", unreachable)
    with pytest.raises(SystemExit, match=r"(?s)the hub huggingface\.co is unreachable.*--model DIR"):
        translate_text.main(["de", "--r1m_path", str(r1m), "--no_cuda"])
    assert calls == [] and tries == [(("huggingface.co", 443), translate_text.HUB_TIMEOUT)]
    # A cached model loads from the cache only, without asking the hub.
    monkeypatch.setattr(translate_text, "_hub_cached", lambda name: True)
    with pytest.raises(SystemExit, match="the test stops here"):
        translate_text.main(["de", "--r1m_path", str(r1m), "--no_cuda"])
    assert calls == [{"local_files_only": True}]


def test_a_pickle_given_to_convert_fairseq_is_one_line(tmp_path):
    import pickle
    import subprocess

    path = tmp_path / "model1.pt"
    path.write_bytes(pickle.dumps({"model": {}, "run": os.system}, protocol=4))
    proc = subprocess.run([sys.executable, str(Path(translate_text.__file__)), "de", "--convert_fairseq",
                           str(path), "--model", str(tmp_path / "out"), "--convert_only"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"--convert_fairseq: {path}: cannot read the checkpoint safely")
    assert "allows: Unsupported operand" in lines[0] and "False" not in lines[0]  # never the advice to retry
    assert not (tmp_path / "out").exists()


def test_help_opens_with_usage_and_one_sentence(monkeypatch):
    """``--help`` starts with at most 5 lines (usage, one sentence) before the arguments; the rest is in docs/."""
    monkeypatch.setenv("COLUMNS", "80")
    head = translate_text.get_parser().format_help().split("\n\npositional arguments:")[0]
    assert len(head.splitlines()) <= 5, head
