"""Speed, wrapped around the core from outside: BatchNorm folding, CUDA graphs, memory layouts, the CPU
allocator and distributed helpers. Nothing in the core (models, attacks, losses, observe, train) imports it;
the workflows apply it."""
