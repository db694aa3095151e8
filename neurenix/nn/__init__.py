"""Neural-network building blocks: Module, layers, activations, losses and containers.

Every layer is a composition of tensor operations (and so of registry primitives): none has a
gradient rule of its own.
"""
from . import functional, init
from .activation import ELU, GELU, SELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .container import ModuleDict, ModuleList, Sequential
from .conv import Conv1d, Conv2d, Conv3d
from .dropout import Dropout
from .embedding import Embedding
from .flatten import Flatten, Identity
from .linear import Linear
from .loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss, NLLLoss
from .module import Module
from .normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from .parameter import Parameter
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool1d, MaxPool2d
from .rnn import GRU, LSTM, RNN

__all__ = [
    "functional", "init", "Module", "Parameter", "Sequential", "ModuleList", "ModuleDict",
    "Linear", "Conv1d", "Conv2d", "Conv3d", "RNN", "LSTM", "GRU",
    "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "ELU", "SELU", "Softmax", "LogSoftmax", "GELU",
    "MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss", "BCELoss", "BCEWithLogitsLoss",
    "Dropout", "MaxPool1d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten",
    "Identity", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "Embedding",
]
