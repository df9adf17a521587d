"""The schedule: stages compiled from the config, the blend (group per position), the stream
(position -> record), the per-rank sampler, and the plan (what every stage will draw).

Pure functions of position and config; may import config and data, nothing above.
"""
