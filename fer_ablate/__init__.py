"""fer-ablate: tracked, comparable, reproducible ablations of facial-expression-recognition CNNs."""

__version__ = "0.1.0"
