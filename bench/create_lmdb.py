"""Speed and peak memory of create_lmdb.py's text indexing against the reference's procedure.

``python bench/create_lmdb.py [--recipes 20000] [--languages en,de]`` builds a synthetic
Recipe1M of recipes as long as real ones (about 200 tokens each), learns one WordPiece vocabulary
from it, then indexes it twice, each side in its own child process so that peak memory is its own:

* ``create_lmdb``: ``create_lmdb.main`` with that vocabulary (streamed files, fast tokenizer in
  batches, in parallel);
* ``reference``: the reference's procedure on the same vocabulary: every language file loaded
  with ``json.load`` and merged in memory, each id looked up in a Python list of keys, the
  pure-Python WordPiece tokenizer (``BertTokenizerLegacy``) called one text at a time, rows padded
  to ``--max_len`` and pickled into an LMDB.

It prints, measured side by side in this one run: recipes/s of each and their ratio (goal >= 5x),
and peak memory per 1,000 recipes (the child's peak resident memory minus its resident memory
before the work, so imports are not counted) and its ratio (goal <= 1/3). It also checks that both
sides produced the same token rows for a sample of recipes.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)  # run as a script: ``import create_lmdb`` must not find this file

SAMPLE = 200  # recipes whose rows both sides must agree on
_SYLLABLES = {
    "en": ("ba be bi bo bu ca ce co cu da de di do fa fe fi fo ga ge go la le li lo lu ma me mi mo "
           "na ne ni no pa pe pi po ra re ri ro sa se si so ta te ti to va ve vi wa we ya"),
    "de": "ba bä be bi bo bö bu bü ch da de di do ei fa fe fi ga ge gu ha he ka ke ku la le ma me mü na ne "
          "ra re sa sch se st ta te tü wa we za ze",
    "ru": "ба бе би бо бу ва ве ви во да де ди до жа за зе ка ке ко ла ле ли ло ма ме ми мо на не но па пе "
          "ра ре ро са се со та те то ча ше щи",
    "fr": "ba be bé bi bo ça ce cé co da de dé di do fa fe fé ga ge gé la le lé li lo ma me mé mi mo na ne "
          "né pa pe pé ra re ré sa se sé ta te té va ve",
}
_UNITS = ("cup", "cups", "g", "ml", "tablespoon", "teaspoons", "pinch", "oz", "lb", "cloves")


def _lexicon(lang: str, size: int, seed: int) -> list[str]:
    base = "en" if lang in ("en", "de-en", "ru-en") else lang
    syllables = _SYLLABLES[base].split()
    rng = np.random.default_rng([seed, sum(map(ord, lang))])
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(syllables[k] for k in rng.integers(0, len(syllables), rng.integers(1, 5)))] = None
    return list(words)


def make_corpus(out: Path, recipes: int, languages: list[str], seed: int = 0) -> None:
    """Write layer1 files, layer2.json, classes1M.pkl and keys files of ``recipes`` long recipes."""
    from data.recipe1m import PARTITIONS, write_classes, write_keys
    from utils.io import atomic_write_json

    rng = np.random.default_rng(seed)
    size = 6000
    zipf = 1.0 / (np.arange(size) + 10.0)
    zipf /= zipf.sum()
    lexicons = {lang: _lexicon(lang, size, seed) for lang in languages}
    ids = [f"{v:010x}" for v in rng.choice(1 << 40, recipes, replace=False)]
    partitions = rng.choice(3, recipes, p=[0.7, 0.15, 0.15])
    pool = rng.choice(size, recipes * 200, p=zipf).tolist()  # word indices, drawn at once (fast)
    cursor = 0

    def draw(n: int) -> list[int]:
        nonlocal cursor
        if cursor + n > len(pool):
            cursor = 0
        cursor += n
        return pool[cursor - n:cursor]

    structures = []  # per recipe: (title words, [(qty, unit, words)], [(words, comma at)])
    for _ in range(recipes):
        title = draw(int(rng.integers(3, 8)))
        ingrs = [(int(rng.integers(1, 500)), int(rng.integers(0, len(_UNITS))), draw(int(rng.integers(2, 5))))
                 for _ in range(rng.integers(6, 13))]
        insts = [(draw(int(n)), int(rng.integers(1, n))) for n in rng.integers(6, 16, rng.integers(5, 11))]
        structures.append((title, ingrs, insts))
    for lang in languages:
        lex = lexicons[lang]
        suffix = "" if lang == "en" else f"_{lang}"
        entries = []
        for rid, part, (title, ingrs, insts) in zip(ids, partitions, structures):
            words = [lex[k] for k in title]
            lines = [f"{q} {_UNITS[u]} " + " ".join(lex[k] for k in w) for q, u, w in ingrs]
            steps = []
            for w, comma in insts:
                text = [lex[k] for k in w]
                text[comma - 1] += ","
                steps.append(" ".join(text).capitalize() + ".")
            entries.append({"id": rid, f"title{suffix}": " ".join(words).title(),
                            f"ingredients{suffix}": [{"text": t} for t in lines],
                            f"instructions{suffix}": [{"text": t} for t in steps],
                            "partition": PARTITIONS[part], "url": f"https://example.invalid/{rid}"})
        atomic_write_json(out / ("layer1.json" if lang == "en" else f"layer1_{lang}.json"), entries)
    order = rng.permutation(recipes)
    layer2 = [{"id": ids[k], "images": [{"id": f"{ids[k]}{j}.jpg", "url": ""} for j in range(1 + k % 3)]}
              for k in order]
    atomic_write_json(out / "layer2.json", layer2)
    write_classes(out / "classes1M.pkl", {rid: int(k % 50) for k, rid in enumerate(ids) if k % 7},
                  {c: f"class{c}" for c in range(50)})
    for p, partition in enumerate(PARTITIONS):
        write_keys(out / f"{partition}_keys.pkl", [ids[k] for k in order if partitions[k] == p])


def _memory_kb() -> tuple[int, int]:
    """(current resident, peak resident) memory of this process in KiB."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def _reference(args: argparse.Namespace, out: Path) -> int:
    """The reference's procedure; returns the number of recipes indexed."""
    import lmdb
    from transformers import BertTokenizerLegacy

    from data.langs import LANGS
    from data.recipe1m import PARTITIONS, load_classes, load_keys

    r1m = Path(args.work_dir) / "r1m"
    tokenizer = BertTokenizerLegacy(vocab_file=str(Path(args.work_dir) / "tokenizer" / "vocab.txt"),
                                    do_lower_case=False)
    languages = [lang for lang in LANGS if lang in args.languages.split(",")]
    with open(r1m / "layer1.json", encoding="utf-8") as handle:
        dataset = {entry["id"]: entry for entry in json.load(handle)}
    for lang in languages[1:]:  # all language files merged in memory
        with open(r1m / f"layer1_{lang}.json", encoding="utf-8") as handle:
            for entry in json.load(handle):
                dataset[entry["id"]].update(entry)
    with open(r1m / "layer2.json", encoding="utf-8") as handle:
        layer2 = {entry["id"]: entry["images"] for entry in json.load(handle)}
    id2class, _ = load_classes(r1m / "classes1M.pkl")
    keys = {p: load_keys(r1m / f"{p}_keys.pkl") for p in PARTITIONS}  # lists, as the reference
    envs = {p: lmdb.open(str(out / f"{p}_lmdb"), map_size=1 << 36) for p in PARTITIONS}
    txns = {p: env.begin(write=True) for p, env in envs.items()}
    cls_id, indexed, sample = tokenizer.cls_token_id, 0, {}
    for rid, entry in dataset.items():
        partition = entry["partition"]
        if rid not in keys[partition] or not layer2.get(rid):  # a list lookup per recipe
            continue
        ids = np.zeros((len(languages), args.max_len), dtype=np.int32)
        parts = np.zeros((len(languages), args.max_len), dtype=np.int8)
        for row, lang in enumerate(languages):
            suffix = "" if lang == "en" else f"_{lang}"
            ingrs = [i["text"] for i in entry[f"ingredients{suffix}"] if i["text"].strip()]
            insts = [i["text"] for i in entry[f"instructions{suffix}"] if i["text"].strip()]
            texts = [entry[f"title{suffix}"] + ". \n\n ", ". \n ".join(ingrs) + ". \n\n ", ". \n ".join(insts)]
            tokens, codes = [cls_id], [-1]
            for code, text in zip((1, 2, 3), texts):  # one text at a time
                part = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text.replace("..", ".")))
                tokens += part
                codes += [code] * len(part)
            n = min(len(tokens), args.max_len)
            ids[row, :n], parts[row, :n] = tokens[:n], codes[:n]
        value = pickle.dumps({"ids": ids, "parts": parts, "classes": id2class.get(rid, 0) + 1,
                              "imgs": layer2[rid][:5]})
        txns[partition].put(rid.encode(), value)
        if len(sample) < SAMPLE:
            sample[rid] = ids
        indexed += 1
    for p in PARTITIONS:
        txns[p].commit()
        envs[p].close()
    np.savez(out / "sample.npz", ids=np.array(list(sample)), rows=np.stack(list(sample.values())))
    return indexed


def _ours(args: argparse.Namespace, out: Path) -> int:
    import create_lmdb

    manifest = create_lmdb.main(["--r1m_path", str(Path(args.work_dir) / "r1m"), "--data_path", str(out),
                                 "--tokenizer", str(Path(args.work_dir) / "tokenizer"), "--languages",
                                 args.languages, "--max_len", str(args.max_len), "--workers", str(args.workers)])
    return sum(manifest["counts"].values())


def _child(args: argparse.Namespace) -> None:
    """Run one side in this process and print its measurements as one JSON line."""
    import lmdb  # noqa: F401 - imported before the baseline, like everything each side needs
    from transformers import BertTokenizerFast, BertTokenizerLegacy  # noqa: F401

    import create_lmdb  # noqa: F401

    out = Path(args.work_dir) / args.child
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rss_before, _ = _memory_kb()
    start = time.perf_counter()
    indexed = (_ours if args.child == "create_lmdb" else _reference)(args, out)
    seconds = time.perf_counter() - start
    _, peak = _memory_kb()
    print("BENCH " + json.dumps({"recipes": indexed, "seconds": seconds, "peak_kb": peak - rss_before}))


def _sample_agreement(work: Path) -> tuple[int, int, float]:
    """Rows of the sampled recipes equal on both sides: (equal, sampled, mean tokens of en rows)."""
    from data.lmdb_format import RecordReader, lmdb_dir

    sample = np.load(work / "reference" / "sample.npz")
    records = {}
    for partition in ("train", "val", "test"):
        # a private environment, closed here: the work folder is deleted afterwards
        with RecordReader(lmdb_dir(work / "create_lmdb", partition), shared=False) as reader:
            for rid in sample["ids"]:
                record = reader.get(str(rid))
                if record is not None:
                    records[str(rid)] = record.ids
    equal = sum(np.array_equal(records.get(str(rid)), rows) for rid, rows in zip(sample["ids"], sample["rows"]))
    lengths = [int((records[str(rid)][0] > 0).sum()) for rid in sample["ids"] if str(rid) in records]
    return equal, len(sample["ids"]), float(np.mean(lengths))


def get_parser() -> argparse.ArgumentParser:
    """The command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", type=int, default=20000, help="synthetic recipes (default: 20000)")
    parser.add_argument("--languages", default="en,de",
                        help="comma-separated languages written and indexed, en first (default: en,de)")
    parser.add_argument("--vocab_size", type=int, default=8000, help="WordPiece vocabulary learnt (default: 8000)")
    parser.add_argument("--max_len", type=int, default=512, help="token row length (default: 512)")
    parser.add_argument("--workers", type=int, default=0, help="create_lmdb --workers (default: 0, every core)")
    parser.add_argument("--work_dir", default=None,
                        help="folder for the corpus and both outputs (default: a temporary folder, removed)")
    parser.add_argument("--child", choices=("create_lmdb", "reference"), default=None,
                        help="internal: run one side in this process and print its measurements")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Build the corpus, run both sides in child processes, print and return the figures."""
    args = get_parser().parse_args(argv)
    if args.child:
        _child(args)
        return {}
    if args.recipes < SAMPLE:
        raise SystemExit(f"--recipes must be at least {SAMPLE}")
    languages = args.languages.split(",")
    if languages[0] != "en":
        raise SystemExit(f"--languages {args.languages!r}: en must come first")
    temporary = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="bench_create_lmdb_") if temporary else args.work_dir)
    try:
        from data import tokenizer as tk

        (work / "r1m").mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        make_corpus(work / "r1m", args.recipes, languages)
        counter = tk.WordCounter()  # the vocabulary: learnt from 2,000 recipes of each language
        for lang in languages:
            suffix = "" if lang == "en" else f"_{lang}"
            with open(work / "r1m" / f"layer1{suffix}.json", encoding="utf-8") as handle:
                for entry in json.load(handle)[:2000]:
                    counter.add(" ".join([entry[f"title{suffix}"]] + [t["text"] for t in entry[f"ingredients{suffix}"]]
                                         + [t["text"] for t in entry[f"instructions{suffix}"]]))
        tk.save_tokenizer(tk.train_wordpiece_from_counts(counter.counts(), args.vocab_size), work / "tokenizer")
        print(f"corpus: {args.recipes} recipes in {args.languages}, vocabulary {args.vocab_size} "
              f"({time.perf_counter() - start:.1f} s to build)", flush=True)
        results = {}
        for side in ("create_lmdb", "reference"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--work_dir", str(work),
                   "--languages", args.languages, "--max_len", str(args.max_len), "--workers", str(args.workers)]
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
            if proc.returncode or not lines:
                raise SystemExit(f"the {side} side failed (exit {proc.returncode})")
            results[side] = json.loads(lines[-1][len("BENCH "):])
        equal, sampled, mean_tokens = _sample_agreement(work)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    ours, ref = results["create_lmdb"], results["reference"]
    for side in (ours, ref):
        side["recipes_per_s"] = side["recipes"] / side["seconds"]
        side["peak_mb_per_1000"] = side["peak_kb"] / 1024 / side["recipes"] * 1000
    speed = ours["recipes_per_s"] / ref["recipes_per_s"]
    memory = ours["peak_mb_per_1000"] / ref["peak_mb_per_1000"]
    print(f"rows equal on both sides: {equal}/{sampled} sampled recipes; mean en row {mean_tokens:.0f} tokens")
    print(f"{'':12} {'recipes':>8} {'seconds':>9} {'recipes/s':>10} {'peak MB/1000 recipes':>21}")
    for name, side in (("create_lmdb", ours), ("reference", ref)):
        print(f"{name:12} {side['recipes']:>8} {side['seconds']:>9.1f} {side['recipes_per_s']:>10.1f} "
              f"{side['peak_mb_per_1000']:>21.2f}")
    print(f"speed: create_lmdb / reference = {speed:.1f}x (goal >= 5x); "
          f"peak memory: create_lmdb / reference = {memory:.3f} (goal <= 0.333)")
    return {"create_lmdb": ours, "reference": ref, "speed_ratio": speed, "memory_ratio": memory,
            "rows_equal": equal, "rows_sampled": sampled, "mean_tokens": mean_tokens}


if __name__ == "__main__":
    main()
