"""Schedule search: the space from Hydra's sweep overrides, an Optuna study in the search folder, one run per trial.

Imports config and run (each trial is a run); report and cli build on it.
"""
