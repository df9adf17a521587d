"""Typed run configuration: the schema every composed Hydra config is validated against.

common.py holds the error and enums, schedule.py the stages, search.py the objective and search
settings, run.py the other sections and `validate`. Imports nothing of the project: every other room may import config.
"""

from curriculum.config.common import COMPONENTS, ConfigError, Mode, OnInvalid
from curriculum.config.run import (
    PRECISIONS,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ExportConfig,
    LoggerConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    RunConfig,
    ShapesConfig,
    TrainableConfig,
    TrainerConfig,
    device_count,
    validate,
)
from curriculum.config.schedule import REST, SCHEDULERS, RampConfig, ScheduleConfig, StageConfig, StageTrainable, mix_fractions
from curriculum.config.search import SearchConfig

__all__ = [
    "COMPONENTS", "ConfigError", "Mode", "OnInvalid", "PRECISIONS", "CheckpointConfig", "DataConfig", "EvalConfig", "ExportConfig",
    "LoggerConfig", "LoraConfig", "ModelConfig", "OptimConfig", "PathsConfig", "RunConfig", "ShapesConfig", "TrainableConfig",
    "TrainerConfig", "device_count", "validate", "REST", "SCHEDULERS", "RampConfig", "ScheduleConfig", "StageConfig", "StageTrainable",
    "mix_fractions", "SearchConfig",
]
