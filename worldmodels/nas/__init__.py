"""Neural-architecture search on sklearn's digits, the codebook world's task: `space` (the search space and
real training), `table` (measured architectures), `surrogate`, `autoencoder` (V of architectures), `search`
(the pipeline)."""
