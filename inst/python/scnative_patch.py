"""scnative's patches for a live Python session (installed from R by scnative::patch_scvelo()
and scnative::patch_cell2location()).

The patched functions keep upstream's signatures. Supported calls hand the arrays to scnative's
native core through an R callback and write back exactly what upstream writes; any other call
goes to the original upstream function with a one-line message saying why.
"""
import functools
import sys

import numpy as np

_PATCHES = {}  # name -> {"original": obj, "targets": [(module, attr)], "version": str}

SCVELO_PARS = ["alpha", "beta", "gamma", "t_", "scaling", "std_u", "std_s", "likelihood", "u0",
               "s0", "pval_steady", "steady_u", "steady_s", "variance"]


def _say(msg):
    print("scnative: " + msg, file=sys.stderr, flush=True)


def patched():
    """Names of installed patches with the upstream versions they patch."""
    return {k: v["version"] for k, v in _PATCHES.items()}


def original(name):
    return _PATCHES[name]["original"] if name in _PATCHES else None


def _install(name, original_obj, replacement, targets, version):
    if name in _PATCHES:  # idempotent: re-install over the same original and the same places
        original_obj = _PATCHES[name]["original"]
        targets = list(_PATCHES[name]["targets"]) + [t for t in targets
                                                     if t not in _PATCHES[name]["targets"]]
    for mod, attr in targets:
        setattr(mod, attr, replacement)
    _PATCHES[name] = {"original": original_obj, "targets": targets, "version": version}


def unpatch(name):
    entry = _PATCHES.pop(name, None)
    if entry is None:
        return False
    for mod, attr in entry["targets"]:
        setattr(mod, attr, entry["original"])
    return True


# --------------------------------------------------------------------------------------------
# scVelo: tl.recover_dynamics

def _scvelo_targets(fn):
    """Every module attribute under scvelo that holds the original recover_dynamics."""
    out = []
    for mname, mod in list(sys.modules.items()):
        if mod is None or not (mname == "scvelo" or mname.startswith("scvelo.")):
            continue
        for attr in ("recover_dynamics",):
            if getattr(mod, attr, None) is fn:
                out.append((mod, attr))
    return out


def _csc_parts(m):
    """A scipy sparse matrix as CSC parts (R builds its dgCMatrix from them)."""
    m = m.tocsc()
    m.sort_indices()
    return {"p": np.asarray(m.indptr, dtype=np.int32), "i": np.asarray(m.indices, dtype=np.int32),
            "x": np.asarray(m.data, dtype=np.float64), "dim": [int(m.shape[0]), int(m.shape[1])]}


def _dense(x):
    if hasattr(x, "toarray"):
        x = x.toarray()
    return np.asarray(x, dtype=np.float64)


def install_scvelo(r_fit):
    import scvelo
    import scvelo.tools

    orig = original("scvelo") or scvelo.tools.recover_dynamics
    targets = _scvelo_targets(orig)

    @functools.wraps(orig)
    def recover_dynamics(data, var_names="velocity_genes", n_top_genes=None, max_iter=10,
                         assignment_mode="projection", t_max=None, fit_time=True,
                         fit_scaling=True, fit_steady_states=True, fit_connected_states=None,
                         fit_basal_transcription=None, use_raw=False, load_pars=None,
                         return_model=None, plot_results=False, steady_state_prior=None,
                         add_key="fit", copy=False, n_jobs=None, backend="loky",
                         show_progress_bar=True, **kwargs):
        call = dict(var_names=var_names, n_top_genes=n_top_genes, max_iter=max_iter,
                    assignment_mode=assignment_mode, t_max=t_max, fit_time=fit_time,
                    fit_scaling=fit_scaling, fit_steady_states=fit_steady_states,
                    fit_connected_states=fit_connected_states,
                    fit_basal_transcription=fit_basal_transcription, use_raw=use_raw,
                    load_pars=load_pars, return_model=return_model, plot_results=plot_results,
                    steady_state_prior=steady_state_prior, add_key=add_key, copy=copy,
                    n_jobs=n_jobs, backend=backend, show_progress_bar=show_progress_bar,
                    **kwargs)
        why = _scvelo_unsupported(data, call)
        if why:
            _say(why + "; running upstream scvelo.tl.recover_dynamics")
            return orig(data, **call)
        return _scvelo_native(r_fit, data, call)

    recover_dynamics.__scnative__ = True
    _install("scvelo", orig, recover_dynamics, targets, scvelo.__version__)
    return recover_dynamics


def _scvelo_unsupported(adata, call):
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        return "data is not an AnnData"
    extra = set(call) - {"var_names", "n_top_genes", "max_iter", "assignment_mode", "t_max",
                         "fit_time", "fit_scaling", "fit_steady_states", "fit_connected_states",
                         "fit_basal_transcription", "use_raw", "load_pars", "return_model",
                         "plot_results", "steady_state_prior", "add_key", "copy", "n_jobs",
                         "backend", "show_progress_bar", "perc"}
    if extra:
        return "unsupported argument(s) " + ", ".join(sorted(extra))
    if call["plot_results"]:
        return "plot_results=True is not supported"
    if not isinstance(call["fit_time"], (bool, np.bool_)):
        return "fit_time given as times is not supported"
    if call["return_model"]:
        return "return_model=True is not supported"
    if _scvelo_dtype(adata, call) is None:
        return "Ms/Mu layers of float16 or of two different dtypes are not supported"
    if call["return_model"] is None:
        vn = call["var_names"]
        n = 1 if isinstance(vn, str) and vn in adata.var_names else (
            len(vn) if not isinstance(vn, str) else 5)
        if n < 5:
            return "fewer than 5 genes makes upstream return its model object (return_model)"
    return None


def _scvelo_layer_keys(adata, use_raw):
    if "Ms" not in adata.layers.keys() or "Mu" not in adata.layers.keys():
        use_raw = True
    return ("spliced", "unspliced") if use_raw else ("Ms", "Mu")


def _scvelo_dtype(adata, call):
    """The arithmetic upstream runs: 'float32' on float32 layers, 'float64' on float64 (or
    integer) ones; None where it is neither (float16, or the two layers differ)."""
    keys = _scvelo_layer_keys(adata, bool(call["use_raw"]))
    dts = []
    for k in keys:
        if k not in adata.layers.keys():
            return "float64"  # upstream fails on its own; let it say so
        dts.append(np.dtype(adata.layers[k].dtype))
    if dts[0] != dts[1] or any(d == np.float16 for d in dts):
        return None
    return "float32" if dts[0] == np.float32 else "float64"


def _scvelo_native(r_fit, data, call):
    adata = data.copy() if call["copy"] else data
    if len(set(adata.var_names)) != len(adata.var_names):
        adata.var_names_make_unique()
    use_raw = bool(call["use_raw"])
    if "Ms" not in adata.layers.keys() or "Mu" not in adata.layers.keys():
        use_raw = True
    fcs = call["fit_connected_states"]
    if fcs is None:
        fcs = not use_raw
    adata.uns["recover_dynamics"] = {"fit_connected_states": fcs,
                                     "fit_basal_transcription": call["fit_basal_transcription"],
                                     "use_raw": use_raw}
    s_key, u_key = _scvelo_layer_keys(adata, use_raw)
    dtype = _scvelo_dtype(adata, call)
    # genes x cells, Fortran-ordered views of the cells x genes layers: R takes them in one copy
    Ms = _dense(adata.layers[s_key]).T
    Mu = _dense(adata.layers[u_key]).T
    conn = None
    if fcs and "neighbors" in adata.uns and "connectivities" in adata.obsp:
        conn = _csc_parts(adata.obsp["connectivities"])
    vn = call["var_names"]
    if not isinstance(vn, str):
        vn = [str(v) for v in vn]
    res = r_fit(Ms, Mu, conn, adata.var.copy(), list(adata.var_names), list(adata.obs_names),
                dict(var_names=vn, n_top_genes=call["n_top_genes"], max_iter=call["max_iter"],
                     assignment_mode=call["assignment_mode"], t_max=call["t_max"],
                     fit_time=bool(call["fit_time"]), fit_scaling=call["fit_scaling"],
                     fit_steady_states=call["fit_steady_states"], fit_connected_states=fcs,
                     fit_basal_transcription=call["fit_basal_transcription"], use_raw=use_raw,
                     load_pars=call["load_pars"], steady_state_prior=call["steady_state_prior"],
                     n_jobs=call["n_jobs"], perc=call.get("perc", 99), dtype=dtype,
                     progress=bool(call["show_progress_bar"])))
    _scvelo_write(adata, res)
    return adata if call["copy"] else None


def _scvelo_write(adata, res):
    """Writes like upstream (spec 6.1-6.3): refitted genes replace, others keep earlier values."""
    var = res["var"]
    n_obs, n_vars = adata.n_obs, adata.n_vars
    new_alpha = np.asarray(var["fit_alpha"], dtype=np.float64)
    idx = np.where(~np.isnan(new_alpha))[0]
    for name in SCVELO_PARS:
        key = "fit_" + name
        col = (np.asarray(adata.var[key], dtype=np.float64).copy() if key in adata.var.columns
               else np.full(n_vars, np.nan))
        col[idx] = np.asarray(var[key], dtype=np.float64)[idx]
        adata.var[key] = col
    if "fit_r2" in var.columns:
        adata.var["fit_r2"] = np.asarray(var["fit_r2"], dtype=np.float64)
    for key in ("fit_t", "fit_tau", "fit_tau_"):
        lay = (np.array(adata.layers[key], dtype=np.float64) if key in adata.layers.keys()
               else np.full((n_obs, n_vars), np.nan))
        new = np.asarray(res[key], dtype=np.float64)  # genes x cells
        lay[:, idx] = new[idx, :].T
        adata.layers[key] = lay
    loss = np.asarray(res["loss"], dtype=np.float64)
    if loss.ndim == 2 and loss.shape[0] == n_vars:
        width = loss.shape[1]
        old = adata.varm["loss"] if "loss" in adata.varm.keys() else None
        if old is not None:
            width = max(width, old.shape[1])
        out = np.full((n_vars, max(width, 2)), np.nan)
        if old is not None:
            out[:, :old.shape[1]] = old
        out[idx, :] = np.nan
        out[idx, :loss.shape[1]] = loss[idx, :]
        adata.varm["loss"] = out
    if "fit_alignment_scaling" in var.columns:
        col = (np.asarray(adata.var["fit_alignment_scaling"], dtype=np.float64).copy()
               if "fit_alignment_scaling" in adata.var.columns else np.ones(n_vars))
        m = np.asarray(var["fit_alignment_scaling"], dtype=np.float64)
        ok = idx[~np.isnan(m[idx])]
        col[ok] = m[ok]
        col[col == 1] = np.nan
        adata.var["fit_alignment_scaling"] = col


# --------------------------------------------------------------------------------------------
# cell2location: Cell2location.train (spec/cell2location.md section 10)

C2L_SITES = ["m_g_mean", "m_g_alpha_e_inv", "m_g", "n_s_cells_per_location",
             "b_s_groups_per_location", "z_sr_groups_factors", "k_r_factors_per_groups",
             "x_fr_group2fact", "w_sf", "detection_mean_y_e", "detection_y_s",
             "s_g_gene_add_alpha_hyp", "s_g_gene_add_mean", "s_g_gene_add_alpha_e_inv",
             "s_g_gene_add", "alpha_g_phi_hyp", "alpha_g_inverse"]


def install_cell2location(r_train):
    import cell2location
    from cell2location.models import Cell2location

    orig = original("cell2location") or Cell2location.train

    @functools.wraps(orig)
    def train(self, max_epochs=30000, batch_size=None, train_size=1, lr=0.002, num_particles=1,
              scale_elbo=1.0, **kwargs):
        why = _c2l_unsupported(self, batch_size, train_size, num_particles, scale_elbo, kwargs)
        if why:
            _say(why + "; running upstream Cell2location.train")
            return orig(self, max_epochs=max_epochs, batch_size=batch_size,
                        train_size=train_size, lr=lr, num_particles=num_particles,
                        scale_elbo=scale_elbo, **kwargs)
        return _c2l_native(self, r_train, int(max_epochs), float(lr), batch_size, train_size)

    train.__scnative__ = True
    _install("cell2location", orig, train, [(Cell2location, "train")],
             getattr(cell2location, "__version__", "unknown"))
    return train


def _c2l_unsupported(model, batch_size, train_size, num_particles, scale_elbo, kwargs):
    from pyro.infer.autoguide import AutoNormal
    from cell2location.models._cell2location_module import (
        LocationModelLinearDependentWMultiExperimentLocationBackgroundNormLevelGeneAlphaPyroModel
        as DefaultModel)

    # trainer settings that do not change the fit on the CPU
    harmless = {"accelerator": (None, "cpu", "auto"), "devices": (None, "auto", 1),
                "enable_progress_bar": None, "use_gpu": (None, False)}
    other = sorted(k for k in kwargs if k not in harmless or
                   (harmless[k] is not None and kwargs[k] not in harmless[k]))
    if other:
        return "unsupported argument(s) " + ", ".join(other)
    if batch_size is not None and (isinstance(batch_size, bool) or
                                   not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        return "batch_size must be None or a positive whole number"
    if isinstance(train_size, bool) or not isinstance(train_size, (int, float, np.integer,
                                                                   np.floating)) or \
            not 0 < train_size <= 1:
        return "train_size must be in (0, 1]"
    if num_particles != 1:
        return "num_particles != 1 is not supported"
    if scale_elbo != 1.0:
        return "scale_elbo != 1 is not supported"
    module = model.module
    if type(module.model) is not DefaultModel:
        return "model_class %s is not supported" % type(module.model).__name__
    if getattr(module, "is_amortised", False):
        return "amortised guides are not supported"
    if not isinstance(module.guide, AutoNormal):
        return "guide %s is not supported (only AutoNormal)" % type(module.guide).__name__
    m = module.model
    if getattr(m, "training_wo_observed", False) or getattr(m, "training_wo_initial", False):
        return "training without observed data is not supported"
    if getattr(m, "np_init_vals", None) is not None:
        return "init_vals are not supported"
    if getattr(m, "dropout_p", 0) not in (None, 0, 0.0):
        return "dropout_p is not supported"
    return None


def _num(t):
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)


def _guide_params(guide):
    """Current (loc, rho) per site if the guide has been set up, else None."""
    locs = getattr(guide, "locs", None)
    if locs is None:
        return None
    try:
        return {s: (_num(getattr(guide.locs, s + "_unconstrained")),
                    _num(getattr(guide.scales, s + "_unconstrained"))) for s in C2L_SITES}
    except AttributeError:
        return None


def _c2l_native(model, r_train, max_epochs, lr, batch_size=None, train_size=1):
    import pandas as pd
    import torch
    from scvi import REGISTRY_KEYS
    from scvi.dataloaders import AnnDataLoader

    am = model.adata_manager
    X = am.get_from_registry(REGISTRY_KEYS.X_KEY)
    X = _csc_parts(X.T) if hasattr(X, "tocsc") else np.asarray(X, dtype=np.float64).T
    batch = np.asarray(am.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel().astype(np.int64)
    m = model.module.model
    sig = np.asarray(m.cell_state_mat, dtype=np.float64)
    hyper = {k: _num(getattr(m, k)) for k in (
        "N_cells_per_location", "N_cells_mean_var_ratio", "B_groups_per_location",
        "factors_per_groups", "w_sf_mean_var_ratio_tensor", "detection_hyp_prior_alpha",
        "detection_mean_hyp_prior_alpha", "detection_mean_hyp_prior_beta", "m_g_mu_hyp",
        "m_g_mu_mean_var_ratio_hyp", "m_g_alpha_hyp_mean", "alpha_g_phi_hyp_prior_alpha",
        "alpha_g_phi_hyp_prior_beta", "gene_add_alpha_hyp_prior_alpha",
        "gene_add_alpha_hyp_prior_beta", "gene_add_mean_hyp_prior_alpha",
        "gene_add_mean_hyp_prior_beta")}
    hyper["n_groups"] = np.asarray(float(m.n_groups))
    hyper["n_batch"] = np.asarray(float(m.n_batch))
    init = _guide_params(model.module.guide)
    res = r_train(X, batch, sig, hyper, init, max_epochs, lr,
                  None if batch_size is None else int(batch_size), float(train_size))

    # the guide's parameters exist only after its first call: one full-data pass, no gradients
    if _guide_params(model.module.guide) is None:
        dl = AnnDataLoader(am, batch_size=model.adata.n_obs, shuffle=False)
        args, kw = model.module._get_fn_args_from_batch(next(iter(dl)))
        with torch.no_grad():
            model.module.guide(*args, **kw)
    guide = model.module.guide
    with torch.no_grad():
        for s in C2L_SITES:
            loc_t = getattr(guide.locs, s + "_unconstrained")
            rho_t = getattr(guide.scales, s + "_unconstrained")
            loc_t.data.copy_(torch.as_tensor(np.array(res["loc"][s]).reshape(tuple(loc_t.shape)),
                                             dtype=loc_t.dtype))
            rho_t.data.copy_(torch.as_tensor(np.array(res["rho"][s]).reshape(tuple(rho_t.shape)),
                                             dtype=rho_t.dtype))

    loss = np.asarray(res["loss"], dtype=np.float32).ravel()
    hist = getattr(model, "history_", None)
    old = hist.get("elbo_train") if isinstance(hist, dict) else None
    start = 0 if old is None else len(old)
    new = pd.DataFrame({"elbo_train": loss}, index=pd.RangeIndex(start, start + len(loss), name="epoch"))
    if old is not None and model.is_trained_:
        new = pd.concat([old, new])
        new.index.name = "epoch"
        hist["elbo_train"] = new
    else:
        model.history_ = {"elbo_train": new}
    n = model.adata.n_obs
    # the training spots (the minibatch regime's split; all spots in full batch)
    train = np.asarray(res["train"], dtype=np.int64).ravel()
    model.train_indices = train
    model.validation_indices = np.setdiff1d(np.arange(n), train)
    model.test_indices = np.array([], dtype=np.int64)
    model.module.eval()
    model.is_trained_ = True
    return None
