"""Training and evaluation from configs: ``torchstn train``, ``torchstn eval``."""

from torchstn.train.config import DEFAULTS, load_config
from torchstn.train.engine import TrainingDiverged, evaluate, load_checkpoint, save_checkpoint, train
from torchstn.train.tasks import ClassifyTask, StreamSource, Task, TensorSource, build_task

__all__ = [
    "DEFAULTS",
    "ClassifyTask",
    "StreamSource",
    "Task",
    "TensorSource",
    "TrainingDiverged",
    "build_task",
    "evaluate",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "train",
]
