"""Sentences/s of translate_text.py against the reference's way, same model, same corpus, one run.

Run from the repository root: ``python -m bench.translate`` (a Recipe1M-like corpus generated
here and a tiny randomly initialised FSMT model built here, since nothing can be downloaded),
``--layer1 PATH`` to read the first ``--recipes`` entries of a real (or synthetic) layer1.json
instead, ``--model NAME_OR_PATH`` to time a real translation model.

- reference: every non-empty text in file order, fixed batches of 500, no deduplication (the
  reference script's loop);
- ours: what translate_text.py does: distinct sentences only, sorted by length, fixed batches of
  ``--batch_size``, each finished batch appended and fsynced to a cache file.

Both translate with the same ``HFTranslator`` (beam ``--beam``, ``--max_length``); sentences/s
counts the corpus's non-empty texts (the work both ways accomplish) per second of wall time.
With ``--repeats`` > 1 the two ways alternate and the median time of each is reported.

Caveat on the default model: a random model almost never emits end-of-sentence, so every
hypothesis runs to ``--max_length`` whatever the input length; the gain from length-sorted
batches that a real model shows (batches of short sentences finish early) is mostly invisible
here, and the ratio mainly measures deduplication and padding.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data.recipe1m import Recipe

_QUANTS = ["1", "2", "1/2", "1/4", "3", "1 1/2", "3/4", "4", "2/3", "6", "8", "1/3", "12", "5"]
_UNITS = ["cup", "cups", "teaspoon", "teaspoons", "tablespoon", "tablespoons", "tsp", "Tbsp", "c.",
          "oz", "ounces", "lb", "pound", "g", "ml", "pinch", "can (14 oz.)", "package (8 oz.)", "cloves", ""]
_FOODS = ["sugar", "salt", "all-purpose flour", "butter", "eggs", "milk", "garlic", "onion", "olive oil",
          "water", "black pepper", "vanilla extract", "baking powder", "brown sugar", "baking soda",
          "cheddar cheese", "parmesan cheese", "lemon juice", "sour cream", "chicken broth", "cinnamon",
          "tomatoes", "heavy cream", "vegetable oil", "honey", "carrots", "celery", "ground beef",
          "chicken breasts", "soy sauce", "cream cheese", "parsley", "basil", "oregano", "paprika",
          "cumin", "potatoes", "rice", "mushrooms", "bacon", "green onions", "cilantro", "ginger",
          "red bell pepper", "jalapeno", "mayonnaise", "dijon mustard", "walnuts", "pecans", "raisins",
          "chocolate chips", "cocoa powder", "powdered sugar", "shrimp", "salmon", "spinach", "zucchini",
          "black beans", "corn", "lime juice", "maple syrup", "oats", "coconut milk", "tofu", "pasta"]
_ADJS = ["", "", "", "chopped", "fresh", "grated", "minced", "melted", "softened", "diced", "shredded",
         "finely chopped", "large", "unsalted", "packed", "sliced", "cold", "warm"]
_COMMON_INGR = ["salt and pepper to taste", "2 eggs", "1 cup sugar", "1 teaspoon vanilla extract",
                "1/2 teaspoon salt", "1 cup milk", "2 cups all-purpose flour", "1/2 cup butter, softened",
                "1 teaspoon baking soda", "salt", "pepper", "2 cloves garlic, minced", "1 onion, chopped",
                "1 tablespoon olive oil", "water"]
_DISHES = ["Chocolate Chip Cookies", "Banana Bread", "Chicken Curry", "Beef Stew", "Apple Pie",
           "Lasagna", "Pancakes", "Guacamole", "Meatloaf", "Brownies", "Chili", "Potato Salad",
           "Carrot Cake", "Fried Rice", "Pumpkin Soup", "Cheesecake", "Tacos", "Muffins", "Pesto Pasta",
           "Lemon Bars", "Mac and Cheese", "Shrimp Scampi", "Cornbread", "Granola", "Hummus"]
_TITLE_ADJS = ["", "", "", "Easy", "Best", "Healthy", "Vegan", "Grandma's", "Quick", "Spicy", "Classic",
               "Homemade", "Gluten-Free", "Slow Cooker", "Low-Fat", "Creamy", "Simple"]
_COMMON_STEPS = ["Preheat oven to 350 degrees F.", "Serve.", "Enjoy!", "Serve immediately.",
                 "Mix well.", "Preheat the oven to 375 degrees.", "Season with salt and pepper.",
                 "Let cool completely.", "Serve warm.", "Stir well.", "Bake for 25 minutes.",
                 "Grease a 9x13 inch baking dish.", "Refrigerate until ready to serve.", "Combine all ingredients.",
                 "Garnish with parsley.", "Cover and refrigerate overnight.", "Bring to a boil."]
_VERBS = ["Mix", "Stir", "Combine", "Whisk", "Add", "Fold in", "Cook", "Saute", "Bake", "Simmer", "Pour",
          "Sprinkle", "Toss", "Beat", "Spread", "Heat", "Chop", "Blend", "Arrange", "Drain"]
_PLACES = ["in a large bowl", "in a medium saucepan", "in a skillet over medium heat", "until smooth",
           "until golden brown", "in the prepared pan", "over low heat", "until well combined", ""]
_TAILS = ["", "", ", stirring occasionally", ", or until tender", " and set aside",
          ", until a toothpick inserted in the center comes out clean", " and season to taste"]


def _zipf(rng: np.random.Generator, items: list[str], s: float = 1.1) -> str:
    """Draw an item with probability proportional to 1 / rank**s (Recipe1M's heavy repetition)."""
    weights = 1.0 / np.arange(1, len(items) + 1) ** s
    return items[rng.choice(len(items), p=weights / weights.sum())]


def _ingredient(rng: np.random.Generator) -> str:
    if rng.random() < 0.3:
        return _zipf(rng, _COMMON_INGR)
    parts = [_zipf(rng, _QUANTS), _zipf(rng, _UNITS, 0.8), _zipf(rng, _ADJS, 0.5), _zipf(rng, _FOODS)]
    return " ".join(p for p in parts if p)


def _step(rng: np.random.Generator) -> str:
    if rng.random() < 0.25:
        return _zipf(rng, _COMMON_STEPS)
    foods = list(rng.choice(_FOODS, size=int(rng.integers(1, 4)), replace=False))
    what = foods[0] if len(foods) == 1 else ", ".join(foods[:-1]) + " and " + foods[-1]
    text = f"{_zipf(rng, _VERBS, 0.7)} the {what} {_zipf(rng, _PLACES, 0.6)}".rstrip()
    if rng.random() < 0.5:
        text += f" for {int(rng.integers(2, 61))} minutes"
    text += _zipf(rng, _TAILS, 0.6) + "."
    while rng.random() < 0.3:  # Recipe1M instructions often hold several sentences
        text += " " + _step(rng)
    return text


def make_corpus(recipes: int, seed: int = 0) -> list[Recipe]:
    """Recipe1M-like recipes: repeated titles, heavily repeated ingredient lines, mostly distinct steps."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(recipes):
        title = " ".join(p for p in (_zipf(rng, _TITLE_ADJS, 0.6), _zipf(rng, _DISHES, 0.9)) if p)
        ingr = [_ingredient(rng) if rng.random() > 0.01 else "" for _ in range(int(rng.integers(4, 16)))]
        inst = [_step(rng) if rng.random() > 0.01 else "" for _ in range(int(rng.integers(3, 14)))]
        out.append(Recipe(f"{i:010x}", "train", title, ingr, inst, None))
    return out


def get_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    from utils.cli import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--recipes", type=int, default=150, help="recipes in the corpus")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")
    parser.add_argument("--layer1", default=None,
                        help="read the first --recipes entries of this layer1.json instead of generating")
    parser.add_argument("--model", default=None,
                        help="translation model name or folder; None: a tiny random FSMT built here")
    parser.add_argument("--d_model", type=int, default=64, help="width of the tiny model")
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers of the tiny model")
    parser.add_argument("--beam", type=int, default=5, help="beam size (both ways)")
    parser.add_argument("--max_length", type=int, default=20, help="maximum target length (both ways)")
    parser.add_argument("--batch_size", type=int, default=128, help="our batch size, in sentences")
    parser.add_argument("--ref_batch_size", type=int, default=500, help="the reference's batch size")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each way (alternating)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; None: torch's default")
    parser.add_argument("--ablation", action="store_true",
                        help="also time our length-sorted batches without deduplication")
    parser.add_argument("--no_cuda", action="store_true", help="run on CPU even when a GPU is available")
    parser.add_argument("--fp16", action="store_true", help="half precision on GPU")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the measured figures."""
    from utils.cli import run_main

    return run_main(lambda: _main(argv))


def _sync(device) -> None:
    """Wait for the GPU's queued work, so that the clock measures it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_reference(translator, sentences: list[str], batch_size: int, device) -> float:
    """Seconds to translate every non-empty text in file order, fixed batches, no deduplication."""
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=len(sentences), desc="reference", unit=" sent", file=sys.stderr) as bar:
        for i in range(0, len(sentences), batch_size):
            batch = sentences[i:i + batch_size]
            translator(batch)
            bar.update(len(batch))
    _sync(device)
    return time.perf_counter() - start


def time_ours(translator, recipes: list[Recipe], batch_size: int, cache_file: Path, device) -> float:
    """Seconds for translate_text.py's way: the dedup pass, length-sorted batches, each appended to a cache."""
    from tqdm import tqdm

    from data.translation import CacheWriter, collect_unique, num_batches, translate_batches

    start = time.perf_counter()
    uniq, _ = collect_unique(recipes)  # part of the cost: the dedup pass
    with CacheWriter(cache_file) as writer, \
            tqdm(total=len(uniq), desc="ours", unit=" sent", file=sys.stderr) as bar:
        translate_batches(uniq, batch_size, range(num_batches(len(uniq), batch_size)), translator, writer,
                          bar.update)
    _sync(device)
    return time.perf_counter() - start


def time_sorted_no_dedup(translator, sentences: list[str], batch_size: int, device) -> float:
    """Ablation: seconds for our batching (length-sorted, ``batch_size``) over every sentence, repeats included."""
    from tqdm import tqdm

    from data.translation import sort_key

    ordered = sorted(sentences, key=sort_key)
    start = time.perf_counter()
    with tqdm(total=len(ordered), desc="sorted, no dedup", unit=" sent", file=sys.stderr) as bar:
        for i in range(0, len(ordered), batch_size):
            translator(ordered[i:i + batch_size])
            bar.update(len(ordered[i:i + batch_size]))
    _sync(device)
    return time.perf_counter() - start


def _report(args: argparse.Namespace, device, sentences: list[str], unique: list[str],
            times: dict[str, list[float]]) -> dict:
    """Print the median times and rates of each way; returns them."""
    import torch

    ref_t, our_t = statistics.median(times["reference"]), statistics.median(times["ours"])
    result = {"sentences": len(sentences), "unique": len(unique),
              "reference_sps": len(sentences) / ref_t, "ours_sps": len(sentences) / our_t,
              "ratio": ref_t / our_t, "times": times}
    print(f"model: {args.model or f'tiny random FSMT (d_model {args.d_model}, {args.layers} layers)'}, "
          f"beam {args.beam}, max_length {args.max_length}, device {device}, threads {torch.get_num_threads()}")
    print(f"reference (batches of {args.ref_batch_size}, file order, no dedup): {ref_t:.1f}s, "
          f"{result['reference_sps']:.1f} sentences/s")
    print(f"ours (dedup, length-sorted batches of {args.batch_size}, cached): {our_t:.1f}s, "
          f"{result['ours_sps']:.1f} sentences/s")
    print(f"ratio ours / reference: {result['ratio']:.2f}x  (goal >= 2x); deduplication leaves "
          f"1/{len(sentences) / len(unique):.2f} of the sentences (repeats are mostly short lines, so less "
          f"of the work)")
    if args.ablation:
        abl_t = statistics.median(times["sorted_no_dedup"])
        result["sorted_no_dedup_sps"] = len(sentences) / abl_t
        print(f"ablation, length-sorted batches of {args.batch_size} without dedup: {abl_t:.1f}s, "
              f"{result['sorted_no_dedup_sps']:.1f} sentences/s: batching {ref_t / abl_t:.2f}x, "
              f"then deduplication {abl_t / our_t:.2f}x")
    return result


def _main(argv: list[str] | None) -> dict:
    import torch

    from data.recipe1m import iter_layer1
    from data.translation import collect_unique, recipe_texts
    from tests.tiny_models import build_tiny_fsmt
    from translate_text import HFTranslator
    from utils.cli import resolve_device

    args = get_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.layer1:
        recipes = list(itertools.islice(iter_layer1(args.layer1, "en"), args.recipes))
    else:
        recipes = make_corpus(args.recipes, args.seed)
    sentences = [t for r in recipes for t in recipe_texts(r) if t.strip()]
    unique, stats = collect_unique(recipes)
    print(f"corpus: {stats.summary()}; mean length {np.mean([len(s) for s in sentences]):.0f} characters, "
          f"longest {max(len(s) for s in sentences)}")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_tiny_fsmt(Path(tmp) / "model", unique, langs=("en", "de"),
                                                  d_model=args.d_model, layers=args.layers))
        device = resolve_device(args.no_cuda)
        translator = HFTranslator(model, device, args.fp16 and device.type == "cuda", args.beam, args.max_length)
        translator(sentences[:8])  # warm-up (allocations, lazy inits)
        times: dict[str, list[float]] = {"reference": [], "ours": []}
        if args.ablation:
            times["sorted_no_dedup"] = []
        for run in range(args.repeats):  # the ways alternate, so that drift hits each alike
            times["reference"].append(time_reference(translator, sentences, args.ref_batch_size, device))
            times["ours"].append(time_ours(translator, recipes, args.batch_size, Path(tmp) / f"cache-{run}.jsonl",
                                           device))
            if args.ablation:
                times["sorted_no_dedup"].append(time_sorted_no_dedup(translator, sentences, args.batch_size,
                                                                     device))
    return _report(args, device, sentences, unique, times)


if __name__ == "__main__":
    main()
