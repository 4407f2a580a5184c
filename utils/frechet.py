"""Frechet distance between two sets of features (the FID formula, docs/run_folders.md).

For feature sets A (n_a, D) and B (n_b, D) with means m_a, m_b and covariances S_a, S_b::

    FD = |m_a - m_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))

GAN_test.py measures it between real and generated images in the FoodSpace image-encoder
embedding space, so it needs no Inception network and nothing downloaded.

The trace of the matrix square root is computed either with ``scipy.linalg.sqrtm`` of the
product (the usual FID code; used when scipy is installed) or, without scipy, exactly from
symmetric eigen-decompositions: ``tr((S_a S_b)^(1/2)) = sum_i sqrt(lambda_i)`` where ``lambda_i``
are the eigenvalues of the symmetric PSD matrix ``S_a^(1/2) S_b S_a^(1/2)`` (similar to ``S_a S_b``).

**Few samples.** With ``n <= D`` samples the sample covariance is singular (rank ``n - 1``) and a
poor estimate; the distance is then computed with Ledoit-Wolf shrunk covariances
``(1 - d) S + d (tr(S) / D) I`` (shrinkage ``d`` estimated from the data as in Ledoit & Wolf 2004,
the formula of scikit-learn's ``ledoit_wolf_shrinkage``) for *both* sets, and the result says so
in ``note``. Such a distance is biased and comparable only with others computed the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SHRINK_CHOICES = ("auto", "ledoit-wolf", "none")


@dataclass(frozen=True)
class FrechetResult:
    """A Frechet distance and how it was computed."""

    distance: float
    n_a: int
    n_b: int
    dim: int
    shrinkage: tuple[float, float] | None  # Ledoit-Wolf (or fixed) shrinkage of each set, None if unshrunk
    method: str  # "scipy" or "eigh"
    note: str  # "" or a warning such as the small-sample one

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict."""
        d = asdict(self)
        d["shrinkage"] = list(self.shrinkage) if self.shrinkage is not None else None
        return d


def _as_features(x, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"{name}: expected a (N, D) feature array with N >= 2, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        row = int(np.nonzero(~np.isfinite(arr).all(axis=1))[0][0])
        raise ValueError(f"{name}: row {row} holds NaN or inf")
    return arr


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of ``x`` (N, D) and its shrinkage in [0, 1].

    Returns:
        ``((D, D) covariance, shrinkage)``: ``(1 - d) S + d mu I`` with ``S`` the maximum-likelihood
        covariance (divided by N) and ``mu = tr(S) / D``.
    """
    n, p = x.shape
    xc = x - x.mean(axis=0)  # (N, D)
    emp = xc.T @ xc / n  # (D, D)
    mu = float(np.trace(emp)) / p
    x2 = xc**2
    # ||Xc^T Xc||_F^2 = ||Xc Xc^T||_F^2: use the smaller Gram matrix.
    gram = xc @ xc.T if n < p else emp * n  # (min, min)
    delta_ = float(np.sum(gram**2)) / n**2
    beta_ = float(np.sum(x2.sum(axis=1) ** 2))  # sum of all entries of X2^T X2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * float(np.trace(emp)) + p * mu**2) / p
    beta = min(beta, delta)
    shrink = 0.0 if beta == 0 else beta / delta
    return (1.0 - shrink) * emp + shrink * mu * np.eye(p), float(shrink)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray, method: str = "auto") -> tuple[float, str]:
    """``tr((sigma_a sigma_b)^(1/2))`` for two PSD matrices.

    Args:
        sigma_a, sigma_b: (D, D) symmetric positive semi-definite.
        method: ``"scipy"`` (``scipy.linalg.sqrtm`` of the product, as the usual FID code), ``"eigh"``
            (symmetric eigen-decompositions, exact for PSD inputs) or ``"auto"`` (scipy if installed).

    Returns:
        ``(trace, method used)``.
    """
    if method == "auto":
        try:
            import scipy.linalg  # noqa: F401

            method = "scipy"
        except ImportError:
            method = "eigh"
    if method == "scipy":
        from scipy import linalg

        covmean = linalg.sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(covmean).all():
            # Nearly singular product: offset the diagonals (as pytorch-fid does).
            offset = np.eye(sigma_a.shape[0]) * 1e-6
            covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
        return float(np.real(np.trace(covmean))), "scipy"
    if method != "eigh":
        raise ValueError(f"unknown method {method!r}; use auto, scipy or eigh")
    root_a = _sqrt_psd(sigma_a)
    inner = root_a @ sigma_b @ root_a  # (D, D) symmetric PSD, same eigenvalues as sigma_a @ sigma_b
    vals = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum()), "eigh"


def frechet_from_stats(mu_a, sigma_a, mu_b, sigma_b, method: str = "auto") -> tuple[float, str]:
    """The Frechet distance of two Gaussians given by their means (D,) and covariances (D, D)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    tr_sqrt, used = trace_sqrt_product(sigma_a, sigma_b, method)
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * tr_sqrt)
    return max(value, 0.0), used  # rounding can leave a tiny negative number for equal inputs


def frechet_distance(feats_a, feats_b, *, shrinkage: str | float = "auto", method: str = "auto") -> FrechetResult:
    """Frechet distance between two feature sets.

    Args:
        feats_a: (N_a, D) array or tensor (e.g. real-image features).
        feats_b: (N_b, D) array or tensor (e.g. generated-image features).
        shrinkage: ``"auto"`` (Ledoit-Wolf for both sets when either has N <= D, else the sample
            covariances), ``"ledoit-wolf"`` (always), ``"none"`` (never), or a float ``d`` in [0, 1]
            for the fixed shrinkage ``(1 - d) S + d (tr(S) / D) I`` of both sets.
        method: see :func:`trace_sqrt_product`.

    Returns:
        A :class:`FrechetResult`; ``note`` says when the small-sample shrinkage was used.
    """
    a = _as_features(feats_a, "feats_a")
    b = _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a has dimension {a.shape[1]} but feats_b has {b.shape[1]}")
    (n_a, dim), n_b = a.shape, b.shape[0]
    small = min(n_a, n_b) <= dim
    note = ""
    if isinstance(shrinkage, str):
        if shrinkage not in SHRINK_CHOICES:
            raise ValueError(f"shrinkage {shrinkage!r}: use one of {', '.join(SHRINK_CHOICES)} or a number in [0, 1]")
        use_lw = shrinkage == "ledoit-wolf" or (shrinkage == "auto" and small)
        if use_lw:
            sigma_a, d_a = ledoit_wolf(a)
            sigma_b, d_b = ledoit_wolf(b)
            shrunk: tuple[float, float] | None = (d_a, d_b)
        else:
            sigma_a, sigma_b, shrunk = np.cov(a, rowvar=False), np.cov(b, rowvar=False), None
    else:
        d = float(shrinkage)
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"shrinkage {shrinkage!r} must lie in [0, 1]")

        def fixed(x: np.ndarray) -> np.ndarray:
            s = np.cov(x, rowvar=False)
            return (1.0 - d) * s + d * (np.trace(s) / dim) * np.eye(dim)

        sigma_a, sigma_b, shrunk = fixed(a), fixed(b), (d, d)
    if small:
        how = (f"Ledoit-Wolf shrunk covariances (shrinkage {shrunk[0]:.3f} / {shrunk[1]:.3f})"
               if shrunk is not None else "the singular sample covariances")
        note = (f"small sample: {min(n_a, n_b)} samples for {dim} feature dimensions (N <= D), so the "
                f"sample covariance is singular; the distance uses {how}. It is biased and comparable only "
                f"with distances computed the same way")
    distance, used = frechet_from_stats(a.mean(axis=0), sigma_a, b.mean(axis=0), sigma_b, method)
    return FrechetResult(distance, n_a, n_b, dim, shrunk, used, note)
