"""Data layer: FER2013 CSV, image folders, built-in synthetic faces, caching and source resolution."""

from fer_ablate.data.dataset import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES, DataError, Dataset
from fer_ablate.data.loading import load_dataset, resolve_source

__all__ = ["CLASS_NAMES", "IMAGE_SIZE", "NUM_CLASSES", "Dataset", "DataError", "load_dataset", "resolve_source"]
