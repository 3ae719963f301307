"""One side of bench/velocity_chain.R: upstream scVelo's velocity chain on an h5ad of counts:
pp.moments -> tl.recover_dynamics -> tl.velocity(mode="dynamical") -> tl.velocity_graph.
Args: file.h5ad threads sub. recover_dynamics is timed on the first `sub` genes and its
seconds are extrapolated per gene to all genes (upstream takes hours on all of them); then the
fitted parameters and per-cell times of those genes are repeated over the other genes, so that
tl.velocity and tl.velocity_graph run on every gene at their full cost (their cost does not
depend on the fitted values). Prints STEP lines and BENCH_SECONDS (the chain, reading excluded,
recover_dynamics extrapolated)."""
import sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, anndata as ad, scvelo as scv
import scipy.sparse as sp
# the venv's scanpy calls csr_array.getnnz(), which its scipy no longer has (above 4,096 cells,
# where scanpy takes the approximate neighbours); alias the private method scipy kept
if not hasattr(sp.csr_array, "getnnz"):
    sp.csr_array.getnnz = lambda self, axis=None: self._getnnz(axis=axis)
scv.settings.verbosity = 0
file, threads, sub = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
a = ad.read_h5ad(file)
G = a.n_vars
steps = {}
def step(name, f):
    t0 = time.perf_counter()
    f()
    steps[name] = time.perf_counter() - t0

w = a[:300, :3].copy()  # warm-up: imports, numba compilation
scv.pp.moments(w, n_neighbors=30)
scv.tl.recover_dynamics(w, var_names="all", n_jobs=1, show_progress_bar=False)
step("moments", lambda: scv.pp.moments(a, n_neighbors=30))
# scVelo's velocity_graph wants the scipy sparse matrices that this scanpy now stores as sparse
# arrays (outside the timing)
for k in ("distances", "connectivities"):
    a.obsp[k] = sp.csr_matrix(a.obsp[k])
b = a[:, :sub].copy()
# n_jobs > 1 (joblib/loky) fails in the peers venv, so upstream runs n_jobs = 1 (numpy's BLAS
# gets the thread count)
step("recover_dynamics", lambda: scv.tl.recover_dynamics(b, var_names="all", n_jobs=1,
                                                           show_progress_bar=False))
steps["recover_dynamics"] *= G / sub
rep = np.arange(G) % sub
for k in b.var.columns:
    if k.startswith("fit_"):
        a.var[k] = b.var[k].values[rep]
for k in b.layers.keys():
    if k.startswith("fit_"):
        a.layers[k] = np.asarray(b.layers[k])[:, rep]
a.uns["recover_dynamics"] = b.uns["recover_dynamics"]
del b
step("velocity", lambda: scv.tl.velocity(a, mode="dynamical"))
step("velocity_graph", lambda: scv.tl.velocity_graph(a, n_jobs=1, show_progress_bar=False))
for k, v in steps.items():
    print(f"STEP {k} {v:.3f}")
print(f"BENCH_SECONDS={sum(steps.values()):.6f}")
print("velocity genes", int(a.var["velocity_genes"].sum()), "graph pairs",
      a.uns["velocity_graph"].nnz + a.uns["velocity_graph_neg"].nnz)
