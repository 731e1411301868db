"""celadon: synthetic data augmentation for multi-task cultural-heritage classification."""

__version__ = "0.1.0"
