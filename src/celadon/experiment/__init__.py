"""Studies (`celadon run`): the YAML config, what names a stage (`identity.py`), content-addressed stages, the
runner, concurrent trainings, the result tables and `bench estimate`."""
