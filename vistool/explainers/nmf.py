"""Non-negative matrix factorisation of a layer's activations (Deep Feature Factorization,
Collins et al., 2018): the activations over a batch, as a (channels x positions) matrix,
shifted to non-negative per channel and factorised into concepts, each a channel vector and
a map per image.

As pytorch-grad-cam's ``DeepFeatureFactorization``, which runs scikit-learn's NMF: the same
coordinate descent from the same random start (NumPy's generator, seed 0), the shift added
back to the concepts. Used by the ``dff`` CAM method and by :func:`vistool.factorize`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

__all__ = ["Factors", "factorization_of", "nmf"]


class Factors(NamedTuple):
    """A factorisation: ``raw`` (N, c, h, w) each concept's weight at each position of each
    image; ``concepts`` (c, K) each concept's channel vector; ``scores`` (c, classes) the
    head's output for each concept (None without a head); ``rounds`` the NMF's rounds."""

    raw: torch.Tensor
    concepts: torch.Tensor
    scores: torch.Tensor | None
    rounds: int


def nmf(x: torch.Tensor, components: int, max_iter: int = 200, tol: float = 1e-4,
        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``x`` (n, m), non-negative, as ``w @ h`` with ``w`` (n, components) and ``h``
    (components, m) non-negative, least squares: scikit-learn's ``NMF(init="random",
    random_state=seed)`` (cyclic coordinate descent; stops when the projected gradient's
    L1 norm falls to ``tol`` times its first value, or after ``max_iter`` rounds). Returns
    w, h (on ``x``'s device, in its dtype) and the rounds run.

    In NumPy on the CPU: each round updates one column after another, a few small
    operations each, and NumPy's cost per operation is a third of torch's (2x faster
    overall here; on a GPU each would be a kernel launch)."""
    array = x.detach().cpu().numpy() if x.dtype in (torch.float32, torch.float64) else \
        x.detach().float().cpu().numpy()
    rng = np.random.RandomState(seed)
    avg = np.sqrt(array.mean() / components)
    h = np.abs(avg * rng.standard_normal((components, array.shape[1]))).astype(array.dtype)
    w = np.abs(avg * rng.standard_normal((array.shape[0], components))).astype(array.dtype)
    wt = np.ascontiguousarray(w.T)  # (components, n): each column a contiguous row
    first, rounds = None, 0
    while rounds < max_iter:
        rounds += 1
        violation = _descend(array, wt, h) + _descend(array.T, h, wt)
        first = violation if first is None else first
        if first == 0 or violation / first <= tol:
            break
    return torch.from_numpy(wt.T.copy()).to(x), torch.from_numpy(h).to(x), rounds


def _descend(x: np.ndarray, wt: np.ndarray, h: np.ndarray) -> float:
    """One round of coordinate descent on ``wt`` (in place) for ``x ~ wt.T @ h``: each
    concept in turn, all of its entries at once (they do not depend on one another). The
    L1 norm of the projected gradient, before the updates."""
    hht, hx = h @ h.T, h @ x.T
    before, grads = wt.copy(), np.empty_like(wt)  # (a row changes only at its own update)
    for t in range(len(wt)):
        grad = np.subtract(hht[t] @ wt, hx[t], out=grads[t])
        if hht[t, t] != 0:
            np.maximum(wt[t] - grad / hht[t, t], 0, out=wt[t])
    return float(np.abs(np.where(before == 0, np.minimum(grads, 0), grads)).sum(dtype=np.float64))


def factorization_of(act: torch.Tensor, concepts: int,
                     head: Callable[[torch.Tensor], torch.Tensor] | None,
                     max_iter: int = 200) -> Factors:
    """The factorisation of activations ``act`` (N, K, h, w) into ``concepts`` concepts,
    their class scores by ``head`` (None without one)."""
    n, k, h, w = act.shape
    matrix = torch.nan_to_num(act.detach().transpose(0, 1).reshape(k, -1))
    offset = matrix.amin(1, keepdim=True)
    weights, maps, rounds = nmf(matrix - offset, concepts, max_iter)
    vectors = (weights + offset).T  # (c, K)
    with torch.no_grad():
        scores = None if head is None else head(vectors.to(_dtype(head, vectors)))
    return Factors(maps.reshape(concepts, n, h, w).transpose(0, 1), vectors, scores, rounds)


def _dtype(head, vectors: torch.Tensor) -> torch.dtype:
    """The head's parameters' dtype (a float32 head for float64 concepts), else theirs."""
    parameter = next(iter(head.parameters()), None) if isinstance(head, nn.Module) else None
    return vectors.dtype if parameter is None else parameter.dtype
