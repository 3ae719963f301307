# One side of bench/gemm.R: the same two GEMMs in torch (float32, as cell2location runs) or
# numpy (float64). Args: S G F reps [numpy|torch].
import sys, time
S, G, F, reps = (int(x) for x in sys.argv[1:5]); lib = sys.argv[5]
if lib == "torch":
    import torch
    torch.manual_seed(1)
    W, Gs, R = torch.rand(S, F), torch.rand(F, G), torch.rand(S, G)
    mm = torch.matmul
    tr = lambda x: x.T
else:
    import numpy as np
    rng = np.random.default_rng(1)
    W, Gs, R = rng.random((S, F)), rng.random((F, G)), rng.random((S, G))
    mm = np.matmul
    tr = lambda x: x.T
mm(W, Gs); mm(R, tr(Gs))
t0 = time.perf_counter()
for _ in range(reps):
    A = mm(W, Gs); D = mm(R, tr(Gs))
print("BENCH_SECONDS=%.6f" % ((time.perf_counter() - t0) / reps))
