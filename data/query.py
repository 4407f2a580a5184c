"""A user's recipe or photo, preprocessed exactly as training and test.py see the indexed ones.

Used by ``search.py`` and ``GAN_test.py --recipe`` (the scripts give the rows to
``FoodSpaceNet.embed_recipes`` / ``embed_images``); ``create_lmdb.py`` takes :func:`part_texts`
from here, so the indexed recipes and the queries share one copy of the text rules.

A recipe becomes a token row in three steps, each the one the indexed recipes went through:

1. :func:`part_texts` (create_lmdb.py's): the title, ingredients and instructions as three texts;
2. :meth:`RecipeTokenizer.stored_row`: ``[CLS]`` + the parts' WordPiece ids (the run's own
   tokenizer, ``<data_path>/tokenizer``, through create_lmdb.py's :class:`data.tokenizer.ChunkEncoder`),
   cut to ``max_len - 1`` ids in title, ingredients, instructions order, 0-padded: the LMDB row
   (docs/data.md#the-lmdb-records);
3. :func:`data.dataset.assemble_tokens` (the dataset's evaluation path): the parts of the run's
   ``textinputs``, ``[SEP]`` after the last kept id, then trimmed to the longest row of the batch
   as :func:`data.dataset.collate_skip_bad` trims.

A photo goes through :func:`data.transforms.load_image` (EXIF orientation, RGB) and
:func:`data.transforms.eval_transform` (pad to square, resize, centre crop, normalise) at the
run's ``image_size``, by the script's ``--image_backend`` (:func:`data.transforms.load_transformed`).

Recipe JSON (``--recipe``): one recipe in layer1 format or a list of them::

    {"title": "...", "ingredients": [{"text": "..."}, ...], "instructions": [{"text": "..."}, ...],
     "id": "optional"}

For a language other than English the ``title_<lang>``, ``ingredients_<lang>`` and
``instructions_<lang>`` keys are read when present (as in ``layer1_<lang>.json``), else the plain
ones. Bad input raises :class:`QueryError` naming the file and the entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from data.langs import parse_language
from data.lmdb_format import PART_CLS, PART_INGR, PART_INST, PART_TITLE, TOKENIZER_DIR
from data.recipe1m import text_list
from data.tokenizer import ChunkEncoder, TokenizerError, load_tokenizer
from utils.errors import InputError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image as PILImage

# data.dataset and data.transforms (torch, torchvision) are imported where used: create_lmdb.py
# imports this module for part_texts and never needs torch.

PART_ORDER = (PART_TITLE, PART_INGR, PART_INST)


class QueryError(InputError):
    """A query that cannot be used (missing or unreadable photo, malformed recipe); names the file."""


class QueryRecipe(NamedTuple):
    """A recipe given by a user (texts as given; empty lines are skipped by :func:`part_texts`)."""

    id: str
    title: str
    ingredients: list[str]
    instructions: list[str]


def part_texts(title: str, ingredients: list[str], instructions: list[str]) -> tuple[str, str, str]:
    """The three texts tokenised for a recipe: title, ingredients, instructions (docs/data.md#the-lmdb-records).

    Empty lines (``""``) are skipped and every other line is kept, whitespace-only ones included,
    as the reference does (it tests the string's truth): a line ``" "`` between ``"a"`` and ``"b"``
    gives ``"a.  . b"``, the tokens ``a . . b``. The title is always kept; ``'..'`` becomes
    ``'.'`` in each part, as in the reference (whose extra whitespace in its joiners, ``'. \\n '``
    and ``'. \\n\\n '``, makes no WordPiece token).
    """
    ingr = ". ".join(t for t in ingredients if t)
    inst = ". ".join(t for t in instructions if t)
    return ((title + ". ").replace("..", "."), (ingr + ". ").replace("..", "."), inst.replace("..", "."))


def split_lines(text: str | None) -> list[str]:
    """``--ingredients`` / ``--instructions``: lines separated by newlines or ``;``, stripped, empty ones dropped."""
    return [line.strip() for line in re.split(r"[\n;]", text or "") if line.strip()]


def recipe_from_text(title: str, ingredients: str | None = None, instructions: str | None = None,
                     recipe_id: str = "query") -> QueryRecipe:
    """A recipe from command-line texts (``--text``, ``--ingredients``, ``--instructions``)."""
    if not (title or "").strip():
        raise QueryError("--text: give the recipe's title (and --ingredients, --instructions)")
    return QueryRecipe(recipe_id, title.strip(), split_lines(ingredients), split_lines(instructions))


def _texts(path: Path, where: str, entry: dict, key: str) -> list[str]:
    return text_list(entry, key, f"{path}: {where}", QueryError)


def read_recipe_json(path: str | Path, lang: str = "en") -> list[QueryRecipe]:
    """The recipes of a JSON file: one layer1 entry or a list of them (module docstring).

    Recipes without an ``id`` are named ``<file stem>`` (one recipe) or ``<file stem>_<k>``
    (k = 1, 2, ... in file order).

    Raises:
        QueryError: the file is missing, not JSON, or an entry lacks a field (named with its index).
    """
    path = Path(path)
    lang = parse_language(lang)
    if not path.is_file():
        raise QueryError(f"recipe file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise QueryError(f"{path}: not valid JSON ({err})") from None
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise QueryError(f"{path}: an empty list; give a recipe or a list of recipes")
    suffix = "" if lang == "en" else f"_{lang}"
    recipes = []
    for index, entry in enumerate(entries):
        where = f"entry {index}" if isinstance(data, list) else "the recipe"
        if not isinstance(entry, dict):
            raise QueryError(f"{path}: {where} must be a JSON object with title, ingredients and instructions, "
                             f"got {type(entry).__name__}")
        keys = {f: (f + suffix if f + suffix in entry else f) for f in ("title", "ingredients", "instructions")}
        title = entry.get(keys["title"])
        if not isinstance(title, str):
            raise QueryError(f"{path}: {where}: 'title' must be a string, "
                             f"got {'nothing' if title is None else type(title).__name__}")
        rid = entry.get("id")
        if rid is not None and (not isinstance(rid, str) or not rid):
            raise QueryError(f"{path}: {where}: 'id' must be a non-empty string, got {rid!r:.80}")
        if rid is None:
            rid = path.stem if len(entries) == 1 else f"{path.stem}_{index + 1}"
        recipe = QueryRecipe(rid, title, _texts(path, where, entry, keys["ingredients"]),
                             _texts(path, where, entry, keys["instructions"]))
        if not any(t.strip() for t in (recipe.title, *recipe.ingredients, *recipe.instructions)):
            raise QueryError(f"{path}: {where}: an empty recipe (no title, ingredient or instruction text); "
                             "nothing to search with")
        recipes.append(recipe)
    return recipes


class RecipeTokenizer:
    """Recipes -> the token rows test.py gives the model, for the LMDB folder of a run.

    Args:
        data_path: the folder create_lmdb.py wrote (its ``tokenizer/`` and ``manifest.json``).
        textinputs: the run's ``textinputs`` (parts kept, a subset of title,ingr,inst).
        max_len: the row length (default: the manifest's, as test.py's dataset).

    Raises:
        QueryError: the folder lacks its manifest or tokenizer.
    """

    def __init__(self, data_path: str | Path, textinputs: str | Sequence[str] = "title,ingr,inst",
                 max_len: int | None = None) -> None:
        from data.dataset import parse_textinputs, read_manifest

        self.data_path = Path(data_path)
        try:
            manifest = read_manifest(self.data_path)
            self.tokenizer = load_tokenizer(self.data_path / TOKENIZER_DIR)
        except (FileNotFoundError, ValueError, TokenizerError) as err:
            raise QueryError(f"{err} (the run's --data_path, the folder create_lmdb.py wrote)") from None
        self.special_ids = dict(manifest["special_ids"])
        self.max_len = int(max_len if max_len is not None else manifest["max_len"])
        self.part_codes = parse_textinputs(textinputs)
        self._encoder = ChunkEncoder(self.tokenizer)

    def stored_row(self, recipe: QueryRecipe) -> tuple[np.ndarray, np.ndarray]:
        """The LMDB row create_lmdb.py stores for ``recipe``: ids int32 ``(max_len,)``, parts int8 ``(max_len,)``."""
        blobs = self._encoder(list(part_texts(recipe.title, recipe.ingredients, recipe.instructions)))
        ids = np.zeros(self.max_len, dtype=np.int32)
        parts = np.zeros(self.max_len, dtype=np.int8)
        ids[0], parts[0] = self.special_ids["cls"], PART_CLS
        pos = 1
        for code, blob in zip(PART_ORDER, blobs):
            tokens = np.frombuffer(blob, dtype=np.int32)[: self.max_len - pos]  # title first, then the rest
            ids[pos:pos + len(tokens)] = tokens
            parts[pos:pos + len(tokens)] = code
            pos += len(tokens)
        return ids, parts

    def tokens(self, recipes: Sequence[QueryRecipe]) -> torch.Tensor:
        """``(B, T)`` int64 token rows, CLS ... SEP, trimmed to the longest row (as a test batch)."""
        import torch

        from data.dataset import assemble_tokens

        rows = [assemble_tokens(*self.stored_row(r), self.part_codes, self.special_ids["sep"], self.max_len)
                for r in recipes]
        tokens = torch.from_numpy(np.stack(rows))  # (B, max_len)
        longest = int((torch.arange(1, tokens.shape[1] + 1) * (tokens != 0)).amax())
        return tokens[:, :longest].contiguous()


LARGE_PHOTO_PIXELS = 4096 * 4096  # a JPEG above this is shrunk while decoding (Recipe1M's are far smaller)
DRAFT_SIDE = 1024  # the shrunk decode keeps both sides >= this: over twice any run's resize


def load_query_photo(path: str | Path) -> PILImage:
    """A photo decoded once: 8-bit RGB, EXIF orientation applied, as test.py's images.

    Its size is checked once, from the header: a JPEG of more than ``LARGE_PHOTO_PIXELS`` pixels
    is decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``), both sides kept ``>= DRAFT_SIDE``, so
    an 8000 x 8000 photo never takes the memory of its full size; smaller photos are decoded
    whole, exactly as test.py's. Another format above Pillow's bomb limit is decoded whole with
    one warning; above twice the limit it is refused (as Pillow refuses it).

    Raises:
        QueryError: the file is missing, not a readable image, or too large (message names it).
    """
    import warnings

    from PIL import Image, ImageOps

    from data.transforms import ImageLoadError, load_image

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked here, once
            try:
                with Image.open(path) as probe:
                    size, fmt = probe.size, probe.format
            except Image.DecompressionBombError as err:
                raise QueryError(f"unreadable image file {path} (too large: {err})") from None
            except (OSError, ValueError, SyntaxError):
                return load_image(path)  # its error names the file and the cause
            if size[0] * size[1] <= LARGE_PHOTO_PIXELS or fmt != "JPEG":
                if Image.MAX_IMAGE_PIXELS and size[0] * size[1] > Image.MAX_IMAGE_PIXELS:
                    warnings.warn(f"{path}: {size[0]}x{size[1]} pixels, decoded whole (only a JPEG is shrunk "
                                  "while decoding)", stacklevel=2)
                return load_image(path)
            with Image.open(path) as img:
                img.draft("RGB", (DRAFT_SIDE, DRAFT_SIDE))  # DCT scaling: the full size is never decoded
                img.load()
                return ImageOps.exif_transpose(img).convert("RGB")
    except QueryError:
        raise
    except ImageLoadError as err:
        raise QueryError(str(err)) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise QueryError(f"unreadable image file {path} ({type(err).__name__}: {err})") from None


def load_query_image(path: str | Path | PILImage, image_size: int, backend: str = "pil") -> torch.Tensor:
    """A photo (a file, or one :func:`load_query_photo` decoded) through test.py's evaluation transform; ``(3, S, S)``.

    ``backend`` is the scripts' ``--image_backend`` (``"pil"`` or ``"fast"``, :mod:`data.transforms`).

    Raises:
        QueryError: the file is missing or not a readable image (message names it).
    """
    import numpy as np
    from PIL import Image

    from data.transforms import check_backend, eval_transform, eval_transform_uint8
    from utils.imagenet import normalize_on_device

    photo = path if isinstance(path, Image.Image) else load_query_photo(path)
    if check_backend(backend) == "pil":
        return eval_transform(photo, image_size)
    image = eval_transform_uint8(np.array(photo), image_size)  # (3, S, S) uint8 (np.array: a writable copy for torch)
    return normalize_on_device(image[None])[0]
