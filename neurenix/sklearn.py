"""scikit-learn-style estimators (`fit`/`predict`/`score`) built on `neurenix.estimator`.

They follow scikit-learn's conventions — hyper-parameters are constructor arguments stored
unchanged, `get_params`/`set_params`, fitted attributes end in `_`. When scikit-learn is
installed they also derive from its `BaseEstimator` and mixins, which its pipelines, `clone` and
grid searches require; without it they work on their own.

With `backend="compiled"` each fitted model compiles one training-step program and one
prediction program with a symbolic batch size, whatever the dataset size, batch size or number
of rows to predict; a batch of exactly one row adds a static program (see
`neurenix.estimator.Estimator`).  A cross-validation compiles two programs per fold.
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from . import nn, optim
from .estimator import Estimator, History
from .optim import lr_scheduler
from .random import manual_seed
from .tensor import Tensor

try:
    from sklearn.base import BaseEstimator as _SkBase
    from sklearn.base import ClassifierMixin as _SkClassifier
    from sklearn.base import RegressorMixin as _SkRegressor
except ImportError:  # scikit-learn is optional
    class _SkBase:  # type: ignore[no-redef]
        """Stands in for sklearn's BaseEstimator when scikit-learn is absent."""

    class _SkClassifier:  # type: ignore[no-redef]
        """Stands in for sklearn's ClassifierMixin when scikit-learn is absent."""

    class _SkRegressor:  # type: ignore[no-redef]
        """Stands in for sklearn's RegressorMixin when scikit-learn is absent."""

_ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "gelu", "elu")
_OPTIMIZERS = ("adam", "adamw", "sgd", "adadelta")
_SCHEDULES = (None, "plateau", "step", "exponential")


class _NeuralNetBase(_SkBase):
    """Shared hyper-parameters, model building and training of the two estimators."""

    def __init__(self, hidden_layer_sizes: tuple[int, ...] = (100,), activation: str = "relu",
                 dropout: float = 0.0, alpha: float = 1e-4, optimizer: str = "adam",
                 learning_rate: float = 1e-3, batch_size: int = 32, epochs: int = 200,
                 early_stopping: bool = False, validation_fraction: float = 0.1,
                 patience: int = 10, lr_schedule: str | None = None,
                 random_state: int | None = None, verbose: bool = False,
                 backend: str = "compiled", progress: bool = True) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.dropout = dropout
        self.alpha = alpha
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.lr_schedule = lr_schedule
        self.random_state = random_state
        self.verbose = verbose
        self.backend = backend
        self.progress = progress

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(_NeuralNetBase.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's hyper-parameters (scikit-learn protocol)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> _NeuralNetBase:
        """Change hyper-parameters (scikit-learn protocol); unknown names raise ValueError."""
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"{type(self).__name__}: invalid parameter {key!r}; valid: "
                                 f"{sorted(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = _NeuralNetBase().get_params()
        changed = {k: v for k, v in self.get_params().items() if defaults[k] != v}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def _validate(self) -> None:
        name = type(self).__name__
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {_ACTIVATIONS}, got "
                             f"{self.activation!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"{name}: optimizer must be one of {_OPTIMIZERS}, got "
                             f"{self.optimizer!r}")
        if self.lr_schedule not in _SCHEDULES:
            raise ValueError(f"{name}: lr_schedule must be one of {_SCHEDULES}, got "
                             f"{self.lr_schedule!r}")
        sizes = tuple(self.hidden_layer_sizes)
        if any(not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
            raise ValueError(f"{name}: hidden_layer_sizes must be positive ints, got {sizes}")

    def _build(self, n_in: int, n_out: int):
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "elu": nn.ELU}
        layers: list[Any] = []
        width = n_in
        for size in self.hidden_layer_sizes:
            layers += [nn.Linear(width, int(size)), acts[self.activation]()]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width = int(size)
        layers.append(nn.Linear(width, n_out))
        return nn.Sequential(*layers)

    def _make_optimizer(self, params):
        lr, wd = self.learning_rate, self.alpha
        if self.optimizer == "adam":
            return optim.Adam(params, lr=lr, weight_decay=wd)
        if self.optimizer == "adamw":
            return optim.AdamW(params, lr=lr, weight_decay=wd)
        if self.optimizer == "sgd":
            return optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
        return optim.Adadelta(params, lr=lr, weight_decay=wd)

    def _make_scheduler(self, opt):
        if self.lr_schedule == "plateau":
            return lr_scheduler.ReduceLROnPlateau(opt, patience=max(1, self.patience // 2),
                                                  verbose=self.verbose)
        if self.lr_schedule == "step":
            return lr_scheduler.StepLR(opt, step_size=max(1, self.epochs // 3), gamma=0.1)
        if self.lr_schedule == "exponential":
            return lr_scheduler.ExponentialLR(opt, gamma=0.99)
        return None

    def _fit(self, x: np.ndarray, y: Tensor, n_out: int, loss_fn) -> _NeuralNetBase:
        self._validate()
        if self.random_state is not None:
            manual_seed(int(self.random_state))
        self.n_features_in_ = x.shape[1]
        self.model_ = self._build(x.shape[1], n_out)
        opt = self._make_optimizer(self.model_.parameters())
        self.estimator_ = Estimator(self.model_, loss_fn, opt, self._make_scheduler(opt),
                                    backend=self.backend, progress=self.progress)
        self.history_: History = self.estimator_.train(
            x, y, epochs=self.epochs, batch_size=self.batch_size,
            validation_split=self.validation_fraction if self.early_stopping else 0.0,
            early_stopping=self.patience if self.early_stopping else None,
            verbose=self.verbose)
        return self

    def _features(self, x: Any) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError(f"{type(self).__name__}: expected 2-D input (n_samples, "
                             f"n_features), got shape {arr.shape}")
        if hasattr(self, "n_features_in_") and arr.shape[1] != self.n_features_in_:
            raise ValueError(f"{type(self).__name__}: expected {self.n_features_in_} features, "
                             f"got {arr.shape[1]}")
        return arr

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit() first")


class NeuralNetClassifier(_SkClassifier, _NeuralNetBase):
    """A multi-layer perceptron classifier trained with cross-entropy."""

    def fit(self, x: Any, y: Any) -> NeuralNetClassifier:
        arr = self._features(x)
        labels = np.asarray(y)
        if labels.ndim != 1 or labels.shape[0] != arr.shape[0]:
            raise ValueError(f"NeuralNetClassifier: expected y of shape ({arr.shape[0]},), got "
                             f"{labels.shape}")
        self.classes_, encoded = np.unique(labels, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("NeuralNetClassifier: y needs at least two classes")
        return self._fit(arr, Tensor(encoded.astype(np.int64)), len(self.classes_),
                         nn.CrossEntropyLoss())

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities, one column per entry of `classes_`."""
        self._check_fitted()
        logits = self.estimator_.predict(self._features(x))
        return logits.softmax(-1).numpy()

    def predict(self, x: Any) -> np.ndarray:
        self._check_fitted()
        return self.classes_[self.predict_proba(x).argmax(axis=1)]

    def score(self, x: Any, y: Any) -> float:
        """Mean accuracy on (x, y)."""
        return float((self.predict(x) == np.asarray(y)).mean())


class NeuralNetRegressor(_SkRegressor, _NeuralNetBase):
    """A multi-layer perceptron regressor trained with mean squared error."""

    def fit(self, x: Any, y: Any) -> NeuralNetRegressor:
        arr = self._features(x)
        target = np.asarray(y, dtype=np.float32)
        if target.shape[0] != arr.shape[0] or target.ndim not in (1, 2):
            raise ValueError(f"NeuralNetRegressor: expected y of shape ({arr.shape[0]},) or "
                             f"({arr.shape[0]}, k), got {target.shape}")
        self._squeeze = target.ndim == 1
        t2 = target.reshape(arr.shape[0], -1)
        return self._fit(arr, Tensor(t2), t2.shape[1], nn.MSELoss())

    def predict(self, x: Any) -> np.ndarray:
        self._check_fitted()
        out = self.estimator_.predict(self._features(x)).numpy()
        return out[:, 0] if self._squeeze else out

    def score(self, x: Any, y: Any) -> float:
        """The coefficient of determination R² on (x, y)."""
        target = np.asarray(y, dtype=np.float64)
        pred = self.predict(x).astype(np.float64)
        ss_res = ((target - pred) ** 2).sum()
        ss_tot = ((target - target.mean(axis=0)) ** 2).sum()
        return float(1 - ss_res / ss_tot) if ss_tot > 0 else 0.0
