"""The synthesis stage: seven-tier LoRA training-set selection, captions, the tiny and SD 1.5 pipelines, LoRA
training, generation plans, generators (txt2img, img2img), QC and curation into a training manifest."""
