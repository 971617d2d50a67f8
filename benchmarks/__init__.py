"""latentx microbenchmarks (installed as ``latentx.benchmarks``; run with ``latentx bench``)."""
