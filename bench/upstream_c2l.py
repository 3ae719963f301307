#!/usr/bin/env python
"""Run upstream cell2location (Cell2location.train + export_posterior) on data written by R.

Run with the peers venv: /root/.cache/scnative/peers/bin/python bench/upstream_c2l.py ...

Input directory (--data), as written by R (the R lines below write it):
  counts.mtx      genes x spots counts, MatrixMarket (Matrix::writeMM)
  genes.txt       gene names, one per line (rows of counts.mtx)
  spots.txt       spot names, one per line (columns of counts.mtx)
  signatures.csv  genes x cell types, first column = gene names, header = cell types
  batch.txt       optional, one batch label per spot

  # R side:
  # Matrix::writeMM(methods::as(counts, "CsparseMatrix"), file.path(d, "counts.mtx"))
  # writeLines(rownames(counts), file.path(d, "genes.txt"))
  # writeLines(colnames(counts), file.path(d, "spots.txt"))
  # write.csv(signatures, file.path(d, "signatures.csv"))

Outputs (--out directory):
  means.csv, q05.csv     (not with --no-export) posterior means / 5% quantiles of w_sf (spots x cell types; columns
                         as upstream names them, meanscell_abundance_w_sf_<type>)
  history.csv            epoch, elbo_train
  timing.json            seconds for train (and export), epochs, shape, threads
and one line BENCH_SECONDS=<seconds of the measured train call> on stdout (bench harness).
With --warmup E, a separate model is first trained E epochs (imports, JIT, allocations) and
not timed. Same genes in counts and signatures are required (intersect in R first).
"""
import argparse
import json
import os
import sys
import time


def load_data(d):
    import numpy as np
    import pandas as pd
    import scipy.io
    import scipy.sparse as sp

    x = sp.csr_matrix(scipy.io.mmread(os.path.join(d, "counts.mtx")).T)  # spots x genes
    genes = [l.rstrip("\n") for l in open(os.path.join(d, "genes.txt"))]
    spots = [l.rstrip("\n") for l in open(os.path.join(d, "spots.txt"))]
    sig = pd.read_csv(os.path.join(d, "signatures.csv"), index_col=0)
    batch = None
    bf = os.path.join(d, "batch.txt")
    if os.path.exists(bf):
        batch = [l.rstrip("\n") for l in open(bf)]
    return x.astype(np.float32), genes, spots, sig, batch


def make_adata(x, genes, spots, batch=None):
    import anndata
    import pandas as pd

    obs = pd.DataFrame(index=pd.Index(spots, dtype=str))
    if batch is not None:
        obs["batch"] = pd.Categorical(batch)
    var = pd.DataFrame(index=pd.Index(genes, dtype=str))
    return anndata.AnnData(X=x, obs=obs, var=var)


def fit(x, genes, spots, sig, batch=None, N_cells_per_location=8.0, detection_alpha=20.0,
        max_epochs=1000, lr=0.002, seed=0, num_samples=1000, export=True, extra=None):
    """Train upstream cell2location on spots x genes `x` and signatures `sig` (DataFrame genes x
    types). Returns a dict with means/q05 (DataFrames spots x types, when export), history
    (list), train_seconds, export_seconds."""
    import numpy as np
    import scvi
    import cell2location

    scvi.settings.seed = int(seed)
    adata = make_adata(x, genes, spots, batch)
    sig = sig.loc[list(genes)]
    cell2location.models.Cell2location.setup_anndata(
        adata=adata, batch_key="batch" if batch is not None else None)
    kw = dict(extra or {})
    mod = cell2location.models.Cell2location(
        adata, cell_state_df=sig, N_cells_per_location=float(N_cells_per_location),
        detection_alpha=float(detection_alpha), **kw)
    t0 = time.perf_counter()
    mod.train(max_epochs=int(max_epochs), batch_size=None, train_size=1, lr=float(lr),
              enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    out = {"train_seconds": train_s,
           "history": np.asarray(mod.history_["elbo_train"]["elbo_train"], dtype=float).tolist()}
    if export:
        t0 = time.perf_counter()
        adata = mod.export_posterior(
            adata, sample_kwargs={"num_samples": int(num_samples), "batch_size": adata.n_obs})
        out["export_seconds"] = time.perf_counter() - t0
        out["means"] = adata.obsm["means_cell_abundance_w_sf"]
        out["q05"] = adata.obsm["q05_cell_abundance_w_sf"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="input directory written by R")
    p.add_argument("--out", default=None, help="output directory (default: --data)")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=0, help="untimed warm-up epochs on a separate model")
    p.add_argument("--N", type=float, default=8.0, help="N_cells_per_location")
    p.add_argument("--alpha", type=float, default=20.0, help="detection_alpha")
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1000, help="export_posterior num_samples")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--autozyme", action="store_true", help="activate autozyme's cell2location patch")
    p.add_argument("--no-export", action="store_true", help="train only (timing runs)")
    a = p.parse_args(argv)

    if a.autozyme:
        import autozyme
        ok = autozyme.activate("cell2location")
        if not ok:
            sys.exit("autozyme.activate('cell2location') failed")
    import torch
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    import logging
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("scvi").setLevel(logging.ERROR)

    x, genes, spots, sig, batch = load_data(a.data)
    out_dir = a.out or a.data
    os.makedirs(out_dir, exist_ok=True)
    if a.warmup > 0:
        fit(x, genes, spots, sig, batch, a.N, a.alpha, a.warmup, a.lr, a.seed, export=False)
    res = fit(x, genes, spots, sig, batch, a.N, a.alpha, a.epochs, a.lr, a.seed,
              num_samples=a.samples, export=not a.no_export)
    print(f"BENCH_SECONDS={res['train_seconds']:.6f}", flush=True)
    timing = {"train_seconds": res["train_seconds"], "epochs": a.epochs,
              "n_spots": int(x.shape[0]), "n_genes": int(x.shape[1]),
              "n_cell_types": int(sig.shape[1]), "threads": torch.get_num_threads(),
              "autozyme": bool(a.autozyme)}
    with open(os.path.join(out_dir, "history.csv"), "w") as fh:
        fh.write("epoch,elbo_train\n")
        for i, v in enumerate(res["history"]):
            fh.write(f"{i},{v!r}\n")
    if "means" in res:
        timing["export_seconds"] = res["export_seconds"]
        res["means"].to_csv(os.path.join(out_dir, "means.csv"))
        res["q05"].to_csv(os.path.join(out_dir, "q05.csv"))
    with open(os.path.join(out_dir, "timing.json"), "w") as fh:
        json.dump(timing, fh, indent=1)


if __name__ == "__main__":
    main()
