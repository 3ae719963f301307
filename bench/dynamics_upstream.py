"""One side of bench/dynamics.R: scvelo.tl.recover_dynamics (plain, with autozyme's patch,
or with scvelo-rs's patch) on an h5ad's Ms/Mu/connectivities (layers as stored, float32, or
cast to float64). Args: file.h5ad variant(upstream|autozyme|scvelo_rs) threads n_genes
n_total [dtype = float32|float64]. Upstream is timed on the first n_genes genes and BENCH_SECONDS is extrapolated per
gene to n_total genes (n_genes = n_total: no extrapolation)."""
import sys, time, warnings
warnings.filterwarnings("ignore")
file, variant, threads, n_genes, n_total = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5])
dtype = sys.argv[6] if len(sys.argv) > 6 else "float32"
import numpy as np, anndata as ad, scvelo as scv
scv.settings.verbosity = 0
if variant == "autozyme":
    import autozyme
    autozyme.activate("scvelo")
elif variant == "scvelo_rs":
    import scvelo_rs.patch  # noqa: F401  (scv.tl.recover_dynamics -> Rust)
a = ad.read_h5ad(file)
a.layers["Ms"] = np.asarray(a.layers["Ms"], dtype=dtype)
a.layers["Mu"] = np.asarray(a.layers["Mu"], dtype=dtype)
b = a[:, :n_genes].copy()
w = a[:, :4].copy()
# joblib's default "loky" backend cannot start workers in this venv (multiprocessing's
# resource tracker fails), so more than one worker uses the "multiprocessing" backend
kw = {"n_jobs": threads, "show_progress_bar": False}
if threads > 1:
    kw["backend"] = "multiprocessing"
scv.tl.recover_dynamics(w, var_names="all", **kw)  # warm-up
t0 = time.perf_counter()
scv.tl.recover_dynamics(b, var_names="all", **kw)
el = time.perf_counter() - t0
print(f"fitted {int(np.sum(~np.isnan(b.var['fit_alpha'].values)))} genes x {b.n_obs} cells in {el:.3f} s")
print(f"BENCH_SECONDS={el * n_total / n_genes:.6f}")
