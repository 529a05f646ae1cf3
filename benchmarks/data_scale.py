#!/usr/bin/env python
"""Benchmark: the data stage (convert -> preprocess -> cell sentences) on synthetic raw counts, 10k-1M cells.

What it does, for each ``--n-cells``:

1. Generates (once, cached in ``--workdir``) a synthetic h5ad of raw counts: CSR ``X`` (float32 integers) written
   chunk by chunk straight into anndata's on-disk CSR layout with h5py, so generation never holds the matrix.
   Per cell: a number of detected genes drawn uniformly from [G/2, 3G/2] (``--genes-per-cell`` G; 1 cell in 100
   is a low-quality one with 5 genes, which ``preprocess.min_genes`` drops), genes drawn by a Zipf-like
   popularity (a few genes almost everywhere, a long tail rare), counts 1 + a geometric variable whose mean
   falls with the gene's popularity rank and scales with a per-cell library factor. 13 of the genes are
   mitochondrial (``MT-ND1``...), among the popular ones. obs: ``cell_type`` (30 values) and ``donor`` (12).
   The file is determined by (cells, genes, genes per cell, seed) and reused when they match.
2. Runs the library entry points the workflow's rules call, each in a fresh Python process:
   ``cellduality.data.convert.convert_file`` (rule convert; a plain h5ad is hard-linked),
   ``cellduality.data.preprocess.preprocess_file`` (rule preprocess: counts normalized to 10,000 and log1p'd;
   QC ``min_genes`` 10, ``min_cells`` 3, ``max_pct_mito`` 5: about 5% of the cells) and
   ``cellduality.data.sentence_table.write_sentence_table`` (rule cell_sentences; ``--top-k``, schema defaults
   otherwise).
3. Prints per step: wall time of the step inside the process (the step's module imported before the clock
   starts; numba's cached kernels load inside it; the process's total wall time beside it), CPU time, and the
   process's peak RSS (``VmHWM`` at its end: the whole process, imports included; ``getrusage(RUSAGE_CHILDREN)``
   as a fallback without /proc), then one table.

Usage::

    python benchmarks/data_scale.py --n-cells 10000 100000 1000000 --workdir /tmp/data_scale --cleanup

(The child processes put ``src/`` on PYTHONPATH themselves.) Disk: the 1M-cell input with 1,000 genes per
cell is about 8 GB, and the preprocessed copy as much again; ``--cleanup`` deletes each size's files once
measured. The machine's other load skews wall-clock figures: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from cell_sentences import _alias_table  # benchmarks/cell_sentences.py: the same gene sampler

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
GENERATOR_VERSION = 1  # bump when the synthetic data recipe changes (invalidates the cache)
MITO = ["MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3", "MT-ND3", "MT-ND4L", "MT-ND4",
        "MT-ND5", "MT-ND6", "MT-CYB"]
DATASET = {"species": "human", "labels": {"cell_type": "cell_type"}, "metadata": {"donor": "donor"},
           "constants": {"tissue": "blood"}}
PREPROCESS = {"min_genes": 10, "min_cells": 3, "max_pct_mito": 5.0}


# ----------------------------------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------------------------------

def _kernels():
    """The generator's numba kernels (splitmix64 streams per cell: a cell's values do not depend on the block)."""
    import numba

    golden = np.uint64(0x9E3779B97F4A7C15)
    m1, m2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
    s30, s27, s31, s11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)

    @numba.njit(inline="always")
    def mix(z):
        z = (z ^ (z >> s30)) * m1
        z = (z ^ (z >> s27)) * m2
        return z ^ (z >> s31)

    @numba.njit(inline="always")
    def draw(state):  # (new state, uniform in (0, 1))
        state = state + golden
        return state, (np.float64(mix(state) >> s11) + 0.5) * (1.0 / 9007199254740992.0)

    @numba.njit(inline="always")
    def cell_state(seed, cell, stream):
        return mix(mix(np.uint64(seed) * golden + np.uint64(cell)) ^ (np.uint64(stream) * m2))

    @numba.njit(parallel=True)
    def genes_per_cell(start, stop, seed, mean, n_genes):
        out = np.empty(stop - start, dtype=np.int64)
        lo = max(1, mean // 2)
        span = max(1, mean - lo) * 2 + 1
        for i in numba.prange(stop - start):
            st, u = draw(cell_state(seed, start + i, 1))
            st, v = draw(st)
            out[i] = min(5 if v < 0.01 else lo + np.int64(u * span), n_genes)
        return out

    @numba.njit(parallel=True)
    def fill(start, seed, indptr, alias_prob, alias_idx, mean_count, data, indices):
        n_genes = alias_prob.shape[0]
        for i in numba.prange(indptr.shape[0] - 1):
            o, n = indptr[i], indptr[i + 1] - indptr[i]
            st = cell_state(seed, start + i, 2)
            st, u1 = draw(st)
            st, u2 = draw(st)
            lib = np.exp(0.4 * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2))  # lognormal(0, 0.4)
            mark = np.zeros(n_genes, dtype=np.bool_)
            genes = indices[o:o + n]
            filled = draws = 0
            while filled < n and draws < 50 * n:  # Walker alias draws until n distinct genes
                st, u = draw(st)
                g = min(np.int64(u * n_genes), n_genes - 1)
                if u * n_genes - g >= alias_prob[g]:
                    g = alias_idx[g]
                draws += 1
                if not mark[g]:
                    mark[g] = True
                    genes[filled] = g
                    filled += 1
            g = 0
            while filled < n:  # only reached when n is close to n_genes
                if not mark[g]:
                    mark[g] = True
                    genes[filled] = g
                    filled += 1
                g += 1
            genes[:] = np.sort(genes)
            for j in range(n):
                m = mean_count[genes[j]] * lib
                st, u = draw(st)
                data[o + j] = np.float32(1.0 + np.floor(np.log(u) / np.log(m / (1.0 + m))))

    return genes_per_cell, fill


def gene_model(n_genes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Alias table of detection, mean extra count per gene (popularity ranks scattered over var order), names."""
    rng = np.random.default_rng(seed)
    rank = rng.permutation(n_genes) + 1  # 1 = most popular
    detect = 1.0 / rank**0.9
    detect = 0.9 * detect / detect.sum() + 0.1 / n_genes  # uniform floor: every gene can be drawn
    mean_count = 20.0 / rank**0.8 + 0.3
    names = [f"GENE{g + 1:05d}" for g in range(n_genes)]
    for name, g in zip(MITO, np.argsort(rank)[5:5 + 4 * len(MITO):4]):  # popular, not the top five
        names[g] = name
    return (*_alias_table(detect), mean_count, names)


def generate(opts: dict) -> dict:
    """Write the synthetic h5ad chunk by chunk (to a temporary name, renamed when complete)."""
    import anndata as ad
    import h5py
    import pandas as pd

    n, n_genes, seed, path = opts["n_cells"], opts["n_genes"], opts["seed"], Path(opts["path"])
    tmp = path.with_name(path.name + ".part")
    genes_per_cell, fill = _kernels()
    prob, alias, mean_count, names = gene_model(n_genes, seed)
    rng = np.random.default_rng(seed + 1)
    types = np.array([f"type_{t:02d}" for t in range(30)])
    donors = np.array([f"donor_{d:02d}" for d in range(12)])
    obs = pd.DataFrame({"cell_type": pd.Categorical(types[rng.integers(0, types.size, n)], categories=types),
                        "donor": pd.Categorical(donors[rng.integers(0, donors.size, n)], categories=donors)},
                       index=pd.Index([f"cell_{i:08d}" for i in range(n)], name="cell_id"))
    ad.AnnData(obs=obs, var=pd.DataFrame(index=pd.Index(names, name="gene_symbol"))).write_h5ad(tmp)
    del obs
    block = 50_000
    counts = np.concatenate([genes_per_cell(s, min(s + block, n), seed, opts["genes_per_cell"], n_genes)
                             for s in range(0, n, block)])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    with h5py.File(tmp, "a") as f:
        X = f.create_group("X")
        X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array([n, n_genes], dtype=np.int64)})
        X.create_dataset("indptr", data=indptr)
        d_data = X.create_dataset("data", shape=(nnz,), dtype=np.float32)
        d_idx = X.create_dataset("indices", shape=(nnz,), dtype=np.int32)
        for s in range(0, n, block):
            e = min(s + block, n)
            lo, hi = int(indptr[s]), int(indptr[e])
            data, idx = np.empty(hi - lo, dtype=np.float32), np.empty(hi - lo, dtype=np.int32)
            fill(s, seed, indptr[s:e + 1] - lo, prob, alias, mean_count, data, idx)
            d_data[lo:hi], d_idx[lo:hi] = data, idx
        f.attrs["cellduality_benchmark"] = json.dumps(params(opts))
    os.replace(tmp, path)
    return {"nnz": nnz}


def params(opts: dict) -> dict:
    return {"generator_version": GENERATOR_VERSION, **{k: opts[k] for k in ("n_cells", "n_genes", "genes_per_cell",
                                                                             "seed")}}


def cached_nnz(path: Path, opts: dict) -> int | None:
    """The non-zeros of a complete earlier generation with the same parameters, else None."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if json.loads(f.attrs.get("cellduality_benchmark", "{}")) == params(opts):
                return int(f["X"]["indptr"][-1])
    except Exception:
        pass
    return None


# ----------------------------------------------------------------------------------------------------------
# steps, each in its own process
# ----------------------------------------------------------------------------------------------------------

def step_convert(opts: dict) -> dict:
    from cellduality.data.convert import convert_file

    report = convert_file(opts["source"], opts["converted"], opts["converted"] + ".convert.json", {},
                          dataset="bench")
    return {"linked": bool(report.get("linked"))}


def step_preprocess(opts: dict) -> dict:
    from cellduality.data.preprocess import PreprocessSettings, preprocess_file

    report = preprocess_file(opts["converted"], opts["processed"], opts["processed"] + ".qc.json", DATASET,
                             PreprocessSettings(**PREPROCESS), "bench")
    return {"cells_out": report.n_cells_out, "genes_out": report.n_genes_out, "dropped": report.dropped}


def step_cell_sentences(opts: dict) -> dict:
    from cellduality.data.sentence_table import CellSentenceSettings, write_sentence_table

    splits = write_sentence_table(opts["processed"], opts["parquet"], dataset="bench",
                                  cell_sentence=CellSentenceSettings(top_k=opts["top_k"]))
    return {"splits": splits}


STEPS = {"generate": generate, "convert": step_convert, "preprocess": step_preprocess,
         "cell_sentences": step_cell_sentences}
MODULES = {"generate": "anndata", "convert": "cellduality.data.convert", "preprocess": "cellduality.data.preprocess",
           "cell_sentences": "cellduality.data.sentence_table"}  # imported before the clock starts


def own_peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(step: str, opts: dict) -> None:
    importlib.import_module(MODULES[step])
    t0, c0 = time.perf_counter(), time.process_time()
    result = STEPS[step](opts)
    result.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                  peak_rss_mb=own_peak_rss_mb())
    print(json.dumps(result), flush=True)


def run_step(step: str, opts: dict) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", step, "--child-opts",
                           json.dumps(opts)], env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = wall
    if result["peak_rss_mb"] is None:  # no /proc: the largest waited-for child so far (an upper bound)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


# ----------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-cells", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--n-genes", type=int, default=20_000)
    p.add_argument("--genes-per-cell", type=int, default=1000, help="mean detected genes per cell")
    p.add_argument("--top-k", type=int, default=100, help="cell_sentence.top_k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=str(REPO / "benchmarks" / "out"))
    p.add_argument("--cleanup", action="store_true", help="delete each size's files once it is measured")
    p.add_argument("--child", choices=sorted(STEPS), help=argparse.SUPPRESS)
    p.add_argument("--child-opts", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child, json.loads(args.child_opts))
        return 0
    if min(args.n_cells) < 1 or args.n_genes < 1 or args.genes_per_cell < 1:
        raise SystemExit("--n-cells, --n-genes and --genes-per-cell must be >= 1")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.n_cells:
        stem = f"counts_{n}x{args.n_genes}_gpc{args.genes_per_cell}_seed{args.seed}"
        opts = {"n_cells": n, "n_genes": args.n_genes, "genes_per_cell": args.genes_per_cell, "seed": args.seed,
                "top_k": args.top_k, "path": str(work / f"{stem}.h5ad"), "source": str(work / f"{stem}.h5ad"),
                "converted": str(work / f"{stem}.converted.h5ad"), "processed": str(work / f"{stem}.processed.h5ad"),
                "parquet": str(work / f"{stem}.parquet")}
        nnz = cached_nnz(Path(opts["path"]), opts)
        if nnz is None:
            print(f"[{n:,} cells] generating {opts['path']} ...", flush=True)
            gen = run_step("generate", opts)
            nnz = gen["nnz"]
            print(f"[{n:,} cells] generated {nnz:,} non-zeros in {gen['seconds']:.0f} s "
                  f"({Path(opts['path']).stat().st_size / 1e9:.2f} GB, peak RSS {gen['peak_rss_mb']:,.0f} MB)",
                  flush=True)
        for step in ("convert", "preprocess", "cell_sentences"):
            load = os.getloadavg()[0]
            r = run_step(step, opts)
            extra = {k: v for k, v in r.items()
                     if k not in ("seconds", "cpu_seconds", "peak_rss_mb", "process_seconds")}
            print(f"[{n:,} cells] {step}: {r['seconds']:.1f} s (process {r['process_seconds']:.1f} s, CPU "
                  f"{r['cpu_seconds']:.1f} s, load average before {load:.2f}), peak RSS {r['peak_rss_mb']:,.0f} MB "
                  f"{json.dumps(extra)}", flush=True)
            rows.append((n, nnz, step, r["seconds"], r["peak_rss_mb"]))
        sizes = {k: Path(opts[k]).stat().st_size / 1e9 for k in ("source", "processed", "parquet")}
        print(f"[{n:,} cells] files: input {sizes['source']:.2f} GB, preprocessed {sizes['processed']:.2f} GB, "
              f"cell sentences {sizes['parquet']:.2f} GB", flush=True)
        if args.cleanup:
            for key in ("source", "converted", "processed", "parquet"):
                for f in Path(opts[key]).parent.glob(Path(opts[key]).name + "*"):
                    f.unlink()
    print("\n| cells | non-zeros | step | wall s | s per 100k cells | peak RSS MB |\n|---:|---:|---|---:|---:|---:|")
    for n, nnz, step, seconds, rss in rows:
        print(f"| {n:,} | {nnz:,} | {step} | {seconds:.1f} | {seconds / n * 1e5:.1f} | {rss:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
