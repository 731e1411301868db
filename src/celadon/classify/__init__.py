"""The classify stage: multi-task model (backbone registry + heads), decoded-once image cache, batches augmented
in the loader or on the device, real + synthetic mixing, the training loop, prediction and `bench train`."""
