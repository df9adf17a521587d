"""A training run in its folder: the recipe that builds the parts and calls Lightning, resume (one
pre-flight), checkpoints (layout, atomic and sharded writes), callbacks, the metrics log, the run
lock, the datamodule, generation scoring and exports.

May import config, data, schedule and model; never report or cli.
"""
