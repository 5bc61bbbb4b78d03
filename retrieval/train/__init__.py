"""Contrastive training of ENN towers: the backprop trainer and the pieces other trainers reuse.

`train_bp` is `training.method: bp`; ENN-ℓ (`training.method: local`) lives in `retrieval.train.local` and
reuses data (`build_train_data`), optimizer/schedule (`build_optimizer`, `build_scheduler`), the run
session (`prepare_run`, `log_train`, `save_last`, `end_of_block`, `validate`) and checkpoint state
(`Progress`, `Trainables`, `save_training_state`, `restore_training_state` with `RunSetup.resume_state`).
"""

from retrieval.train.data import TrainData, build_train_data, load_train_records
from retrieval.train.distributed import DistEnv, init_distributed, shutdown
from retrieval.train.loop import train_bp
from retrieval.train.optim import build_optimizer, build_scheduler, param_groups
from retrieval.train.run_dir import RunDir, plot_curves
from retrieval.train.session import RunSetup, end_of_block, log_train, prepare_run, save_last, validate
from retrieval.train.state import (
    Progress,
    Trainables,
    load_training_state,
    read_resume_point,
    restore_training_state,
    save_training_state,
)
from retrieval.train.step import build_loss, clamp_logit_scale, penalty_weight, train_step

__all__ = [
    "DistEnv",
    "Progress",
    "RunDir",
    "RunSetup",
    "TrainData",
    "Trainables",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "build_train_data",
    "clamp_logit_scale",
    "end_of_block",
    "init_distributed",
    "load_train_records",
    "load_training_state",
    "log_train",
    "param_groups",
    "penalty_weight",
    "plot_curves",
    "prepare_run",
    "read_resume_point",
    "restore_training_state",
    "save_last",
    "save_training_state",
    "shutdown",
    "train_bp",
    "train_step",
    "validate",
]
