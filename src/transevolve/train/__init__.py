"""The training recipe (``train``), its configuration and its checkpoints."""

from transevolve.train.config import RunConfig, TaskConfig, TrainConfig, load_run_config
from transevolve.train.loop import RunResult, TrainingDivergedError, load_run, train

__all__ = ["RunConfig", "RunResult", "TaskConfig", "TrainConfig", "TrainingDivergedError", "load_run",
           "load_run_config", "train"]
