"""The demo: MNIST stages (train, compress, compile, tune), their cache, measurements, report, plots, power."""
