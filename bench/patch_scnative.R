# scnative side of bench/patch.R: the unchanged Python calls, timed in Python, after
# patch_scvelo() / patch_cell2location() from R.
#   Rscript bench/patch_scnative.R scvelo FILE THREADS N_GENES
#   Rscript bench/patch_scnative.R c2l STEM S G F THREADS EPOCHS
a <- commandArgs(TRUE)
venv <- file.path(Sys.getenv("HOME"), ".cache", "scnative", "peers")
reticulate::use_virtualenv(venv, required = TRUE)
suppressMessages(library(scnative))
if (a[1] == "scvelo") {
  patch_scvelo(quiet = TRUE)
  py <- reticulate::py # only after Python is initialised (by the patch)
  py$file <- a[2]; py$threads <- as.integer(a[3]); py$n_genes <- as.integer(a[4])
  reticulate::py_run_string("
import time, numpy as np, anndata as ad, scvelo as scv
scv.settings.verbosity = 0
a = ad.read_h5ad(file)
a.layers['Ms'] = np.asarray(a.layers['Ms'], dtype=np.float64)
a.layers['Mu'] = np.asarray(a.layers['Mu'], dtype=np.float64)
b = a[:, :n_genes].copy(); w = a[:, :8].copy()
scv.tl.recover_dynamics(w, var_names='all', n_jobs=threads)
t0 = time.perf_counter()
scv.tl.recover_dynamics(b, var_names='all', n_jobs=threads)
el = time.perf_counter() - t0
print('BENCH_SECONDS=%.6f' % el)
")
} else {
  patch_cell2location(quiet = TRUE)
  py <- reticulate::py
  py$stem <- a[2]; py$S <- as.integer(a[3]); py$G <- as.integer(a[4]); py$F <- as.integer(a[5])
  py$epochs <- as.integer(a[7])
  reticulate::py_run_string("
import time, numpy as np, pandas as pd, anndata, logging
from cell2location.models import Cell2location
x = np.fromfile(stem + '.x.bin', dtype=np.int32).reshape(S, G).astype(np.float32)
sig = np.fromfile(stem + '.sig.bin', dtype=np.float64).reshape(F, G).T
genes = ['g%d' % (i + 1) for i in range(G)]
adata = anndata.AnnData(X=x, obs=pd.DataFrame(index=['s%d' % (i + 1) for i in range(S)]),
                        var=pd.DataFrame(index=genes))
sig_df = pd.DataFrame(sig, index=genes, columns=['ct%d' % (i + 1) for i in range(F)])
Cell2location.setup_anndata(adata)
mod = Cell2location(adata, cell_state_df=sig_df, N_cells_per_location=8, detection_alpha=20)
kw = dict(batch_size=None, train_size=1, accelerator='cpu', enable_progress_bar=False)
mod.train(max_epochs=3, **kw)
t0 = time.perf_counter()
mod.train(max_epochs=epochs, **kw)
print('BENCH_SECONDS=%.6f' % ((time.perf_counter() - t0) / epochs))
")
}
