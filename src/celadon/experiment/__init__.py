"""Experiments: the YAML config, content-addressed stages, the runner and its result tables."""
