"""Training: the loop (`train()`), its recipe, optimiser, checkpoints, evaluation, metrics,
MPI ranks and the training-memory forecast."""
