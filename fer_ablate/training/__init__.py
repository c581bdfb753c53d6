"""One training run, unaware of who drives it: Keras model, data pipeline, fit, evaluation metrics."""
