"""The evaluate stage: a trained model's metrics on a split (`run.py`), FID/KID (`distances.py`), label fidelity
of synthetic images (`fidelity.py`), t-SNE features (`embeddings.py`), and the statistics and resampling the
study's comparisons use (`stats.py`, `resample.py`)."""
