"""The data stage: manifests, validation, imbalance analysis, splits, augmentation, sampling, duplicates."""
