"""Optimizers, learning-rate schedulers and early stopping, with PyTorch's API and numerics."""
from . import lr_scheduler
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .early_stopping import EarlyStopping
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Adadelta", "Adagrad", "Adam", "AdamW", "EarlyStopping", "Optimizer", "RMSprop",
           "SGD", "lr_scheduler"]
