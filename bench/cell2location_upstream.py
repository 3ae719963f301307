# Upstream side of bench/cell2location.R: per-epoch time of cell2location's Cell2location.train
# (CPU, full batch) on the bench data; optionally with autozyme's cell2location patch.
#   python bench/cell2location_upstream.py STEM S G F THREADS EPOCHS [autozyme] [batch_size=N]
# Prints BENCH_SECONDS=<seconds per epoch> (the timed train() call divided by its epochs,
# after a warm-up train() call). batch_size=N: minibatch training (bench/cell2location_minibatch.R),
# one warm-up epoch.
import os, sys, time
stem, S, G, F, threads, epochs = sys.argv[1], *map(int, sys.argv[2:7])
use_az = "autozyme" in sys.argv[7:]
bs = [int(a.split("=")[1]) for a in sys.argv[7:] if a.startswith("batch_size=")]
bs = bs[0] if bs else None
# steps=N (minibatch only): time N steps of one epoch (a warm-up of 2 steps first) and report
# seconds per epoch as the time per step times the epoch's steps, ceiling(S / batch_size):
# an extrapolation, for sizes where one upstream epoch takes many minutes
steps = [int(a.split("=")[1]) for a in sys.argv[7:] if a.startswith("steps=")]
steps = steps[0] if steps and bs else None
import numpy as np, pandas as pd, torch
torch.set_num_threads(threads)
import anndata, logging
if use_az:
    import autozyme
    autozyme.activate("cell2location")
import cell2location
from cell2location.models import Cell2location
logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
if os.path.basename(stem).startswith("c2lsp_"):
    # c2l_bench_data_sparse(): CSC of genes x spots = CSR of spots x genes
    import scipy.sparse as sp
    p = np.fromfile(stem + ".p.bin", dtype=np.int32)
    x = sp.csr_matrix((np.fromfile(stem + ".v.bin", dtype=np.int32).astype(np.float32),
                       np.fromfile(stem + ".i.bin", dtype=np.int32), p), shape=(S, G))
else:
    x = np.fromfile(stem + ".x.bin", dtype=np.int32).reshape(S, G).astype(np.float32)
sig = np.fromfile(stem + ".sig.bin", dtype=np.float64).reshape(F, G).T
genes = [f"g{i+1}" for i in range(G)]
ad = anndata.AnnData(X=x, obs=pd.DataFrame(index=[f"s{i+1}" for i in range(S)]),
                     var=pd.DataFrame(index=genes))
sig_df = pd.DataFrame(sig, index=genes, columns=[f"ct{i+1}" for i in range(F)])
Cell2location.setup_anndata(ad)
mod = Cell2location(ad, cell_state_df=sig_df, N_cells_per_location=8, detection_alpha=20)
kw = dict(batch_size=bs, train_size=1, accelerator="cpu", enable_progress_bar=False)
if steps:
    mod.train(max_epochs=1, max_steps=2, **kw)
    t0, c0 = time.perf_counter(), time.process_time()
    mod.train(max_epochs=1, max_steps=steps, **kw)
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_epoch = -(-S // bs)
    print(f"upstream batch_size={bs}: {steps} steps in {el:.3f} s elapsed, {cpu:.3f} s CPU; "
          f"{per_epoch} steps per epoch")
    el, cpu, epochs = el * per_epoch / steps, cpu * per_epoch / steps, 1
else:
    mod.train(max_epochs=3 if bs is None else 1, **kw)
    t0, c0 = time.perf_counter(), time.process_time()
    mod.train(max_epochs=epochs, **kw)
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
print(f"upstream{'+autozyme' if use_az else ''}{'' if bs is None else ' batch_size=%d' % bs}: {epochs} epochs in {el:.3f} s elapsed, {cpu:.3f} s CPU")
# SCNATIVE_BENCH_CPU=1: CPU seconds (for 1 thread on a loaded machine), else elapsed
print(f"BENCH_SECONDS={(cpu if os.environ.get('SCNATIVE_BENCH_CPU') == '1' else el) / epochs:.6f}")
