"""alexc's runtime: NumPy kernels with their backward passes, the shard pool and the executor."""

import os

# After each GEMM, OpenBLAS's worker threads spin for 2**28 cycles (about 0.1 s) by default,
# holding a core while the shard pool runs the non-BLAS work between GEMMs (training steps ran
# 6-12% slower). 2**16 cycles keeps them warm between the tap GEMMs of one conv. OpenBLAS reads
# this when NumPy loads it, so it only takes effect if this package is imported first (as
# `import alexc` does); a value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")
