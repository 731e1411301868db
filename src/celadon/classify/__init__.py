"""The classify stage: multi-task model, fast cached data path, training loop, checkpoints, predict."""
