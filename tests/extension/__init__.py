"""A new stage, task, reward formulation and baseline, each in its own file, plugged in by config only
(tests/conf, added to Hydra's search path); tests/test_extension.py runs them in a pipeline."""
