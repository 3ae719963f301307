# Hostile and carelessly edited Seurat / SingleCellExperiment objects (issue 17; found by the
# object cases of the fuzzer, helper-fuzz.R "---- object cases"): every object method checks
# the object first and errors naming the assay / layer / graph / reduction / column / slot;
# a broken graph is an error, not silently left out; the user's object is unchanged.

hostile_objects <- local({
  cache <- NULL
  function() {
    if (!is.null(cache)) return(cache)
    q <- function(e) suppressWarnings(suppressMessages(e))
    set_scnative_threads(1)
    sim <- simulate_velocity(n_obs = 60, n_vars = 6)
    run <- function(o) {
      o <- q(moments(o, n_neighbors = 10, threads = 1))
      o <- q(recover_dynamics(o, var_names = "all", max_iter = 2, threads = 1, progress = FALSE))
      o <- q(velocity(o, min_r2 = NULL))
      q(velocity_graph(o, threads = 1, progress = FALSE, velocity_genes = rep(TRUE, 6)))
    }
    emb <- stats::prcomp(t(log1p(sim$spliced)))$x[, 1:2]
    out <- list(sim = sim)
    if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
      sce <- run(SingleCellExperiment::SingleCellExperiment(
        list(spliced = sim$spliced, unspliced = sim$unspliced)))
      SingleCellExperiment::reducedDim(sce, "umap") <- emb
      out$sce <- q(terminal_states(sce, threads = 1))
    }
    if (requireNamespace("SeuratObject", quietly = TRUE)) {
      so <- SeuratObject::CreateSeuratObject(counts = sim$spliced, assay = "spliced")
      so[["unspliced"]] <- SeuratObject::CreateAssayObject(counts = sim$unspliced)
      out$so <- run(so)
    }
    cache <<- out
    out
  }
})

# the call must error with `pattern` and leave `x` as it was
expect_hostile <- function(call_fun, x, pattern) {
  copy <- x
  expect_error(suppressWarnings(call_fun(x)), pattern)
  expect_identical(x, copy)
}

test_that("SCE: assays, colPairs, colData / rowData columns edited without validObject()", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- hostile_objects()$sce
  # an assay with a cell less (slot edit)
  x <- sce
  x@assays@data@listData$Ms <- x@assays@data@listData$Ms[, -1]
  expect_hostile(function(o) velocity_graph(o, threads = 1, progress = FALSE), x,
                 "'x' is not a valid SingleCellExperiment: assay 'Ms' is 6 x 59")
  # a colPair with a cell index past the cells
  x <- sce
  h <- x@int_colData@listData$colPairs@listData$scnative_distances@hits
  h@to[1] <- 99L
  ic <- x@int_colData
  methods::slot(ic@listData$colPairs@listData$scnative_distances, "hits", check = FALSE) <- h
  methods::slot(x, "int_colData", check = FALSE) <- ic
  expect_hostile(function(o) terminal_states(o, threads = 1), x,
                 "colPair 'scnative_distances' are not pairs of its 60 cells")
  # an NA weight in the graph recover_dynamics() reads: an error, not a fit without a graph
  x <- sce
  ic <- x@int_colData
  ic@listData$colPairs@listData$scnative_connectivities@hits@elementMetadata@listData[[1]][1] <- NA
  methods::slot(x, "int_colData", check = FALSE) <- ic
  expect_hostile(function(o) recover_dynamics(o, var_names = "all", max_iter = 2, threads = 1,
                                              progress = FALSE),
                 x, "colPair 'scnative_connectivities' holds NA or infinite weights")
  # a colData column one value short
  x <- sce
  x@colData@listData$root_cells <- x@colData@listData$root_cells[-1]
  expect_hostile(function(o) latent_time(o), x,
                 "colData column 'root_cells' has 59 values for 60 cells")
  # rowData columns of the wrong type
  x <- sce
  rr <- x@rowRanges
  rr@elementMetadata@listData$velocity_genes <- rep("fuzz", 6)
  methods::slot(x, "rowRanges", check = FALSE) <- rr
  expect_hostile(function(o) velocity_confidence(o), x,
                 "feature column 'velocity_genes' of the object must be logical")
  x <- sce
  SummarizedExperiment::rowData(x)$fit_alpha <- rep("fuzz", 6)
  expect_hostile(function(o) latent_time(o), x,
                 "feature column 'fit_alpha' of the object must hold numbers")
  # an assay of strings, a reduction with NaN
  x <- sce
  m <- SummarizedExperiment::assay(x, "fit_tau_")
  storage.mode(m) <- "character"
  x@assays@data@listData$fit_tau_ <- m
  expect_hostile(function(o) latent_time(o), x, "assay 'fit_tau_' of the object must hold numbers")
  x <- sce
  e <- SingleCellExperiment::reducedDim(x, "umap")
  e[3, 1] <- NaN
  SingleCellExperiment::reducedDim(x, "umap") <- e
  expect_hostile(function(o) velocity_embedding(o), x,
                 "reduction 'umap' of the object must hold finite")
})

test_that("Seurat v4: cells reordered in one assay, graphs of other cells, broken default assay", {
  skip_if_not_installed("SeuratObject")
  so <- hostile_objects()$so
  skip_if(!methods::is(so@assays$Ms, "Assay"), "Seurat v5 assays")
  # cells 1 and 2 swapped in the Ms assay only
  x <- so
  s <- x@assays$Ms
  methods::slot(s, "data", check = FALSE) <- s@data[, c(2, 1, 3:60)]
  x@assays$Ms <- s
  expect_hostile(function(o) velocity_graph(o, threads = 1, progress = FALSE), x,
                 "the cells of layer 'data' of assay 'Ms' are not the object's 60 cells, in order")
  # a graph with other cell names
  x <- so
  g <- x@graphs$scnative_distances
  dimnames(g) <- list(paste0("o", 1:60), paste0("o", 1:60))
  x@graphs$scnative_distances <- g
  expect_hostile(function(o) terminal_states(o, threads = 1), x,
                 "the cells of graph 'scnative_distances' are not the object's cells")
  # a graph whose slots are inconsistent
  x <- so
  x@graphs$scnative_distances@i[1] <- 999L
  expect_hostile(function(o) velocity_confidence(o), x,
                 "graph 'scnative_distances' of the Seurat object is not a valid sparse matrix")
  # the default assay names no assay; the default assay removed
  x <- so
  methods::slot(x, "active.assay", check = FALSE) <- "fuzz"
  expect_hostile(function(o) velocity(o, min_r2 = NULL), x,
                 "'active.assay' slot\\) 'fuzz' is not one of its assays")
  x <- so
  x@assays$spliced <- NULL
  expect_hostile(function(o) recover_dynamics(o, var_names = "all", max_iter = 2, threads = 1,
                                              progress = FALSE),
                 x, "'x' is not a consistent Seurat object: its default assay")
  # a meta.data column shorter than the cells
  x <- so
  md <- as.list(x@meta.data)
  md$velocity_self_transition <- md$velocity_self_transition[-1]
  attr(md, "row.names") <- colnames(so)
  class(md) <- "data.frame"
  methods::slot(x, "meta.data", check = FALSE) <- md
  expect_hostile(function(o) terminal_states(o, threads = 1), x,
                 "cell metadata column 'velocity_self_transition' has 59 values for 60 cells")
})

test_that("matrix methods called with a non-object name 'x'; NA var_names", {
  sim <- hostile_objects()$sim
  expect_error(moments(list(a = 1)), "'unspliced' is missing \\('x' is a list, not a Seurat object")
  expect_error(recover_dynamics(data.frame(a = 1)), "'Mu' is missing \\('x' is a data.frame")
  expect_error(velocity_graph(NULL), "'Ms' is missing \\('x' is a NULL")
  expect_error(latent_time(data.frame(a = 1), root_cells = 1),
               "'connectivities' is missing \\('x' is a data.frame")
  expect_error(recover_dynamics(sim$spliced, sim$unspliced, var_names = NA_character_,
                                threads = 1, progress = FALSE), "'var_names' must be a character vector without NA")
})

test_that("a present but broken Ms / Mu is an error, not silently recomputed from the counts", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- hostile_objects()$sce
  x <- sce
  m <- SummarizedExperiment::assay(x, "Mu")
  storage.mode(m) <- "character"
  x@assays@data@listData$Mu <- m
  expect_hostile(function(o) recover_dynamics(o, var_names = "all", max_iter = 2, threads = 1,
                                              progress = FALSE),
                 x, "assay 'Mu' of the object must hold numbers")
  x <- sce
  SummarizedExperiment::rowData(x) <- NULL
  expect_hostile(function(o) velocity(o, min_r2 = NULL), x, "no feature column 'fit_alpha'")
})

test_that("a reduction without 2 columns names the reduction", {
  skip_if_not_installed("SingleCellExperiment")
  x <- hostile_objects()$sce
  e <- SingleCellExperiment::reducedDim(x, "umap")
  x@int_colData@listData$reducedDims@listData$umap <- e[, 0]
  expect_hostile(function(o) velocity_embedding(o), x,
                 "reduction 'umap' of the object must have at least 2 columns, not 0")
})
