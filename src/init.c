/* init.c: registration of every .Call routine with its exact argument count.
 * Keep each topic's block between its own marker comments (merges stay clean). */
#include "scnative.h"

void scn_threads_init(void);

/* core: threads, BLAS, RNG, argument checks */
SEXP scnative_threads_info(void);
SEXP scnative_interrupt_pending(void);
SEXP scnative_threads_set(SEXP);
SEXP scnative_threads_colsums(SEXP, SEXP);
SEXP scnative_dgemm(SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_rng(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_value_flags(SEXP);
SEXP scnative_dense_csc(SEXP);
/* end core */


/* dynamics (scVelo recover_dynamics): declarations */
SEXP scnative_dynamics_fit(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_dynamics_f32(SEXP);
/* end dynamics declarations */


/* cell2location: declarations */
SEXP scnative_c2l_setup(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_c2l_set_params(SEXP, SEXP, SEXP);
SEXP scnative_c2l_get_params(SEXP);
SEXP scnative_c2l_train(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_c2l_logjoint(SEXP, SEXP, SEXP);
SEXP scnative_c2l_logjoint_mb(SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_c2l_train_mb(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_c2l_floor(SEXP);
/* end cell2location declarations */


/* SVI shared by the cell2location models: declarations */
SEXP scnative_svi_live_states(void);
SEXP scnative_svi_adam(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_svi_summary(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_svi_draws(SEXP, SEXP, SEXP, SEXP, SEXP);
/* end SVI declarations */


/* reference regression model: declarations */
SEXP scnative_reg_setup(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_reg_block_stats(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_reg_perm(SEXP, SEXP, SEXP);
SEXP scnative_reg_step(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_reg_set_params(SEXP, SEXP, SEXP);
SEXP scnative_reg_get_params(SEXP);
SEXP scnative_reg_train(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_reg_logjoint(SEXP, SEXP, SEXP, SEXP);
/* end reference regression declarations */


/* velocity (moments, velocity, simulation): declarations */
SEXP scnative_velocity_knn(SEXP, SEXP, SEXP);
SEXP scnative_velocity_mt(SEXP, SEXP, SEXP);
SEXP scnative_velocity_knn_query(SEXP, SEXP, SEXP, SEXP);
SEXP scnative_velocity_nndescent(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_velocity_smooth(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_velocity_dynamical(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_velocity_gram(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
/* end velocity declarations */


/* velocity graph (velocity_graph, transition matrix, embedding): declarations */
SEXP scnative_velocity_graph_prep(SEXP, SEXP, SEXP, SEXP);
SEXP scnative_velocity_graph(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
/* end velocity graph declarations */


/* streamplot (matplotlib's streamlines): declarations */
SEXP scnative_streamlines(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
/* end streamplot declarations */


/* terminal states, velocity pseudotime (sparse eigen solver): declarations */
SEXP scnative_eigs(SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP, SEXP);
SEXP scnative_components(SEXP, SEXP, SEXP);
/* end terminal states declarations */


/* h5ad (read_h5ad's isolated reader): declarations */
SEXP scnative_h5ad_child_init(SEXP);
/* end h5ad declarations */


/* spatial extras (simulation): declarations */
/* end spatial extras declarations */


#define CALLDEF(name, n) {#name, (DL_FUNC)&name, n}

static const R_CallMethodDef callMethods[] = {
    CALLDEF(scnative_threads_info, 0),
    CALLDEF(scnative_interrupt_pending, 0),
    CALLDEF(scnative_threads_set, 1),
    CALLDEF(scnative_threads_colsums, 2),
    CALLDEF(scnative_dgemm, 5),
    CALLDEF(scnative_rng, 6),
    CALLDEF(scnative_value_flags, 1),
    CALLDEF(scnative_dense_csc, 1),
    /* end core table */


    /* dynamics table */
    CALLDEF(scnative_dynamics_fit, 11),
    CALLDEF(scnative_dynamics_f32, 1),
    /* end dynamics table */


    /* cell2location table */
    CALLDEF(scnative_c2l_setup, 10),
    CALLDEF(scnative_c2l_set_params, 3),
    CALLDEF(scnative_c2l_get_params, 1),
    CALLDEF(scnative_c2l_train, 9),
    CALLDEF(scnative_c2l_logjoint, 3),
    CALLDEF(scnative_c2l_logjoint_mb, 5),
    CALLDEF(scnative_c2l_train_mb, 8),
    CALLDEF(scnative_c2l_floor, 1),
    /* end cell2location table */


    /* SVI table */
    CALLDEF(scnative_svi_live_states, 0),
    CALLDEF(scnative_svi_adam, 6),
    CALLDEF(scnative_svi_summary, 9),
    CALLDEF(scnative_svi_draws, 5),
    /* end SVI table */


    /* reference regression table */
    CALLDEF(scnative_reg_setup, 8),
    CALLDEF(scnative_reg_block_stats, 7),
    CALLDEF(scnative_reg_perm, 3),
    CALLDEF(scnative_reg_step, 10),
    CALLDEF(scnative_reg_set_params, 3),
    CALLDEF(scnative_reg_get_params, 1),
    CALLDEF(scnative_reg_train, 8),
    CALLDEF(scnative_reg_logjoint, 4),
    /* end reference regression table */


    /* velocity table */
    CALLDEF(scnative_velocity_knn, 3),
    CALLDEF(scnative_velocity_mt, 3),
    CALLDEF(scnative_velocity_knn_query, 4),
    CALLDEF(scnative_velocity_nndescent, 7),
    CALLDEF(scnative_velocity_smooth, 9),
    CALLDEF(scnative_velocity_dynamical, 11),
    CALLDEF(scnative_velocity_gram, 7),
    /* end velocity table */


    /* velocity graph table */
    CALLDEF(scnative_velocity_graph_prep, 4),
    CALLDEF(scnative_velocity_graph, 11),
    /* end velocity graph table */


    /* streamplot table */
    CALLDEF(scnative_streamlines, 10),
    /* end streamplot table */


    /* terminal states table */
    CALLDEF(scnative_eigs, 12),
    CALLDEF(scnative_components, 3),
    /* end terminal states table */


    /* h5ad table */
    CALLDEF(scnative_h5ad_child_init, 1),
    /* end h5ad table */


    /* spatial extras table */
    /* end spatial extras table */


    {NULL, NULL, 0}};

void attribute_visible R_init_scnative(DllInfo *dll) {
  R_registerRoutines(dll, NULL, callMethods, NULL, NULL);
  R_useDynamicSymbols(dll, FALSE);
  R_forceSymbols(dll, TRUE);
  scn_threads_init();
}
