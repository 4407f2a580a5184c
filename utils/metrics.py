"""The retrieval protocol of docs/evaluation.md: median rank and recall@K over random bags.

For N paired embeddings (image i goes with recipe i), Python's ``random`` is seeded with ``seed``
and ``bags`` times ``random.sample(range(N), size)`` draws a bag (bags may overlap). In a bag the
similarity matrix holds the dot products of the L2-normalised embeddings; the rank of query i is
``1 + number of candidates with strictly greater similarity than its own pair`` (the reference's
``argsort`` position, with exact ties counted in the query's favour instead of arbitrarily).
Per bag medR is ``np.median`` of the ranks and R@K the fraction of ranks <= K; the reported
values are the means over bags, for image-to-recipe (rows) and recipe-to-image (columns).

Numerics: everything is computed in float64. Products of float32 embeddings are then exact and
their sums carry ~1e-16 relative error, so ranks are those of the true dot products whatever the
BLAS, the device, the tiling or TF32 settings; float32 products (the reference's) round at ~1e-7
and flip near-ties differently from one library or blocking to the next. The price is the float64
GEMM, about 2x the float32 one on CPU (``bench/eval.py`` prints both).

Memory: ``evaluate_retrieval`` keeps the inputs in their own dtype (a float numpy array is not
even copied) and converts to float64, then normalises, one bag at a time: a float64 copy of a
whole split (8 KB per embedding at 1024-d, twice) is never made, and since normalisation works
row by row the numbers are those of a whole-split copy. Each bag is processed in square tiles of
``chunk`` x ``chunk`` similarities. Diagonal tiles come first and give every query's own-pair
similarity; each off-diagonal tile then serves both directions (its rows for image-to-recipe, its
columns for recipe-to-image), so every similarity is computed exactly once and the comparison
with the own pair uses the very same numbers, yet no N x N matrix is ever held.
(``ranks_chunked`` and ``topk_chunked`` rank against a whole set, which they copy to float64.)
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence

import numpy as np
import torch

RECALL_KS = (1, 5, 10)
# What the numbers of a result mean; written beside them by test.py --metrics_json.
METRIC_UNITS = {"R@1, R@5, R@10": "fractions in [0, 1] (the printed tables show percentages)",
                "medR": "median rank of the true match (1 = first)", "n": "candidates per bag",
                "bags": "bags averaged"}
DEFAULT_BAG_SIZES = (1000, 10000)
DEFAULT_CHUNK = 4096
_NAMED_SIZES = {1000: "1k", 10000: "10k"}


# --------------------------------------------------------------------------------------------
# Bag sizes
# --------------------------------------------------------------------------------------------
def bag_key(size: int) -> str:
    """The table/JSON key of a bag size: ``"1k"``, ``"10k"``, otherwise the number (``"200"``)."""
    return _NAMED_SIZES.get(size, str(size))


def resolve_bag_sizes(requested: int | Sequence[int] | None, n: int) -> list[tuple[str, int]]:
    """Apply docs/evaluation.md's bag-size rules.

    Args:
        requested: asked bag sizes (an int is one size); None means ``[1000, 10000]``.
        n: number of embedding pairs in the split.

    Returns:
        ``[(key, size), ...]`` in the asked order, duplicates dropped, sizes larger than ``n``
        skipped; ``[("all", n)]`` when every asked size is larger than ``n``.

    Raises:
        ValueError: ``n`` < 1, an empty request, or a size that is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"cannot evaluate retrieval on {n!r} embedding pairs (need at least 1)")
    if requested is None:
        sizes = list(DEFAULT_BAG_SIZES)
    elif isinstance(requested, (int, np.integer)) and not isinstance(requested, bool):
        sizes = [int(requested)]
    else:
        sizes = list(requested)
        if not sizes:
            raise ValueError("no bag size requested (give sizes such as [1000, 10000], or None)")
    out: list[tuple[str, int]] = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"bag size {size!r} is not a positive integer")
        size = int(size)
        if size <= n and all(size != s for _, s in out):
            out.append((bag_key(size), size))
    if not out:
        # Every asked size exceeds the split: one evaluation over the whole split instead.
        return [("all", int(n))]
    return out


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
_CHECK_ROWS = 4096  # rows checked for NaN / inf at a time (a bool mask of this many rows)


def _float_rows(x, name: str) -> torch.Tensor:
    """``x`` as a 2-D floating tensor, without a float64 copy of a float array, NaN/inf refused.

    A float numpy array becomes a tensor sharing its memory, a float tensor is kept as it is (on
    its device); anything else (lists, integers) is converted to float64 as a whole. Converting
    float16/32 to float64 is exact, so normalising rows later (:func:`_unit_rows`) gives the very
    numbers a float64 copy of the whole array would have given.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if not t.is_floating_point():
            t = t.to(torch.float64)
    else:
        try:
            arr = np.asarray(x)
            if arr.dtype.kind != "f" or arr.dtype.itemsize > 8:  # not a float torch can share
                arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: cannot be read as a float array ({exc})") from exc
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        with warnings.catch_warnings():  # a read-only array (np.load's mmap): never written to here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(arr)
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, D), got shape {tuple(t.shape)}")
    for s in range(0, t.shape[0], _CHECK_ROWS):  # by blocks: no (N, D) mask
        bad = ~torch.isfinite(t[s:s + _CHECK_ROWS]).all(dim=1)
        if bool(bad.any()):
            row = s + int(bad.nonzero()[0, 0])
            raise ValueError(f"{name}: row {row} holds NaN or inf")
    return t


def _checked_pair(queries, candidates, names, paired):
    """Both inputs through :func:`_float_rows`, shapes checked, candidates on the queries' device."""
    q = _float_rows(queries, names[0])
    c = _float_rows(candidates, names[1])
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"{names[0]} has dimension {q.shape[1]} but {names[1]} has {c.shape[1]}")
    if paired and q.shape[0] != c.shape[0]:
        raise ValueError(
            f"{names[0]} has {q.shape[0]} rows but {names[1]} has {c.shape[0]}: "
            "row i of each must be the same pair"
        )
    if c.device != q.device:
        c = c.to(q.device)
    return q, c


def _unit_rows(src: torch.Tensor, normalize: bool = True, owned: bool = False):
    """float64 (optionally L2-normalised) rows of ``src``: a numpy array on CPU, else a tensor.

    ``owned``: ``src`` is a temporary of the caller's (a gathered bag), which may be normalised in
    place. On CPU numpy does the tiles: its comparisons and counts ran ~5x faster than torch's
    here, and its OpenBLAS products neither win nor lose against torch's MKL consistently.
    """
    t = src.to(torch.float64)  # a copy, unless src is float64 already
    if normalize:
        # Row by row: the same numbers for any set of rows. In place when t is ours (a second
        # float64 buffer costs as much as the conversion).
        inplace = owned or t is not src
        t = torch.nn.functional.normalize(t, dim=1, out=t if inplace else None)
    return t.numpy() if t.device.type == "cpu" else t


def _prepare(queries, candidates, names=("queries", "candidates"), normalize=True, paired=False):
    """Checked float64 (optionally L2-normalised) copies: numpy arrays on CPU, else tensors.

    Args:
        queries, candidates: (N, D) and (M, D) arrays or tensors.
        names: how error messages name the two inputs.
        normalize: L2-normalise the rows.
        paired: require N == M (row i of both is a pair).
    """
    q, c = _checked_pair(queries, candidates, names, paired)
    return _unit_rows(q, normalize), _unit_rows(c, normalize)


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    return int(chunk)


# --------------------------------------------------------------------------------------------
# Ranks
# --------------------------------------------------------------------------------------------
def _count(mask, axis: int):
    """Number of True values along ``axis`` of a numpy array or a torch tensor (int64)."""
    if isinstance(mask, np.ndarray):
        return np.count_nonzero(mask, axis=axis)
    return torch.count_nonzero(mask, dim=axis)


def _to_numpy(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.cpu().numpy()


def _paired_ranks(q, c, chunk: int, both: bool):
    """Ranks of each pair among all candidates, by tiles, every similarity computed once.

    Args:
        q: (N, D) queries; c: (N, D) candidates, row i of both being a pair (both numpy arrays
            or both torch tensors on one device).
        chunk: tile side.
        both: also return the ranks of the transposed problem (candidates as queries).

    Returns:
        (N,) int64 numpy row ranks and, with ``both``, (N,) int64 column ranks (else None).
    """
    n = q.shape[0]
    starts = list(range(0, n, chunk))
    if isinstance(q, np.ndarray):
        diag = np.empty(n, dtype=q.dtype)  # own-pair similarities
        row_cnt, col_cnt = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    else:
        diag = torch.empty(n, dtype=q.dtype, device=q.device)
        row_cnt = torch.zeros(n, dtype=torch.int64, device=q.device)
        col_cnt = torch.zeros(n, dtype=torch.int64, device=q.device)

    def count(tile, rs, re, cs, ce):
        row_cnt[rs:re] += _count(tile > diag[rs:re, None], 1)
        if both:
            col_cnt[cs:ce] += _count(tile > diag[None, cs:ce], 0)

    # Diagonal tiles first: they hold the own-pair values the other tiles are compared with.
    for s in starts:
        e = min(s + chunk, n)
        tile = q[s:e] @ c[s:e].T  # (b, b)
        diag[s:e] = tile.diagonal()
        count(tile, s, e, s, e)
    for s in starts:
        e = min(s + chunk, n)
        for t in starts:
            if t != s:
                f = min(t + chunk, n)
                count(q[s:e] @ c[t:f].T, s, e, t, f)  # (b, b')
    return _to_numpy(row_cnt) + 1, (_to_numpy(col_cnt) + 1 if both else None)


def ranks_chunked(queries, candidates, chunk: int = DEFAULT_CHUNK, normalize: bool = True) -> np.ndarray:
    """Rank of each query's own pair (the candidate with the same row) over the whole set.

    Rank = 1 + number of candidates with strictly greater similarity than the pair. Works in
    tiles of ``chunk`` x ``chunk``, never materialising the N x N similarity matrix.

    Args:
        queries: (N, D) array or tensor.
        candidates: (N, D) array or tensor; row i is query i's pair.
        chunk: tile side (memory ~ 9 * chunk**2 bytes).
        normalize: L2-normalise both sides first (similarity = cosine).

    Returns:
        (N,) int64 numpy array of 1-based ranks.
    """
    q, c = _prepare(queries, candidates, normalize=normalize, paired=True)
    row, _ = _paired_ranks(q, c, _check_chunk(chunk), both=False)
    return row


def _select_topk(vals: torch.Tensor, idx: torch.Tensor, k: int):
    """Top ``k`` of each row by decreasing value, equal values by increasing index.

    Args:
        vals: (B, M) float64 scores; idx: (B, M) int64 global indices (distinct per row).

    Returns:
        ((B, k) scores, (B, k) indices), in that order.
    """
    order = torch.argsort(idx, dim=1)  # index order first ...
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]  # ... kept on ties
    return vals.gather(1, order), idx.gather(1, order)


def _block_topk(tile: torch.Tensor, k: int, offset: int):
    """Exact top ``k`` of each row of ``tile`` (ties by lowest index) with global indices."""
    b, m = tile.shape
    if k >= m:
        idx = torch.arange(offset, offset + m, device=tile.device).expand(b, m)
        return _select_topk(tile, idx, k)
    kth = torch.topk(tile, k, dim=1).values[:, -1:]  # (b, 1) k-th largest value
    greater = tile > kth
    equal = tile == kth
    # torch.topk picks arbitrarily among values equal to the k-th: keep the lowest indices.
    need = k - greater.sum(dim=1, keepdim=True)  # (b, 1) how many tied values to take
    keep = greater | (equal & (equal.cumsum(dim=1) <= need))  # exactly k per row
    cols = keep.nonzero()[:, 1].view(b, k)  # row-major, so ascending per row
    return _select_topk(tile.gather(1, cols), cols + offset, k)


def topk_chunked(queries, candidates, k: int, chunk: int = DEFAULT_CHUNK, normalize: bool = True):
    """Top-``k`` candidates of every query, by tiles (no Q x N matrix).

    Ordering is by decreasing similarity, equal similarities by increasing candidate index, so
    the result is the same for every ``chunk`` and equals a stable sort of the dense matrix.

    Args:
        queries: (Q, D) array or tensor.
        candidates: (N, D) array or tensor.
        k: how many candidates per query (at most N; larger values are clipped to N).
        chunk: tile side.
        normalize: L2-normalise both sides first (similarity = cosine).

    Returns:
        ``(indices, scores)``: (Q, k) int64 and (Q, k) float64 numpy arrays.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    chunk = _check_chunk(chunk)
    q, c = _prepare(queries, candidates, normalize=normalize)
    n_q, n_c = q.shape[0], c.shape[0]
    k = min(int(k), n_c)
    out_idx = np.empty((n_q, k), dtype=np.int64)
    out_val = np.empty((n_q, k), dtype=np.float64)
    for s in range(0, n_q, chunk):
        e = min(s + chunk, n_q)
        best_val = best_idx = None
        for t in range(0, n_c, chunk):
            f = min(t + chunk, n_c)
            tile = torch.as_tensor(q[s:e] @ c[t:f].T)  # (b, b'), no copy for numpy
            vals, idx = _block_topk(tile, k, t)  # (b, <=k)
            if best_val is not None:
                # Disjoint exact top-k sets merge exactly under the same total order.
                vals, idx = _select_topk(torch.cat([best_val, vals], 1), torch.cat([best_idx, idx], 1), k)
            best_val, best_idx = vals, idx
        out_idx[s:e] = best_idx.cpu().numpy()
        out_val[s:e] = best_val.cpu().numpy()
    return out_idx, out_val


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------
def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """medR (numpy's median: mean of the two middle values for an even count) and R@1/5/10."""
    ranks = np.asarray(ranks)
    out = {"medR": float(np.median(ranks))}
    for k in RECALL_KS:
        out[f"R@{k}"] = int(np.count_nonzero(ranks <= k)) / ranks.size
    return out


def _mean_over_bags(per_bag: list[dict[str, float]]) -> dict[str, float]:
    # Same arithmetic as the reference: np.average of the medians, recalls summed in bag order.
    out = {"medR": float(np.mean([m["medR"] for m in per_bag]))}
    for k in RECALL_KS:
        total = 0.0
        for m in per_bag:
            total += m[f"R@{k}"]
        out[f"R@{k}"] = total / len(per_bag)
    return out


def draw_bags(n: int, size: int, seed: int, bags: int) -> list[list[int]]:
    """The reference's bags: ``random.seed(seed)`` then ``bags`` x ``random.sample(range(n), size)``.

    Python's global ``random`` state is restored afterwards.
    """
    state = random.getstate()
    try:
        random.seed(seed)
        return [random.sample(range(n), size) for _ in range(bags)]
    finally:
        random.setstate(state)


def evaluate_retrieval(img_embeds, rec_embeds, medr=None, seed: int = 1234, bags: int = 10,
                       chunk: int = DEFAULT_CHUNK) -> dict[str, dict]:
    """Image-to-recipe and recipe-to-image medR and R@1/5/10 under docs/evaluation.md.

    Args:
        img_embeds: (N, D) numpy array or torch tensor (any device); row i pairs with recipe i.
        rec_embeds: (N, D) numpy array or torch tensor.
        medr: bag size, list of sizes, or None for 1000 and 10000 (see ``resolve_bag_sizes``).
        seed: seed of Python's ``random`` for drawing the bags (re-seeded per bag size; the
            caller's ``random`` state is restored).
        bags: number of bags per size (the whole-split fallback ``"all"`` is one bag).
        chunk: tile side of the similarity computation (results do not depend on it).

    Returns:
        ``{key: {"n": size, "bags": count, "im2rec": {"medR", "R@1", "R@5", "R@10"},
        "rec2im": {...}}}`` with Python numbers (recalls are fractions), JSON-serialisable.
    """
    if isinstance(bags, bool) or not isinstance(bags, (int, np.integer)) or bags < 1:
        raise ValueError(f"bags must be a positive integer, got {bags!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    chunk = _check_chunk(chunk)
    # Checked, in their own dtype: each bag is converted to float64 and normalised on its own,
    # so memory holds one bag in float64, never the whole split (row-wise normalisation gives the
    # same numbers either way).
    img, rec = _checked_pair(img_embeds, rec_embeds, ("img_embeds", "rec_embeds"), paired=True)
    n = img.shape[0]
    results: dict[str, dict] = {}
    for key, size in resolve_bag_sizes(medr, n):
        if key == "all":
            bag_list = [list(range(n))]
        else:
            bag_list = draw_bags(n, size, int(seed), int(bags))
        per_dir: dict[str, list[dict[str, float]]] = {"im2rec": [], "rec2im": []}
        for bag in bag_list:
            sel = torch.as_tensor(bag, dtype=torch.long, device=img.device)
            img_bag, rec_bag = _unit_rows(img[sel], owned=True), _unit_rows(rec[sel], owned=True)
            im2rec, rec2im = _paired_ranks(img_bag, rec_bag, chunk, both=True)  # (size,) each
            del img_bag, rec_bag  # before the next bag is gathered
            per_dir["im2rec"].append(rank_metrics(im2rec))
            per_dir["rec2im"].append(rank_metrics(rec2im))
        results[key] = {"n": size, "bags": len(bag_list)}
        results[key].update({d: _mean_over_bags(v) for d, v in per_dir.items()})
    return results


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------
def format_results(results: dict, title: str | None = None) -> str:
    """The one results table of the project: one row per bag and direction; recalls as percentages.

    Args:
        results: ``{bag: {"n": size, "bags": count, <direction>: {"medR", "R@1", "R@5", "R@10"}}}``,
            the output of ``evaluate_retrieval``; any bag keys and direction names are accepted
            (the columns widen to fit them), see :func:`results_by_bag` for per-direction metrics.
        title: an optional first line.

    Returns:
        The table as a string (no trailing newline).
    """
    rows = [(str(key), entry, str(direction), m) for key, entry in results.items()
            for direction, m in entry.items() if isinstance(m, dict)]
    key_w = max([6] + [len(r[0]) for r in rows])
    dir_w = max([10] + [len(r[2]) for r in rows])
    header = f"{'bag':<{key_w}} {'n':>7} {'bags':>4}  {'direction':<{dir_w}} {'medR':>7} " + " ".join(
        f"{f'R@{k} %':>7}" for k in RECALL_KS
    )
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for key, entry, direction, m in rows:
        recalls = " ".join(f"{100.0 * m[f'R@{k}']:>7.1f}" for k in RECALL_KS)
        lines.append(
            f"{key:<{key_w}} {entry.get('n', ''):>7} {entry.get('bags', ''):>4}  {direction:<{dir_w}} "
            f"{m['medR']:>7.2f} {recalls}"
        )
    return "\n".join(lines)


def results_by_bag(per_direction: dict[str, dict]) -> dict:
    """``{direction: {bag: {"n", "bags", "medR", "R@k"...}}}`` -> :func:`format_results`' input.

    For metrics kept per direction (GAN_test.py's ``fake2rec``, ``rec2fake``...): the result is
    ``{bag: {"n", "bags", direction: {"medR", "R@1", "R@5", "R@10"}}}``, bags in first-seen order.
    """
    rows: dict = {}
    for direction, per_bag in per_direction.items():
        for bag, entry in per_bag.items():
            row = rows.setdefault(bag, {"n": entry["n"], "bags": entry["bags"]})
            row[direction] = {k: entry[k] for k in ("medR", *(f"R@{k}" for k in RECALL_KS))}
    return rows
