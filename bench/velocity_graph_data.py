"""Makes the input of bench/velocity_graph.R: scVelo's simulation at pancreas size (3,696 cells
x 2,000 genes, as bench/dynamics_data.py), filter_and_normalize, pp.moments (30 PCs, 30
neighbours), steady-state velocities (tl.velocity, mode "deterministic": fast; the graph's cost
does not depend on how velocities were fitted) and a 2-D embedding (the first two PCs; umap
would only add minutes). Writes layers Ms and velocity, var velocity_genes, obsp distances,
obsm X_pc2.
Usage: python bench/velocity_graph_data.py OUT.h5ad [n_obs n_vars]"""
import sys, warnings
warnings.filterwarnings("ignore")
import numpy as np, scvelo as scv
out = sys.argv[1]
n_obs = int(sys.argv[2]) if len(sys.argv) > 2 else 3696
n_vars = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
scv.settings.verbosity = 0
a = scv.datasets.simulation(n_obs=n_obs, n_vars=n_vars, random_seed=0,
                            alpha=5, beta=0.5, gamma=0.3, noise_level=1)
scv.pp.filter_and_normalize(a, min_shared_counts=0)
scv.pp.moments(a, n_pcs=30, n_neighbors=30)
scv.tl.velocity(a, mode="deterministic")
a.obsm["X_pc2"] = np.asarray(a.obsm["X_pca"][:, :2], dtype=np.float32)
for k in list(a.layers.keys()):
    if k not in ("Ms", "velocity"):
        del a.layers[k]
del a.obsp["connectivities"]
a.uns = {"neighbors": a.uns["neighbors"]}
a.var = a.var[["velocity_genes"]]
a.obs = a.obs[[]]
a.write_h5ad(out)
print(a, int(a.var["velocity_genes"].sum()), "velocity genes")
