"""Configuration: the defaults, variant deltas, strict overrides, config hash, and the YAML files that
drive many runs (experiment files in ``experiments/``, search spaces in ``search_spaces/``)."""
