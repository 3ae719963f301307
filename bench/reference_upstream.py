# Upstream side of bench/reference.R and bench/reference_agreement.R: cell2location's
# RegressionModel (CPU, minibatches of 2500 as upstream) on the bench reference.
#   python bench/reference_upstream.py STEM N G THREADS EPOCHS [autozyme|export OUTDIR]
# Timing mode prints BENCH_SECONDS=<seconds per epoch> of the timed train() call (after a
# 1-epoch warm-up train() call on a separate model). Export mode trains EPOCHS epochs and writes
# OUTDIR/means.csv (genes x cell types posterior means of per_cluster_mu_fg, 1000 samples),
# OUTDIR/history.csv, and prints the train seconds.
import os, sys, time
stem, N, G, threads, epochs = sys.argv[1], *map(int, sys.argv[2:6])
mode = sys.argv[6] if len(sys.argv) > 6 else ""
import numpy as np, pandas as pd, torch, scipy.sparse as sp
torch.set_num_threads(threads)
import anndata, logging
if mode == "autozyme":
    import autozyme
    autozyme.activate("cell2location")
from cell2location.models import RegressionModel
logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("scvi").setLevel(logging.ERROR)
p = np.fromfile(stem + ".p.bin", dtype=np.int32)
i = np.fromfile(stem + ".i.bin", dtype=np.int32)
x = np.fromfile(stem + ".x.bin", dtype=np.int32).astype(np.float32)
X = sp.csc_matrix((x, i, p), shape=(G, N)).T.tocsr()
labels = [l.rstrip("\n") for l in open(stem + ".labels.txt")]
batch = [l.rstrip("\n") for l in open(stem + ".batch.txt")]
obs = pd.DataFrame({"ct": pd.Categorical(labels), "bat": pd.Categorical(batch)},
                   index=[f"c{k+1}" for k in range(N)])
var = pd.DataFrame(index=[f"g{k+1}" for k in range(G)])


def model():
    ad = anndata.AnnData(X=X, obs=obs.copy(), var=var)
    RegressionModel.setup_anndata(ad, labels_key="ct", batch_key="bat")
    return ad, RegressionModel(ad)


kw = dict(batch_size=2500, train_size=1, lr=0.002, accelerator="cpu", enable_progress_bar=False)
if mode == "export":
    out = sys.argv[7]
    os.makedirs(out, exist_ok=True)
    ad, mod = model()
    t0 = time.perf_counter()
    mod.train(max_epochs=epochs, **kw)
    el = time.perf_counter() - t0
    ad = mod.export_posterior(ad, sample_kwargs={"num_samples": 1000, "batch_size": 2500})
    m = ad.varm["means_per_cluster_mu_fg"]
    m.columns = [c.replace("means_per_cluster_mu_fg_", "") for c in m.columns]
    m.to_csv(os.path.join(out, "means.csv"))
    h = np.asarray(mod.history_["elbo_train"]["elbo_train"], dtype=float)
    pd.DataFrame({"epoch": np.arange(len(h)), "elbo_train": h}).to_csv(
        os.path.join(out, "history.csv"), index=False)
    print(f"TRAIN_SECONDS={el:.3f}")
else:
    ad, mod = model()
    mod.train(max_epochs=1, **kw)
    ad, mod = model()
    t0 = time.perf_counter()
    mod.train(max_epochs=epochs, **kw)
    el = time.perf_counter() - t0
    print(f"upstream{'+autozyme' if mode == 'autozyme' else ''}: {epochs} epochs in {el:.3f} s")
    print(f"BENCH_SECONDS={el / epochs:.6f}")
