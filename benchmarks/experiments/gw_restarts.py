"""Gromov-Wasserstein distance: how far above the best of many solver restarts, and how long per call.

    python benchmarks/experiments/gw_restarts.py [--cases 24] [--points 20,60] [--restarts 100]
        [--sizes 100,300,1000,1000x800] [--size-restarts 0] [--seed 0]

Compares the previous ``gromov_wasserstein`` (POT's solver from the product coupling and 4 seeded random vertex
couplings, the minimum kept) with the current one (``cellduality.evaluation.generation_metrics``: multilevel local
search, see its module notes), both on max-normalised distances (``gw_distance_normalized``).

1. Random cases: ``--cases`` pairs of point clouds of ``--points`` (20-60) points each (a third of unequal
   sizes) in 2-7 dimensions: Gaussian, cubed Gaussian (heavy-tailed), uniform**4 (skewed) and 4 Gaussian
   clusters. Reference:
   the best of ``--restarts`` + 1 runs of POT's solver (``ot.gromov.gromov_wasserstein2``, square loss) from the
   product coupling and random vertex couplings (``ot.emd`` of a random cost, seed 0: the previous method's 5
   runs are the first of them). Prints each method's gap to it (quantiles, cases more than 1% above) and mean
   time per call.
2. Sizes: real and generated sets of ``--sizes`` cells (``N`` or ``NxM``), "cells" in 50 dimensions from 6
   clusters of random weights and spreads, the generated clusters shifted a little (a generator that roughly
   fits). Prints the
   time per call and value of both methods; with ``--size-restarts R`` also the best of R + 1 POT runs and the
   gaps to it (at 1000 cells a POT run takes 1-5 s).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ot
from scipy.spatial.distance import cdist

from cellduality.evaluation.generation_metrics import GW_INITS, gromov_wasserstein


def _normalized(X: np.ndarray) -> np.ndarray:
    D = cdist(X, X)
    return D / D.max() if D.max() > 0 else D


def pot_runs(X: np.ndarray, Y: np.ndarray, n_random: int, seed: int) -> list[float]:
    """POT's solver from the product coupling, then from ``n_random`` random vertex couplings (seeded)."""
    C1, C2 = _normalized(X), _normalized(Y)
    p, q = np.full(len(X), 1 / len(X)), np.full(len(Y), 1 / len(Y))
    rng = np.random.default_rng(seed)
    starts = [None] + [ot.emd(p, q, rng.random((len(X), len(Y)))) for _ in range(n_random)]
    return [float(ot.gromov.gromov_wasserstein2(C1, C2, p, q, loss_fun="square_loss", G0=G0)) for G0 in starts]


def previous(X: np.ndarray, Y: np.ndarray, seed: int = 0) -> float:
    """The previous ``gromov_wasserstein`` (5 starts), as it was."""
    return max(min(pot_runs(X, Y, 4, seed)), 0.0)


def random_case(rng: np.random.Generator, i: int, low: int = 20, high: int = 60) -> tuple[str, np.ndarray, np.ndarray]:
    kind = ("gauss", "cubed", "skewed", "clusters")[i % 4]
    n = int(rng.integers(low, high + 1))
    m = int(rng.integers(low, high + 1)) if i % 3 == 0 else n
    d = int(rng.integers(2, 8))
    centers = rng.normal(0, 4, (4, d))

    def draw(k: int) -> np.ndarray:
        if kind == "gauss":
            return rng.normal(size=(k, d))
        if kind == "cubed":
            return rng.normal(size=(k, d)) ** 3
        if kind == "skewed":
            return rng.uniform(size=(k, d)) ** 4
        return centers[rng.integers(0, 4, k)] + rng.normal(size=(k, d))

    return f"{kind} {n}x{m} d={d}", draw(n), draw(m)


def cells(rng: np.random.Generator, n: int, m: int, d: int = 50, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    centers, spread = rng.normal(0, 3, (k, d)), rng.uniform(0.5, 1.5, k)
    weights = rng.dirichlet(np.full(k, 2.0))

    def draw(size: int, shift: np.ndarray) -> np.ndarray:
        label = rng.choice(k, size, p=weights)
        return centers[label] + shift[label] + rng.normal(size=(size, d)) * spread[label, None]

    return draw(n, np.zeros((k, d))), draw(m, rng.normal(0, 0.5, (k, d)))


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def summary(name: str, gaps: list[float], times: list[float]) -> str:
    g = np.array(gaps)
    q = np.percentile(g, [0, 50, 90, 100])
    return (f"{name:>9}: gap to the best restart min {q[0]:+6.2f}%  median {q[1]:+6.2f}%  90% {q[2]:+6.2f}%  "
            f"max {q[3]:+6.2f}%  >1% above: {np.sum(g > 1)}/{len(g)}  time/call {np.mean(times):.3f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--points", default="20,60", help="fewest,most points of a random case's clouds")
    parser.add_argument("--restarts", type=int, default=100)
    parser.add_argument("--sizes", default="100,300,1000,1000x800")
    parser.add_argument("--size-restarts", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gromov_wasserstein(np.eye(3), np.eye(3))  # imports POT before timing

    rng = np.random.default_rng(args.seed)
    print(f"{args.cases} random cases; reference: best of {args.restarts + 1} POT runs; current n_init={GW_INITS}")
    gaps: dict[str, list[float]] = {"previous": [], "current": []}
    times: dict[str, list[float]] = {"previous": [], "current": []}
    for i in range(args.cases):
        label, X, Y = random_case(rng, i, *(int(v) for v in args.points.split(",")))
        best = min(pot_runs(X, Y, args.restarts, seed=0))  # its first 5 runs are the previous method's
        row = []
        for name, fn in (("previous", previous), ("current", gromov_wasserstein)):
            value, took = timed(fn, X, Y)
            gaps[name].append(100 * (value / best - 1))
            times[name].append(took)
            row.append(f"{name} {gaps[name][-1]:+6.2f}% {took:5.2f}s")
        print(f"  {label:<22} {'  '.join(row)}", flush=True)
    for name in gaps:
        print(summary(name, gaps[name], times[name]))

    sizes = [tuple(int(v) for v in (s.split("x") * 2)[:2]) for s in args.sizes.split(",") if s]
    if sizes:
        print("\nclustered 50-d cells, real vs generated; value (normalised) and time per call"
              + (f"; gap to the best of {args.size_restarts + 1} POT runs" if args.size_restarts else ""))
    for n, m in sizes:
        X, Y = cells(np.random.default_rng(args.seed + n + m), n, m)
        row = []
        best = min(pot_runs(X, Y, args.size_restarts, seed=0)) if args.size_restarts else None
        for name, fn in (("previous", previous), ("current", gromov_wasserstein)):
            value, took = timed(fn, X, Y)
            gap = f" ({100 * (value / best - 1):+.2f}%)" if best else ""
            row.append(f"{name} {value:.5f}{gap} {took:6.2f}s")
        print(f"  {f'{n}x{m}':>9} cells: {'  '.join(row)}", flush=True)


if __name__ == "__main__":
    main()
