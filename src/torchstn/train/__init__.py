"""Training and evaluation from configs: ``torchstn train``, ``torchstn eval``.

* :mod:`~torchstn.train.config`: the typed config sections, their defaults and the ``key=value`` overrides.
* :mod:`~torchstn.train.tasks`: the task registry (data sources, loss, score).
* :mod:`~torchstn.train.factories`: model, optimizer and schedule from a config.
* :mod:`~torchstn.train.rundir`: the run directory, its metadata and checkpoints.
* :mod:`~torchstn.train.engine`: the loop.
"""

from torchstn.train.config import DEFAULTS, Config, format_config, list_configs, load_config
from torchstn.train.engine import TrainingDiverged, TrainingInterrupted, evaluate, train
from torchstn.train.factories import build_model
from torchstn.train.rundir import load_checkpoint, save_checkpoint
from torchstn.train.tasks import ClassifyTask, StreamSource, Task, TensorSource, build_task, list_tasks, register_task

__all__ = [
    "DEFAULTS",
    "ClassifyTask",
    "Config",
    "StreamSource",
    "Task",
    "TensorSource",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_model",
    "build_task",
    "evaluate",
    "format_config",
    "list_configs",
    "list_tasks",
    "load_checkpoint",
    "load_config",
    "register_task",
    "save_checkpoint",
    "train",
]
