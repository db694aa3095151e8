"""Optimizers, learning-rate schedulers and early stopping, with PyTorch's API and numerics."""
from . import lr_scheduler
from .adadelta import Adadelta
from .adam import Adam, AdamW
from .early_stopping import EarlyStopping
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Adadelta", "Adam", "AdamW", "EarlyStopping", "Optimizer", "SGD", "lr_scheduler"]
