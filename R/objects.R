# Seurat (v4 and v5) and SingleCellExperiment accessors shared by every model.
#
# Models work on genes x cells matrices; these helpers take them out of, and put results back
# into, the objects users hold. Seurat's API changed in v5 (layers instead of slots), so the
# version is detected at run time: v4 uses GetAssayData()/SetAssayData(), v5 LayerData().
# Every reader gives a clear error naming what is missing and listing what exists; writers
# return a modified copy (R's copy semantics), so the user's object is untouched on error.

is_seurat <- function(x) inherits(x, "Seurat")
is_sce <- function(x) inherits(x, "SummarizedExperiment")

need_pkg <- function(pkg, why) {
  if (!requireNamespace(pkg, quietly = TRUE)) {
    stopf("package '%s' is needed %s; install it (Debian: r-cran-%s / r-bioc-%s)", pkg, why,
          tolower(pkg), tolower(pkg))
  }
}

seurat_is_v5 <- function() {
  need_pkg("SeuratObject", "for Seurat objects")
  utils::packageVersion("SeuratObject") >= "5.0.0"
}

# SeuratObject v5 functions, looked up at run time (they do not exist in v4).
seurat_v5_fn <- function(name) getExportedValue("SeuratObject", name)

seurat_layers <- function(assay_obj) {
  if (seurat_is_v5()) return(seurat_v5_fn("Layers")(assay_obj))
  slots <- c("counts", "data", "scale.data")
  slots[vapply(slots, function(s) {
    m <- methods::slot(assay_obj, s)
    length(m) > 0 && prod(dim(m)) > 0
  }, logical(1))]
}

seurat_get_layer <- function(assay_obj, layer) {
  if (seurat_is_v5()) return(seurat_v5_fn("LayerData")(assay_obj, layer = layer))
  SeuratObject::GetAssayData(assay_obj, slot = layer)
}

# A genes x cells matrix named `name` from an object:
# - Seurat: an assay called `name` (its `layer`, default "counts" if present, else "data"),
#   or else the layer/slot `name` of `assay` (default: the default assay);
# - SingleCellExperiment / SummarizedExperiment: assay(object, name).
# `delayed`: TRUE for callers that read a DelayedArray (DelayedMatrix assay) block-wise; it is
# then returned unchanged, otherwise it is an error as before.
obj_matrix <- function(object, name, assay = NULL, layer = NULL, arg = "name", delayed = FALSE) {
  check_string(name, arg)
  if (is_seurat(object)) {
    need_pkg("SeuratObject", "for Seurat objects")
    assays <- SeuratObject::Assays(object)
    if (name %in% assays) {
      a <- object[[name]]
      have <- seurat_layers(a)
      ly <- layer %||% (if ("counts" %in% have) "counts" else "data")
      if (!ly %in% have) {
        stopf("assay '%s' of the Seurat object has no layer '%s' (it has: %s)", name, ly,
              paste(have, collapse = ", "))
      }
      return(obj_numeric(seurat_get_layer(a, ly), sprintf("layer '%s' of assay '%s'", ly, name),
                         delayed))
    }
    assay <- assay %||% SeuratObject::DefaultAssay(object)
    if (!assay %in% assays) {
      stopf("the Seurat object has no assay '%s' (it has: %s)", assay, paste(assays, collapse = ", "))
    }
    have <- seurat_layers(object[[assay]])
    if (!name %in% have) {
      stopf("'%s' = \"%s\" is neither an assay of the Seurat object (%s) nor a layer of assay '%s' (%s)",
            arg, name, paste(assays, collapse = ", "), assay, paste(have, collapse = ", "))
    }
    return(obj_numeric(seurat_get_layer(object[[assay]], name),
                       sprintf("layer '%s' of assay '%s'", name, assay), delayed))
  }
  if (is_sce(object)) {
    need_pkg("SummarizedExperiment", "for SingleCellExperiment objects")
    have <- SummarizedExperiment::assayNames(object)
    if (!name %in% have) {
      stopf("'%s' = \"%s\" is not an assay of the %s (it has: %s)", arg, name, class(object)[1L],
            if (length(have)) paste(have, collapse = ", ") else "none")
    }
    return(obj_numeric(SummarizedExperiment::assay(object, name, withDimnames = TRUE),
                       sprintf("assay '%s'", name), delayed))
  }
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

# Whether the object has a matrix `name` (present: a broken one is obj_matrix()'s error, it
# must not be silently recomputed).
obj_has_matrix <- function(object, name, assay = NULL) {
  if (is_seurat(object)) {
    assays <- SeuratObject::Assays(object)
    if (name %in% assays) return(length(seurat_layers(object[[name]])) > 0L)
    assay <- assay %||% SeuratObject::DefaultAssay(object)
    return(assay %in% assays && name %in% seurat_layers(object[[assay]]))
  }
  if (is_sce(object)) return(name %in% SummarizedExperiment::assayNames(object))
  FALSE
}

# Stores a genes x cells matrix as assay `name` (Seurat: a new assay whose data layer holds it;
# SCE: assay(object, name)). Genes may be a subset of the object's genes for Seurat (a new assay
# may have its own features); cells must be the object's cells, in order.
obj_set_matrix <- function(object, name, value) {
  if (is_seurat(object)) {
    if (!identical(colnames(value), colnames(object))) {
      stopf("cannot store '%s': its cells (columns) are not the object's cells in order", name)
    }
    assay_obj <- if (seurat_is_v5()) {
      seurat_v5_fn("CreateAssay5Object")(data = value)
    } else {
      SeuratObject::CreateAssayObject(data = value)
    }
    # an explicit valid key: names such as "fit_tau_" would otherwise give key warnings/clashes
    SeuratObject::Key(assay_obj) <- paste0(tolower(gsub("[^[:alnum:]]", "", name)),
                                           if (endsWith(name, "_")) "x" else "", "_")
    object[[name]] <- assay_obj
    return(object)
  }
  if (is_sce(object)) {
    if (!identical(dim(value), dim(object))) {
      stopf("cannot store '%s': it is %d x %d but the object is %d x %d", name, nrow(value),
            ncol(value), nrow(object), ncol(object))
    }
    dimnames(value) <- dimnames(object)
    SummarizedExperiment::assay(object, name, withDimnames = FALSE) <- value
    return(object)
  }
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

obj_cell_meta <- function(object) {
  if (is_seurat(object)) return(object[[]])
  if (is_sce(object)) return(as.data.frame(SummarizedExperiment::colData(object)))
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

# Adds (or replaces) per-cell columns; `df` has one row per cell in the object's order.
obj_add_cell_meta <- function(object, df) {
  stopifnot(is.data.frame(df), nrow(df) == ncol(object))
  if (is_seurat(object)) {
    rownames(df) <- colnames(object)
    return(SeuratObject::AddMetaData(object, df))
  }
  cd <- SummarizedExperiment::colData(object)
  for (nm in names(df)) cd[[nm]] <- df[[nm]]
  SummarizedExperiment::colData(object) <- cd
  object
}

obj_feature_meta <- function(object, assay = NULL) {
  if (is_seurat(object)) {
    assay <- assay %||% SeuratObject::DefaultAssay(object)
    return(object[[assay]][[]])
  }
  if (is_sce(object)) return(as.data.frame(SummarizedExperiment::rowData(object)))
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

# Adds (or replaces) per-gene columns; `df` has rownames = gene names (a subset of the genes is
# fine: other genes get NA).
obj_add_feature_meta <- function(object, df, assay = NULL) {
  stopifnot(is.data.frame(df), !is.null(rownames(df)))
  genes <- if (is_seurat(object)) {
    assay <- assay %||% SeuratObject::DefaultAssay(object)
    rownames(object[[assay]])
  } else {
    rownames(object)
  }
  full <- df[match(genes, rownames(df)), , drop = FALSE]
  rownames(full) <- genes
  if (is_seurat(object)) {
    a <- object[[assay]]
    if (seurat_is_v5()) {
      for (nm in names(full)) a[[nm]] <- full[[nm]]
    } else {
      a <- SeuratObject::AddMetaData(a, full)
    }
    object[[assay]] <- a
    return(object)
  }
  rd <- SummarizedExperiment::rowData(object)
  for (nm in names(full)) rd[[nm]] <- full[[nm]]
  SummarizedExperiment::rowData(object) <- rd
  object
}

# A cells x cells neighbour graph: Seurat graphs (default: "<assay>_nn", else the first graph),
# SCE colPairs (default: the first) or reducedDim-free metadata entry `name`.
obj_graph <- function(object, name = NULL) {
  if (is_seurat(object)) {
    have <- SeuratObject::Graphs(object)
    if (is.null(name)) {
      pref <- paste0(SeuratObject::DefaultAssay(object), "_nn")
      name <- if (pref %in% have) pref else if (length(have)) have[1L] else NULL
    }
    if (is.null(name) || !name %in% have) {
      stopf("the Seurat object has no neighbour graph%s (it has: %s); run FindNeighbors() first",
            if (is.null(name)) "" else sprintf(" '%s'", name),
            if (length(have)) paste(have, collapse = ", ") else "none")
    }
    g0 <- object[[name]]
    bad <- tryCatch({
      methods::validObject(g0)
      NULL
    }, error = function(e) conditionMessage(e))
    if (!is.null(bad)) {
      stopf("graph '%s' of the Seurat object is not a valid sparse matrix: %s", name, bad)
    }
    g <- methods::as(g0, "dgCMatrix")
    if (any(!is.finite(g@x))) {
      stopf("graph '%s' of the Seurat object holds NA or infinite weights", name)
    }
    return(g)
  }
  if (is_sce(object)) {
    need_pkg("SingleCellExperiment", "for SingleCellExperiment objects")
    have <- SingleCellExperiment::colPairNames(object)
    name <- name %||% (if (length(have)) have[1L] else NULL)
    if (is.null(name) || !name %in% have) {
      stopf("the SingleCellExperiment has no cell-pair graph%s in colPairs (it has: %s)",
            if (is.null(name)) "" else sprintf(" '%s'", name),
            if (length(have)) paste(have, collapse = ", ") else "none")
    }
    hits <- SingleCellExperiment::colPair(object, name)
    n <- ncol(object)
    mc <- S4Vectors::mcols(hits)
    if (!is.null(mc) && ncol(mc) > 0 && !(is.numeric(mc[[1L]]) || is.logical(mc[[1L]]))) {
      stopf("the weights of colPair '%s' are not numbers", name)
    }
    vals <- if (!is.null(mc) && ncol(mc) > 0) as.numeric(mc[[1L]]) else rep(1, length(hits))
    if (any(!is.finite(vals))) stopf("colPair '%s' holds NA or infinite weights", name)
    fr <- S4Vectors::from(hits)
    to <- S4Vectors::to(hits)
    if (any(fr < 1L | fr > n | to < 1L | to > n)) {
      stopf("the cell pairs of colPair '%s' are not pairs of the object's %d cells", name, n)
    }
    return(Matrix::sparseMatrix(i = S4Vectors::from(hits), j = S4Vectors::to(hits), x = vals,
                                dims = c(n, n), dimnames = list(colnames(object), colnames(object))))
  }
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

obj_set_graph <- function(object, name, graph) {
  if (is_seurat(object)) {
    g <- SeuratObject::as.Graph(methods::as(graph, "dgCMatrix"))
    SeuratObject::DefaultAssay(g) <- SeuratObject::DefaultAssay(object)
    object[[name]] <- g
    return(object)
  }
  if (is_sce(object)) {
    need_pkg("SingleCellExperiment", "for SingleCellExperiment objects")
    g <- methods::as(graph, "dgCMatrix")
    dimnames(g) <- list(NULL, NULL) # colPair<- rejects dimnames; cells are the object's, in order
    SingleCellExperiment::colPair(object, name) <- g
    return(object)
  }
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

# Free-form results (a list): Seurat Misc(), SCE metadata().
obj_set_misc <- function(object, name, value) {
  if (is_seurat(object)) {
    SeuratObject::Misc(object, slot = name) <- value
    return(object)
  }
  if (is_sce(object)) {
    md <- S4Vectors::metadata(object)
    md[[name]] <- value
    S4Vectors::metadata(object) <- md
    return(object)
  }
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

obj_misc <- function(object, name) {
  if (is_seurat(object)) return(SeuratObject::Misc(object, slot = name))
  if (is_sce(object)) return(S4Vectors::metadata(object)[[name]])
  NULL
}

# Spot coordinates as data.frame(x, y) with rownames = spots: Seurat images (v4 returns
# imagerow/imagecol, v5 x/y), SCE colData columns x/y or spatialCoords-like reducedDim "spatial".
obj_coords <- function(object, image = NULL) {
  if (is_seurat(object)) {
    imgs <- SeuratObject::Images(object)
    if (!length(imgs)) stopf("the Seurat object has no image with spot coordinates; pass 'coords'")
    image <- image %||% imgs[1L]
    xy <- SeuratObject::GetTissueCoordinates(object[[image]])
    if (all(c("imagerow", "imagecol") %in% names(xy))) {
      out <- data.frame(x = xy$imagecol, y = -xy$imagerow, row.names = rownames(xy))
    } else {
      out <- data.frame(x = xy[[1L]], y = xy[[2L]], row.names = rownames(xy))
    }
    return(out)
  }
  if (is_sce(object)) {
    cd <- obj_cell_meta(object)
    if (all(c("x", "y") %in% names(cd))) return(data.frame(x = cd$x, y = cd$y, row.names = rownames(cd)))
    need_pkg("SingleCellExperiment", "for SingleCellExperiment objects")
    if ("spatial" %in% SingleCellExperiment::reducedDimNames(object)) {
      m <- SingleCellExperiment::reducedDim(object, "spatial")
      return(data.frame(x = m[, 1], y = m[, 2], row.names = colnames(object)))
    }
    stopf("the SingleCellExperiment has no spot coordinates (colData x/y or reducedDim 'spatial'); pass 'coords'")
  }
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

# A cells x dimensions embedding: Seurat reductions (Embeddings), SCE reducedDims. `finite`:
# the caller needs finite coordinates in 2 or more columns (velocity_embedding, graph plots).
obj_reduction <- function(object, name, arg = "reduction", finite = FALSE) {
  check_string(name, arg)
  if (finite) {
    E <- obj_reduction(object, name, arg)
    if (!is.numeric(E) || any(!is.finite(E))) {
      stopf("reduction '%s' of the object must hold finite coordinates", name)
    }
    if (ncol(E) < 2L) {
      stopf("reduction '%s' of the object must have at least 2 columns, not %d", name, ncol(E))
    }
    return(E)
  }
  if (is_seurat(object)) {
    have <- SeuratObject::Reductions(object)
    if (!name %in% have) {
      stopf("the Seurat object has no reduction '%s' (it has: %s)", name,
            if (length(have)) paste(have, collapse = ", ") else "none")
    }
    return(SeuratObject::Embeddings(object[[name]]))
  }
  if (is_sce(object)) {
    need_pkg("SingleCellExperiment", "for SingleCellExperiment objects")
    have <- SingleCellExperiment::reducedDimNames(object)
    if (!name %in% have) {
      stopf("the SingleCellExperiment has no reducedDim '%s' (it has: %s)", name,
            if (length(have)) paste(have, collapse = ", ") else "none")
    }
    e <- SingleCellExperiment::reducedDim(object, name)
    if (is.null(rownames(e))) rownames(e) <- colnames(object)
    return(as.matrix(e))
  }
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

obj_set_reduction <- function(object, name, value) {
  if (is_seurat(object)) {
    key <- paste0(tolower(gsub("[^[:alnum:]]", "", name)), "_")
    colnames(value) <- paste0(key, seq_len(ncol(value)))
    rownames(value) <- colnames(object)
    dr <- SeuratObject::CreateDimReducObject(embeddings = value, key = key,
                                             assay = SeuratObject::DefaultAssay(object))
    object[[name]] <- dr
    return(object)
  }
  if (is_sce(object)) {
    need_pkg("SingleCellExperiment", "for SingleCellExperiment objects")
    rownames(value) <- colnames(object)
    SingleCellExperiment::reducedDim(object, name) <- value
    return(object)
  }
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

# ------------------------------------------------------------------ hostile objects (issue 17)

# Checks that a Seurat / SingleCellExperiment object is consistent before a method reads it:
# objects edited without validObject() (`@<-`, attr(), slot(check = FALSE)) may hold assays,
# graphs, reductions or metadata whose cells are not the object's. Errors name the argument
# and the part (assay, layer, graph, reduction, slot). Returns the object.
obj_check <- function(object, arg = "x") {
  if (is_seurat(object)) return(obj_check_seurat(object, arg))
  if (is_sce(object)) return(obj_check_sce(object, arg))
  object
}

obj_check_seurat <- function(object, arg) {
  need_pkg("SeuratObject", "for Seurat objects")
  bad <- function(fmt, ...) {
    stopf("'%s' is not a consistent Seurat object: %s", arg, sprintf(fmt, ...))
  }
  slots <- c("assays", "meta.data", "active.assay", "graphs", "reductions")
  miss <- slots[!vapply(slots, methods::.hasSlot, TRUE, object = object)]
  if (length(miss)) bad("slot '%s' is missing", miss[1L])
  assays <- object@assays
  if (!is.list(assays) || !length(assays) || is.null(names(assays))) {
    bad("its 'assays' slot holds no named assay")
  }
  md <- object@meta.data
  if (!is.data.frame(md)) bad("its 'meta.data' slot is not a data.frame")
  cells <- rownames(md)
  n <- length(cells)
  lens <- lengths(md)
  if (any(lens != n)) {
    bad("cell metadata column '%s' has %d values for %d cells", names(md)[lens != n][1L],
        lens[lens != n][1L], n)
  }
  da <- object@active.assay
  if (!is.character(da) || length(da) != 1L || !da %in% names(assays)) {
    bad("its default assay ('active.assay' slot) '%s' is not one of its assays (%s)",
        paste(da, collapse = ","), paste(names(assays), collapse = ", "))
  }
  for (a in names(assays)) {
    s <- assays[[a]]
    if (methods::is(s, "Assay")) {
      genes <- NULL
      for (ly in c("counts", "data", "scale.data")) {
        m <- methods::slot(s, ly)
        if (!length(m) || prod(dim(m)) == 0) next
        if (!(is.numeric(m) || methods::is(m, "dMatrix")) || length(dim(m)) != 2L) {
          bad("layer '%s' of assay '%s' is not a numeric matrix", ly, a)
        }
        if (ly != "scale.data") {
          if (is.null(genes)) genes <- rownames(m)
          if (!identical(rownames(m), genes)) {
            bad("layers 'counts' and '%s' of assay '%s' have different genes", ly, a)
          }
        }
        if (ncol(m) != n || !identical(colnames(m), cells)) {
          bad("the cells of layer '%s' of assay '%s' are not the object's %d cells, in order",
              ly, a, n)
        }
      }
      mf <- s@meta.features
      if (!is.data.frame(mf) || (!is.null(genes) && nrow(mf) != length(genes)) ||
          any(lengths(mf) != nrow(mf))) {
        bad("the feature metadata ('meta.features') of assay '%s' does not have one row per gene",
            a)
      }
    } else if (methods::is(s, "StdAssay")) {
      for (ly in seurat_v5_fn("Layers")(s)) {
        m <- seurat_v5_fn("LayerData")(s, layer = ly)
        if (ncol(m) > n || !all(colnames(m) %in% cells)) {
          bad("the cells of layer '%s' of assay '%s' are not cells of the object", ly, a)
        }
      }
    } else {
      bad("assay '%s' is a %s, not a Seurat assay", a, class(s)[1L])
    }
  }
  for (g in names(object@graphs)) {
    G <- object@graphs[[g]]
    if (!methods::is(G, "Matrix") && !is.matrix(G)) bad("graph '%s' is not a matrix", g)
    if (!identical(dim(G), c(n, n))) bad("graph '%s' is %d x %d, not %d x %d (cells x cells)",
                                          g, nrow(G), ncol(G), n, n)
    if (!is.null(rownames(G)) && !identical(rownames(G), cells) ||
        !is.null(colnames(G)) && !identical(colnames(G), cells)) {
      bad("the cells of graph '%s' are not the object's cells, in order", g)
    }
  }
  for (r in names(object@reductions)) {
    E <- object@reductions[[r]]@cell.embeddings
    if (!is.numeric(E) || length(dim(E)) != 2L || nrow(E) != n ||
        (!is.null(rownames(E)) && !identical(rownames(E), cells))) {
      bad("the cell embeddings of reduction '%s' are not one row per cell of the object, in order",
          r)
    }
  }
  object
}

obj_check_sce <- function(object, arg) {
  need_pkg("SummarizedExperiment", "for SingleCellExperiment objects")
  cls <- class(object)[1L]
  bad <- function(fmt, ...) stopf("'%s' is not a valid %s: %s", arg, cls, sprintf(fmt, ...))
  if (!methods::.hasSlot(object, "colData") || !methods::.hasSlot(object, "assays")) {
    bad("a slot ('colData' or 'assays') is missing")
  }
  d <- dim(object)
  # the assays first: the message then names the assay
  dat <- tryCatch(object@assays@data, error = function(e) NULL)
  if (!is.null(dat)) {
    for (a in names(dat)) {
      m <- dat[[a]]
      if (!identical(as.integer(dim(m))[1:2], as.integer(d))) {
        bad("assay '%s' is %s, not %d x %d (genes x cells)", a,
            paste(dim(m), collapse = " x "), d[1L], d[2L])
      }
    }
  }
  # metadata columns (a DataFrame edited without validObject() may hold short ones)
  cd <- tryCatch(object@colData@listData, error = function(e) list())
  for (k in names(cd)) {
    if (NROW(cd[[k]]) != d[2L]) {
      bad("colData column '%s' has %d values for %d cells", k, NROW(cd[[k]]), d[2L])
    }
  }
  rd <- tryCatch(SummarizedExperiment::rowData(object, use.names = FALSE)@listData,
                 error = function(e) list())
  for (k in names(rd)) {
    if (NROW(rd[[k]]) != d[1L]) {
      bad("rowData column '%s' has %d values for %d genes", k, NROW(rd[[k]]), d[1L])
    }
  }
  if (methods::is(object, "SingleCellExperiment")) {
    ic <- tryCatch(object@int_colData, error = function(e) NULL)
    if (is.null(ic) || nrow(ic) != d[2L]) bad("slot 'int_colData' does not have one row per cell")
    cp <- ic@listData$colPairs
    if (!is.null(cp)) {
      for (g in names(cp)) {
        h <- tryCatch(cp@listData[[g]]@hits, error = function(e) NULL)
        if (is.null(h)) next
        if (h@nLnode != d[2L] || h@nRnode != d[2L] || any(h@from < 1L | h@from > d[2L]) ||
            any(h@to < 1L | h@to > d[2L])) {
          bad("the cell pairs of colPair '%s' are not pairs of its %d cells", g, d[2L])
        }
      }
    }
  }
  msg <- tryCatch({
    methods::validObject(object, complete = FALSE)
    NULL
  }, error = function(e) conditionMessage(e))
  if (!is.null(msg)) bad("%s", sub("^invalid class .*? object: *", "", msg))
  object
}

# The error of a matrix method called without a companion matrix: when `x` is not an object
# the user may have meant one (an object of another class, a list of assays ...).
stop_missing_companion <- function(what, x) {
  stopf(paste0("'%s' is missing ('x' is a %s, not a Seurat object or a SingleCellExperiment, ",
               "whose methods read it from the object)"), what, class(x)[1L])
}

# A matrix read from an object must hold numbers (an assay edited to strings is not data).
obj_numeric <- function(m, what, delayed = FALSE) {
  if (delayed && is_delayed(m)) { # e.g. a SingleCellExperiment's DelayedMatrix assay: passed on unchanged
    need_delayed(what)
    if (!DelayedArray::type(m) %in% c("double", "integer", "logical")) {
      stopf("%s of the object must hold numbers, not %s values", what, DelayedArray::type(m))
    }
    return(m)
  }
  if (!(is.numeric(m) || is.logical(m) || methods::is(m, "dMatrix") || methods::is(m, "lMatrix") ||
        methods::is(m, "nMatrix") || (is.data.frame(m) && all(vapply(m, is.numeric, TRUE))))) {
    stopf("%s of the object must hold numbers, not %s", what,
          if (is.matrix(m)) paste(typeof(m), "values") else class(m)[1L])
  }
  m
}

# A per-gene logical feature column (velocity_genes), matched to `genes`; NULL when absent.
obj_flag_column <- function(fm, name, genes) {
  if (!name %in% names(fm)) return(NULL)
  v <- fm[[name]]
  if (!is.logical(v)) {
    stopf("feature column '%s' of the object must be logical (one TRUE/FALSE per gene), not %s",
          name, class(v)[1L])
  }
  v <- v[match(genes, rownames(fm))]
  !is.na(v) & v
}
