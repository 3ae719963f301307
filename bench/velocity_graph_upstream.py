"""One side of bench/velocity_graph.R: upstream scVelo's tl.velocity_graph (n_jobs = 1, see
run()), then
tl.velocity_embedding and the stream grid (compute_velocity_on_grid) on an h5ad from
bench/velocity_graph_data.py.
Usage: python bench/velocity_graph_upstream.py FILE.h5ad THREADS"""
import sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, anndata as ad, scvelo as scv
import matplotlib
matplotlib.use("Agg")
from scvelo.plotting.velocity_embedding_grid import compute_velocity_on_grid
scv.settings.verbosity = 0
a = ad.read_h5ad(sys.argv[1])
threads = int(sys.argv[2])
a.uns["velocity_params"] = {"mode": "dynamical"}
a.obsm["X_umap"] = a.obsm["X_pc2"]

def run(x):
    # n_jobs > 1 (joblib/loky) fails in the peers venv (Python 3.11.2: "'_thread.RLock' object
    # has no attribute '_recursion_count'"), so upstream runs its default n_jobs = 1; the
    # thread count still applies to numpy's BLAS
    scv.tl.velocity_graph(x, n_jobs=1, show_progress_bar=False)
    scv.tl.velocity_embedding(x, basis="umap")
    return compute_velocity_on_grid(x.obsm["X_umap"], x.obsm["velocity_umap"], density=1,
                                    autoscale=False, adjust_for_stream=True)

run(a[:200].copy())  # warm-up: imports, joblib pool
t0 = time.perf_counter()
run(a)
print(f"BENCH_SECONDS={time.perf_counter() - t0:.6f}")
print("pairs", a.uns["velocity_graph"].nnz + a.uns["velocity_graph_neg"].nnz)
