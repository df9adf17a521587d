"""The model: loading (and the built-in tiny models), components and their per-stage trainability,
the LightningModule, the supervised-token loss, the zero-weight vision pass and FSDP2 sharding.

May import config, data (labels' ignore index) and schedule; never run, report or cli.
"""
