"""The synthesis stage: LoRA training-set selection and captions (generation follows in later work)."""
