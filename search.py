"""Search a trained run's FoodSpace with your own photos (for recipes) or recipes (for photos); docs/search.md."""

from __future__ import annotations

import argparse
import json
import os
import sys

from data.langs import parse_language
from data.query import load_query_photo, read_recipe_json, recipe_from_text
from pipeline.search import RunSearch, draw_figure, format_hits
from utils.cli import IMAGE_BACKEND_HELP, IMAGE_BACKENDS, HelpFormatter, resolve_device, run_main
from utils.runs import shown
from utils.search_index import SearchError, import_faiss, parse_parts

USAGE = "%(prog)s --run RUN (--image PHOTO [PHOTO ...] | --recipe JSON | --text TITLE) [options]"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(usage=USAGE, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="train.py run folder (test.py has written its embeddings)")
    query = p.add_argument_group("query (exactly one of --image, --recipe, --text)")
    query.add_argument("--image", nargs="+", default=None, metavar="PHOTO", help="photos: find their recipes")
    query.add_argument("--recipe", default=None, metavar="JSON",
                       help="a recipe in layer1 format (or a list of them): find its images")
    query.add_argument("--text", default=None, metavar="TITLE", help="a recipe's title: find its images")
    query.add_argument("--ingredients", default="", help="with --text: ingredient lines, separated by newlines or ';'")
    query.add_argument("--instructions", default="", help="with --text: instruction lines, separated by newlines or ';'")
    p.add_argument("--k", type=int, default=5, help="results per query")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint of the run (path or name in RUN/models/; None: the newest BEST_REC one "
                        "with test.py's embeddings)")
    p.add_argument("--index_parts", default="available",
                   help="partitions in the index, e.g. test or test,val,train; 'available': every one of test, "
                        "val, train with an embedding file")
    p.add_argument("--language", default="en", help="language of the recipe embeddings and texts (code or number)")
    p.add_argument("--faiss", action="store_true", help="approximate search with faiss (pip install faiss-cpu)")
    p.add_argument("--nprobe", type=int, default=32, help="with --faiss: inverted lists searched per query")
    p.add_argument("--json", action="store_true", help="print the results as JSON (messages go to stderr)")
    p.add_argument("--figure", default=None, metavar="PNG", help="draw each query beside its top-k into this PNG")
    p.add_argument("--data_path", default=None, help="folder written by create_lmdb.py (None: the run's)")
    p.add_argument("--img_path", default=None, help="root of the images (None: the run's)")
    p.add_argument("--batch_size", type=int, default=32, help="queries embedded at once")
    p.add_argument("--image_backend", choices=IMAGE_BACKENDS, default="fast", help=IMAGE_BACKEND_HELP)
    p.add_argument("--no_cuda", "--no-cuda", action="store_true", help="run on the CPU even if CUDA is available")
    p.add_argument("--device", default=None, help="CUDA device index or 'cpu'")
    return p


# --------------------------------------------------------------------------- main


def read_queries(args) -> tuple[str, list]:
    """``("images", paths)`` or ``("recipes", [QueryRecipe])`` from the query flags."""
    given = [flag for flag, value in (("--image", args.image), ("--recipe", args.recipe), ("--text", args.text))
             if value is not None]
    if len(given) != 1:
        raise SearchError("give exactly one of --image, --recipe and --text" + (f" (got {', '.join(given)})"
                                                                              if given else ""))
    if args.image is not None:  # decoded once, here: a bad photo fails before the model loads
        return "recipes", [load_query_photo(path) for path in args.image]
    if args.recipe is not None:
        return "images", read_recipe_json(args.recipe, args.language)
    return "images", [recipe_from_text(args.text, args.ingredients, args.instructions)]


def main(argv=None) -> dict:
    """Search; returns ``{"run", "checkpoint", "index", "method", "results": [...]}`` (what ``--json`` prints)."""
    try:
        out = run_main(lambda: _main(argv))
        sys.stdout.flush()  # a reader that has gone (`search.py ... | head`) shows here, not at exit
        return out
    except BrokenPipeError:
        # No traceback: stdout goes to devnull so that the interpreter's last flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def _main(argv) -> dict:
    args = get_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.k < 1:
        raise SearchError(f"--k {args.k}: give at least 1")
    if args.batch_size < 1:
        raise SearchError(f"--batch_size {args.batch_size}: give at least 1")
    try:
        lang = parse_language(args.language)
    except ValueError as err:
        raise SearchError(f"--language: {err}") from None
    parts = parse_parts(args.index_parts)
    target, queries = read_queries(args)  # photos: decoded images; their paths are args.image
    if args.faiss:
        import_faiss()
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    searcher = RunSearch(args.run, checkpoint=args.checkpoint, lang=lang, parts=parts, data_path=args.data_path,
                         img_path=args.img_path, device=resolve_device(args.no_cuda, args.device), log=log)
    if target == "recipes":
        embs = searcher.embed_images(queries, args.batch_size, args.image_backend)
    else:
        embs = searcher.embed_recipes(queries, args.batch_size)
    scores, indices = searcher.search(embs, target, args.k, use_faiss=args.faiss, nprobe=args.nprobe)
    results = []
    for q, (query, hits) in enumerate(zip(queries, searcher.hits(scores, indices))):
        if target == "recipes":
            head = {"number": q + 1, "image": str(args.image[q])}
        else:
            head = {"number": q + 1, "recipe_id": query.id, "title": query.title, "ingredients": query.ingredients}
        results.append({"query": head, "results": hits})
    out = {"run": str(searcher.run_dir), "checkpoint": str(searcher.ckpt_path), "index": str(searcher.index.path),
           "language": lang, "method": f"faiss IVF, nprobe {args.nprobe}" if args.faiss else "exact",
           "target": target, "results": results}
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(format_hits(results))
    if args.figure:
        log(f"figure -> {shown(draw_figure(results, args.figure, queries if target == 'recipes' else None))}")
    return out


if __name__ == "__main__":
    main()
