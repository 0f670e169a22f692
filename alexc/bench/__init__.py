"""`alexc bench`: machine and memory probes, timing rounds, comparisons, the kernel profiler
and the MPI bench."""
