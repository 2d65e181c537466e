"""cljax: continual-learning experiments in JAX, R repeats vmapped, one compiled program per task."""

__version__ = "0.1.0"
