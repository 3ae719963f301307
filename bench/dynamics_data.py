"""Makes the inputs of bench/dynamics.R. Default: scVelo's own simulation
(datasets.simulation, 3,696 cells x 2,000 genes, pancreas size); with `--from RAW.h5`
(written by bench/dynamics_data_veloviz.R) the veloviz_pancreas739 counts. Then upstream's
filter_and_normalize and pp.moments (30 PCs, 30 neighbours). Writes an h5ad with layers Ms/Mu
(float32, as pp.moments stores them) and obsp/connectivities.
Usage: python bench/dynamics_data.py OUT.h5ad [n_obs n_vars | --from RAW.h5]"""
import sys, warnings
warnings.filterwarnings("ignore")
import numpy as np, scvelo as scv
out = sys.argv[1]
scv.settings.verbosity = 0
if len(sys.argv) > 3 and sys.argv[2] == "--from":
    import h5py, anndata as ad
    with h5py.File(sys.argv[3], "r") as f:
        S = np.asarray(f["spliced"], dtype=np.float32)
        U = np.asarray(f["unspliced"], dtype=np.float32)
        genes = [g.decode() if isinstance(g, bytes) else g for g in f["genes"][()]]
        cells = [c.decode() if isinstance(c, bytes) else c for c in f["cells"][()]]
    a = ad.AnnData(X=S.copy())
    a.var_names = genes
    a.obs_names = cells
    a.layers["spliced"] = S
    a.layers["unspliced"] = U
    scv.pp.filter_and_normalize(a, min_shared_counts=20)
else:
    n_obs = int(sys.argv[2]) if len(sys.argv) > 2 else 3696
    n_vars = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    a = scv.datasets.simulation(n_obs=n_obs, n_vars=n_vars, random_seed=0,
                                alpha=5, beta=0.5, gamma=0.3, noise_level=1)
    scv.pp.filter_and_normalize(a, min_shared_counts=0)
scv.pp.moments(a, n_pcs=30, n_neighbors=30)
for k in list(a.layers.keys()):
    if k not in ("Ms", "Mu"):
        del a.layers[k]
a.write_h5ad(out)
print(a)
