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
obj_matrix <- function(object, name, assay = NULL, layer = NULL, arg = "name") {
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
      return(seurat_get_layer(a, ly))
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
    return(seurat_get_layer(object[[assay]], name))
  }
  if (is_sce(object)) {
    need_pkg("SummarizedExperiment", "for SingleCellExperiment objects")
    have <- SummarizedExperiment::assayNames(object)
    if (!name %in% have) {
      stopf("'%s' = \"%s\" is not an assay of the %s (it has: %s)", arg, name, class(object)[1L],
            if (length(have)) paste(have, collapse = ", ") else "none")
    }
    return(SummarizedExperiment::assay(object, name, withDimnames = TRUE))
  }
  stopf("'object' must be a Seurat or SingleCellExperiment object, not %s", class(object)[1L])
}

obj_has_matrix <- function(object, name, assay = NULL) {
  ok <- tryCatch({
    obj_matrix(object, name, assay = assay)
    TRUE
  }, error = function(e) FALSE)
  ok
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
    g <- methods::as(object[[name]], "dgCMatrix")
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
    vals <- if (!is.null(mc) && ncol(mc) > 0) as.numeric(mc[[1L]]) else rep(1, length(hits))
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

# A cells x dimensions embedding: Seurat reductions (Embeddings), SCE reducedDims.
obj_reduction <- function(object, name, arg = "reduction") {
  check_string(name, arg)
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
