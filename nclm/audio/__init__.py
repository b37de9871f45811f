"""Audio I/O, resampling, spectral transforms and signal metrics."""
