"""The retrieval protocol (docs/evaluation.md) against brute-force copies of it."""

from __future__ import annotations

import importlib.util
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import utils.metrics as metrics
from utils.metrics import (
    _mean_over_bags,
    _paired_ranks,
    draw_bags,
    evaluate_retrieval,
    format_results,
    rank_metrics,
    ranks_chunked,
    resolve_bag_sizes,
    topk_chunked,
)

KEYS = ("medR", "R@1", "R@5", "R@10")


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
def paired_embeddings(n=1500, dim=32, noise=2.5, seed=0):
    """Float32 image/recipe embeddings where recipe i is a noisy copy of image i."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n, dim)).astype(np.float32)
    rec = (img + noise * rng.standard_normal((n, dim))).astype(np.float32)
    return img, rec


def tied_embeddings(n=600, dim=8, seed=0):
    """Unit vectors with four entries of +-0.5: every dot product is an exact multiple of 0.25.

    Exact arithmetic in any summation order means ties are real ties for every implementation;
    a few rows are also exact duplicates of others (candidates tied on every query).
    """
    rng = np.random.default_rng(seed)

    def draw():
        x = np.zeros((n, dim))
        for row in x:
            cols = rng.choice(dim, 4, replace=False)
            row[cols] = rng.choice([-0.5, 0.5], 4)
        return x

    img, rec = draw(), draw()
    half, d = n // 2, n // 15
    rec[half:] = img[half:]  # half the pairs agree exactly, so recalls are not trivial
    rec[:d] = rec[d : 2 * d]  # duplicated candidates
    img[2 * d : 3 * d] = img[3 * d : 4 * d]
    return img.astype(np.float32), rec.astype(np.float32)


# ------------------------------------------------------------------------------------------
# Brute-force references
# ------------------------------------------------------------------------------------------
def unit64(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_rank(queries, candidates, i):
    """Position of candidate i after a stable sort by decreasing similarity, pair first on ties."""
    sims = candidates @ queries[i]  # (n,) one query against every candidate
    # lexsort is stable; primary key -similarity, then the pair before the candidates it ties.
    order = np.lexsort((np.arange(len(sims)) != i, -sims))
    return int(np.flatnonzero(order == i)[0]) + 1


def brute_force_protocol(img, rec, sizes, seed=1234, bags=10):
    """The protocol as plain loops; returns (results, per-bag medians) for each bag size."""
    img, rec = unit64(img), unit64(rec)
    results, medians = {}, {}
    for key, size in sizes:
        if key == "all":
            bag_list = [list(range(len(img)))]
        else:
            random.seed(seed)
            bag_list = [random.sample(range(len(img)), size) for _ in range(bags)]
        entry = {"n": size, "bags": len(bag_list)}
        for direction, (q_all, c_all) in {"im2rec": (img, rec), "rec2im": (rec, img)}.items():
            glob_rank, glob_recall = [], {1: 0.0, 5: 0.0, 10: 0.0}
            for ids in bag_list:
                q, c = q_all[ids], c_all[ids]
                ranks = [brute_rank(q, c, i) for i in range(len(ids))]
                recall = {k: sum(1.0 for r in ranks if r <= k) / len(ids) for k in glob_recall}
                for k in glob_recall:
                    glob_recall[k] += recall[k]
                glob_rank.append(np.median(ranks))
            entry[direction] = {"medR": float(np.average(glob_rank))}
            entry[direction].update({f"R@{k}": v / len(bag_list) for k, v in glob_recall.items()})
            medians[(key, direction)] = glob_rank
        results[key] = entry
    return results, medians


def reference_protocol(img, rec, size, seed=1234, bags=10):
    """The reference test code's way (im2recipe rank): per-row argsort, position of the pair."""
    random.seed(seed)
    out = {}
    bag_list = [random.sample(range(len(img)), size) for _ in range(bags)]
    for direction in ("im2rec", "rec2im"):
        glob_rank, glob_recall = [], {1: 0.0, 5: 0.0, 10: 0.0}
        for ids in bag_list:
            im_sub, instr_sub = img[ids, :], rec[ids, :]
            sims = np.dot(im_sub, instr_sub.T) if direction == "im2rec" else np.dot(instr_sub, im_sub.T)
            med_rank, recall = [], {1: 0.0, 5: 0.0, 10: 0.0}
            for ii in range(size):
                sorting = np.argsort(-sims[ii, :]).tolist()
                pos = sorting.index(ii)
                for k in recall:
                    if pos + 1 <= k:
                        recall[k] += 1
                med_rank.append(pos + 1)
            for k in recall:
                glob_recall[k] += recall[k] / size
            glob_rank.append(np.median(med_rank))
        out[direction] = {"medR": float(np.average(glob_rank))}
        out[direction].update({f"R@{k}": v / bags for k, v in glob_recall.items()})
    return out


# ------------------------------------------------------------------------------------------
# Protocol against brute force
# ------------------------------------------------------------------------------------------
def test_protocol_matches_brute_force_bit_for_bit():
    img, rec = paired_embeddings()
    sizes = [("1k", 1000), ("200", 200)]
    expected, medians = brute_force_protocol(img, rec, sizes)
    got = evaluate_retrieval(img, rec, medr=[1000, 200])
    assert list(got) == ["1k", "200"]
    assert got == expected  # exact float equality, every number
    # The data is informative but imperfect, so recalls and medR are not trivial values.
    assert 0.05 < got["200"]["im2rec"]["R@1"] < 0.9 and got["1k"]["im2rec"]["medR"] > 1
    # An even bag size averages the two middle ranks: some bag median must be x.5.
    assert any(m % 1 == 0.5 for ms in medians.values() for m in ms)


def test_protocol_with_exact_ties_counts_only_strictly_greater():
    img, rec = tied_embeddings()
    sizes = [("200", 200), ("500", 500)]
    expected, medians = brute_force_protocol(img, rec, sizes)
    got = evaluate_retrieval(img, rec, medr=[200, 500], chunk=64)
    assert got == expected
    # Ties are really present and decide ranks: with "1 + strictly greater" every exact pair is
    # rank 1 even though other candidates tie with it.
    u_img, u_rec = unit64(img), unit64(rec)
    sims = u_img @ u_rec.T
    own = np.diag(sims)
    assert ((sims == own[:, None]).sum(1) > 1).any()
    assert np.array_equal(ranks_chunked(img, rec), 1 + (sims > own[:, None]).sum(1))
    assert got["200"]["im2rec"]["R@1"] >= 0.4  # half the pairs are exact


def test_reference_argsort_gives_the_same_numbers_without_ties():
    img, rec = paired_embeddings(n=1200, dim=24, seed=3)
    got = evaluate_retrieval(img, rec, medr=1000, seed=7)
    ref = reference_protocol(unit64(img), unit64(rec), 1000, seed=7)
    assert got["1k"]["im2rec"] == ref["im2rec"]
    assert got["1k"]["rec2im"] == ref["rec2im"]
    assert got["1k"]["n"] == 1000 and got["1k"]["bags"] == 10


def test_whole_split_fallback_is_one_bag_in_order():
    img, rec = paired_embeddings(n=150, dim=16, seed=5)
    got = evaluate_retrieval(img, rec)  # 1000 and 10000 both exceed 150
    expected, _ = brute_force_protocol(img, rec, [("all", 150)])
    assert got == expected
    assert got["all"]["n"] == 150 and got["all"]["bags"] == 1
    ranks = ranks_chunked(img, rec)
    assert got["all"]["im2rec"] == rank_metrics(ranks)


def test_results_do_not_depend_on_chunk_or_input_type():
    img, rec = paired_embeddings(n=700, dim=16, seed=2)
    base = evaluate_retrieval(img, rec, medr=[500, 300], bags=3)
    for chunk in (37, 256):
        assert evaluate_retrieval(img, rec, medr=[500, 300], bags=3, chunk=chunk) == base
    as_torch = evaluate_retrieval(torch.from_numpy(img), torch.from_numpy(rec), medr=[500, 300], bags=3)
    assert as_torch == base
    # Scaling an embedding does not change anything: the protocol normalises.
    scaled = evaluate_retrieval(img * 3.0, rec * 0.25, medr=[500, 300], bags=3)
    assert scaled == base


def test_torch_tile_path_equals_numpy_path():
    # CPU inputs are ranked with numpy; tensors on an accelerator take the torch branch, checked
    # here on CPU tensors.
    for img, rec in (paired_embeddings(n=260, dim=16, seed=6), tied_embeddings(n=260)):
        q, c = unit64(img), unit64(rec)
        want_row, want_col = _paired_ranks(q, c, 64, both=True)
        got_row, got_col = _paired_ranks(torch.from_numpy(q), torch.from_numpy(c), 64, both=True)
        assert isinstance(got_row, np.ndarray) and got_row.dtype == np.int64
        assert np.array_equal(got_row, want_row) and np.array_equal(got_col, want_col)
        sims = q @ c.T
        assert np.array_equal(want_col, 1 + (sims > np.diag(sims)[None, :]).sum(0))


# ------------------------------------------------------------------------------------------
# Per-bag conversion against the former whole-split conversion
# ------------------------------------------------------------------------------------------
def _whole_split_float64(x, name):
    """The former ``_as_float64``: the whole input copied to float64 (kept as the reference)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to(torch.float64)
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float64)))
    assert t.dim() == 2 and bool(torch.isfinite(t).all()), name
    return t


def evaluate_retrieval_whole_split(img_embeds, rec_embeds, medr=None, seed=1234, bags=10, chunk=4096):
    """``evaluate_retrieval`` as it was before the per-bag conversion: every row of the split
    copied to float64 and normalised first, then the bags gathered from those copies."""
    img = torch.nn.functional.normalize(_whole_split_float64(img_embeds, "img"), dim=1)
    rec = torch.nn.functional.normalize(_whole_split_float64(rec_embeds, "rec"), dim=1)
    img, rec = img.numpy(), rec.numpy()
    n = img.shape[0]
    results = {}
    for key, size in resolve_bag_sizes(medr, n):
        bag_list = [list(range(n))] if key == "all" else draw_bags(n, size, seed, bags)
        per_dir = {"im2rec": [], "rec2im": []}
        for bag in bag_list:
            sel = np.asarray(bag, dtype=np.int64)
            im2rec, rec2im = _paired_ranks(img[sel], rec[sel], chunk, both=True)
            per_dir["im2rec"].append(rank_metrics(im2rec))
            per_dir["rec2im"].append(rank_metrics(rec2im))
        results[key] = {"n": size, "bags": len(bag_list)}
        results[key].update({d: _mean_over_bags(v) for d, v in per_dir.items()})
    return results


@pytest.mark.parametrize("case", ["float32", "float16", "float64", "torch", "scaled", "tied", "all"])
def test_per_bag_conversion_equals_whole_split_conversion(case):
    n, dim, medr, chunk = 2600, 48, [1000, 300], 4096
    img, rec = paired_embeddings(n=n, dim=dim, noise=1.5, seed=11)
    if case == "float16":
        img, rec = img.astype(np.float16), rec.astype(np.float16)
    elif case == "float64":
        rng = np.random.default_rng(12)
        img, rec = img.astype(np.float64) + rng.standard_normal(img.shape) * 1e-9, rec.astype(np.float64)
    elif case == "torch":
        img, rec = torch.from_numpy(img), torch.from_numpy(rec)
    elif case == "scaled":  # rows of very different norms: normalisation matters
        scale = np.random.default_rng(13).uniform(1e-3, 1e3, (n, 1)).astype(np.float32)
        img, rec, chunk = img * scale, rec / scale, 128
    elif case == "tied":
        img, rec = tied_embeddings(n=n)
        medr, chunk = [500], 97
    elif case == "all":
        img, rec, medr = img[:700], rec[:700], None
    want = evaluate_retrieval_whole_split(img, rec, medr=medr, seed=5, bags=3, chunk=chunk)
    before = np.array(img, copy=True), np.array(rec, copy=True)
    got = evaluate_retrieval(img, rec, medr=medr, seed=5, bags=3, chunk=chunk)
    assert got == want  # exact float equality, every number
    assert np.array_equal(before[0], np.asarray(img)) and np.array_equal(before[1], np.asarray(rec))  # untouched


def test_only_one_bag_is_converted_to_float64(monkeypatch):
    img, rec = paired_embeddings(n=3000, dim=16, seed=4)
    seen = []
    unit_rows = metrics._unit_rows

    def spy(t, **kwargs):
        seen.append((tuple(t.shape), t.dtype))
        return unit_rows(t, **kwargs)

    monkeypatch.setattr(metrics, "_unit_rows", spy)
    evaluate_retrieval(img, rec, medr=[200, 1000], bags=2)
    # Two rows per bag (images, recipes), never the 3000-row split; the input stays float32.
    assert seen == [((200, 16), torch.float32)] * 4 + [((1000, 16), torch.float32)] * 4


def test_read_only_and_memory_mapped_inputs(tmp_path):
    img, rec = paired_embeddings(n=400, dim=8, seed=9)
    want = evaluate_retrieval(img, rec, medr=100, bags=2)
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "rec.npy", rec)
    mapped = np.load(tmp_path / "img.npy", mmap_mode="r"), np.load(tmp_path / "rec.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not writable" warning from torch
        assert evaluate_retrieval(*mapped, medr=100, bags=2) == want
    # A strided view and plain lists give the same numbers too.
    wide = np.repeat(img, 2, axis=1)
    assert evaluate_retrieval(wide[:, ::2], rec, medr=100, bags=2) == want
    assert evaluate_retrieval(img[:120].tolist(), rec[:120].tolist()) == evaluate_retrieval(img[:120], rec[:120])


def test_bags_and_python_random_state():
    img, rec = paired_embeddings(n=400, dim=8, seed=1)
    random.seed(99)
    random.random()
    state = random.getstate()
    evaluate_retrieval(img, rec, medr=[100, 200], seed=5, bags=4)
    assert random.getstate() == state
    random.seed(5)
    expected = [random.sample(range(400), 100) for _ in range(4)]
    random.setstate(state)
    assert draw_bags(400, 100, 5, 4) == expected
    assert random.getstate() == state
    # Different seeds draw different bags, hence (almost surely) different numbers.
    a = evaluate_retrieval(img, rec, medr=100, seed=1, bags=2)
    b = evaluate_retrieval(img, rec, medr=100, seed=2, bags=2)
    assert a != b


def test_rank_metrics_on_known_ranks():
    m = rank_metrics(np.array([1, 2, 3, 10]))
    assert m == {"medR": 2.5, "R@1": 0.25, "R@5": 0.75, "R@10": 1.0}
    m = rank_metrics(np.array([4, 1, 12]))
    assert m == {"medR": 4.0, "R@1": 1 / 3, "R@5": 2 / 3, "R@10": 2 / 3}


# ------------------------------------------------------------------------------------------
# Bag sizes
# ------------------------------------------------------------------------------------------
def test_resolve_bag_sizes_rules():
    assert resolve_bag_sizes(None, 51304) == [("1k", 1000), ("10k", 10000)]
    assert resolve_bag_sizes(None, 10000) == [("1k", 1000), ("10k", 10000)]
    assert resolve_bag_sizes(None, 5000) == [("1k", 1000)]
    assert resolve_bag_sizes(None, 999) == [("all", 999)]
    assert resolve_bag_sizes([200, 1000, 200], 1500) == [("200", 200), ("1k", 1000)]
    assert resolve_bag_sizes([2000, 500], 1500) == [("500", 500)]
    assert resolve_bag_sizes([2000], 1500) == [("all", 1500)]
    assert resolve_bag_sizes(1000, 1500) == [("1k", 1000)]
    assert resolve_bag_sizes(np.int64(10000), 20000) == [("10k", 10000)]
    for bad in ([0], [-5], [], [1.5], [True]):
        with pytest.raises(ValueError):
            resolve_bag_sizes(bad, 100)
    with pytest.raises(ValueError):
        resolve_bag_sizes(None, 0)


def test_bad_input_is_reported_clearly():
    img, rec = paired_embeddings(n=20, dim=4)
    bad = img.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"img_embeds: row 3"):
        evaluate_retrieval(bad, rec)
    big, big_rec = paired_embeddings(n=6000, dim=4)  # checked in blocks of rows: the row is still exact
    big[5000, 0] = np.inf
    with pytest.raises(ValueError, match=r"img_embeds: row 5000 holds NaN or inf"):
        evaluate_retrieval(big, big_rec)
    with pytest.raises(ValueError, match=r"rec_embeds: row 4097"):
        evaluate_retrieval(big_rec, torch.from_numpy(big_rec).index_fill(0, torch.tensor([4097]), float("nan")))
    with pytest.raises(ValueError, match="cannot be read as a float array"):
        evaluate_retrieval([["a", "b"]], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="img_embeds has 20 rows but rec_embeds has 19"):
        evaluate_retrieval(img, rec[:19])
    with pytest.raises(ValueError, match="dimension"):
        evaluate_retrieval(img, rec[:, :3])
    with pytest.raises(ValueError, match="2-D"):
        evaluate_retrieval(img[0], rec[0])
    with pytest.raises(ValueError, match="bags"):
        evaluate_retrieval(img, rec, bags=0)


# ------------------------------------------------------------------------------------------
# Chunked helpers against dense computations
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", ["random", "tied"])
def test_ranks_chunked_equals_dense(data):
    img, rec = paired_embeddings(n=300, dim=16) if data == "random" else tied_embeddings(n=300)
    q, c = unit64(img), unit64(rec)
    sims = q @ c.T
    dense = 1 + (sims > np.diag(sims)[:, None]).sum(1)
    for chunk in (3, 64, 299, 300, 4096):
        got = ranks_chunked(img, rec, chunk=chunk)
        assert got.dtype == np.int64 and got.shape == (300,)
        assert np.array_equal(got, dense), chunk
    # Without normalisation the raw dot products are ranked.
    raw = img.astype(np.float64) @ rec.astype(np.float64).T
    dense_raw = 1 + (raw > np.diag(raw)[:, None]).sum(1)
    assert np.array_equal(ranks_chunked(img, rec, chunk=50, normalize=False), dense_raw)


@pytest.mark.parametrize("data", ["random", "tied"])
def test_topk_chunked_equals_dense_stable_sort(data):
    if data == "random":
        q_raw, _ = paired_embeddings(n=50, dim=16, seed=8)
        c_raw, _ = paired_embeddings(n=130, dim=16, seed=9)
    else:
        q_raw, c_raw = tied_embeddings(n=130, seed=4)
        q_raw = q_raw[:50]
    q, c = unit64(q_raw), unit64(c_raw)
    sims = q @ c.T  # (50, 130)
    order = np.argsort(-sims, axis=1, kind="stable")  # ties by increasing index
    if data == "tied":
        assert any(len(np.unique(row[:5])) < 5 for row in np.take_along_axis(sims, order, 1))
    for k in (1, 5, 40):
        for chunk in (7, 64, 130, 4096):
            idx, scores = topk_chunked(q_raw, c_raw, k, chunk=chunk)
            assert idx.shape == (50, k) and scores.shape == (50, k)
            assert np.array_equal(idx, order[:, :k]), (k, chunk)
            np.testing.assert_allclose(scores, np.take_along_axis(sims, order[:, :k], 1), rtol=0, atol=1e-12)
    idx, _ = topk_chunked(q_raw, c_raw, 500, chunk=32)  # k larger than N is clipped
    assert np.array_equal(idx, order)
    with pytest.raises(ValueError):
        topk_chunked(q_raw, c_raw, 0)


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------
def test_json_round_trip_and_table():
    img, rec = paired_embeddings(n=300, dim=8)
    res = evaluate_retrieval(img, rec, medr=[100, 200], bags=2)
    assert json.loads(json.dumps(res)) == res
    for entry in res.values():
        for d in ("im2rec", "rec2im"):
            assert set(entry[d]) == set(KEYS)
            assert all(type(v) is float for v in entry[d].values())
            assert all(0.0 <= entry[d][k] <= 1.0 for k in KEYS[1:])
    table = format_results(res, title="test split")
    lines = table.splitlines()
    assert lines[0] == "test split" and "R@1 %" in lines[1] and "medR" in lines[1]
    assert len(lines) == 3 + 4  # title, header, rule, 2 bags x 2 directions
    row = lines[3].split()
    assert row[:4] == ["100", "100", "2", "im2rec"]
    assert float(row[4]) == pytest.approx(res["100"]["im2rec"]["medR"], abs=0.005)
    assert float(row[5]) == pytest.approx(100 * res["100"]["im2rec"]["R@1"], abs=0.05)
    fixed = {"1k": {"n": 1000, "bags": 10, "im2rec": {"medR": 1.0, "R@1": 0.64, "R@5": 0.883, "R@10": 0.926}}}
    assert "64.0    88.3    92.6" in format_results(fixed)


def test_bench_script_runs_small():
    path = Path(__file__).resolve().parents[1] / "bench" / "eval.py"
    spec = importlib.util.spec_from_file_location("bench_eval", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.get_parser().parse_args([]).n == 12000
    out = mod.main(["--n", "400", "--dim", "8", "--medr", "100", "300", "--bags", "2", "--no_progress"])
    assert out["ratio"] > 0 and out["reference_s"] > 0
    assert out["max_metric_diff"] < 0.01


def test_bench_memory_mode_runs_small():
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: --memory reads the old utils/metrics.py from git")
    spec = importlib.util.spec_from_file_location("bench_eval_memory", root / "bench" / "eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--memory", "--memory_n", "300", "--medr", "100", "--dim", "8", "--bags", "2",
                    "--old_rev", "HEAD"])
    (row,) = out["memory"]
    assert (row["n"], row["bag"], row["identical"]) == (300, 100, True)
    for side in ("old", "new"):
        assert row[side]["inputs_bytes"] == 2 * 300 * 8 * 4 and row[side]["extra_bytes"] >= 0
