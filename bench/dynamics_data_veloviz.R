# Prepares the veloviz_pancreas739 input of bench/dynamics.R: the raw spliced/unspliced counts
# go to an HDF5 file, then bench/dynamics_data.py computes upstream's filter_and_normalize +
# moments (as in the parity test) and writes OUT.h5ad with Ms/Mu/connectivities.
# Usage: Rscript bench/dynamics_data_veloviz.R path/to/veloviz_pancreas739.rda OUT.h5ad
a <- commandArgs(TRUE)
e <- new.env()
load(a[1], envir = e)
pan <- e$pancreas
raw <- sub("\\.h5ad$", "_raw.h5", a[2])
if (file.exists(raw)) file.remove(raw)
h <- hdf5r::H5File$new(raw, mode = "w")
h[["spliced"]] <- pan$spliced # genes x cells here = cells x genes for numpy
h[["unspliced"]] <- pan$unspliced
h[["genes"]] <- rownames(pan$spliced)
h[["cells"]] <- colnames(pan$spliced)
h$close_all()
py <- file.path(Sys.getenv("HOME"), ".cache", "scnative", "peers", "bin", "python")
stopifnot(system2(py, c("bench/dynamics_data.py", a[2], "--from", raw)) == 0)
