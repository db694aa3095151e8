"""The benchmark workloads, each built for every framework with identical weights and inputs.

A workload is a model (or a function) plus inputs, run either as inference or as one training
step (forward, loss, backward, optimizer step).  `build_runner(name, framework)` returns a
`Runner` whose `step()` does one call; the weights always come from the seeded Neurenix model
and are copied into PyTorch with `load_state_dict`, so every framework computes the same thing.
`tiny=True` shrinks every size so the smoke test runs in seconds.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NEURENIX = ("neurenix_eager", "neurenix_compiled")
PEERS = ("torch_eager", "torch_compile", "torch_compile_step", "onnxruntime")
TRAIN_ONLY = ("torch_compile_step",)  # torch.compile of the whole training step
INFERENCE_ONLY = ("onnxruntime",)
FRAMEWORKS = NEURENIX + PEERS
THREADS = 2


@dataclass(frozen=True)
class Workload:
    """One benchmark: which model, what batch, inference or training with which loss/optim."""

    name: str
    family: str  # "mlp" | "cnn" | "lstm" | "eltwise" | "gemm"
    train: bool
    description: str
    batch: int = 1
    loss: str = ""  # "cross_entropy" | "mse" (training only)
    optimizer: str = ""  # "sgd" (lr 0.01, momentum 0.9) | "adam" (lr 1e-3)
    dims: tuple[int, ...] = ()
    """The family's sizes where they differ from the spec model's (full scale only): MLP
    (inputs, hidden1, hidden2, classes), CNN (channels1, channels2, image side, hidden), LSTM
    (sequence, inputs, hidden, outputs)."""

    def frameworks(self) -> tuple[str, ...]:
        """The frameworks this workload runs on: onnxruntime only for inference, the whole
        training step under torch.compile only for training."""
        skip = INFERENCE_ONLY if self.train else TRAIN_ONLY
        return tuple(fw for fw in FRAMEWORKS if fw not in skip)


WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("mlp_b1", "mlp", False, "MLP 784-512-512-10, batch 1, inference", batch=1),
    Workload("mlp_b64", "mlp", False, "MLP 784-512-512-10, batch 64, inference", batch=64),
    Workload("mlp_train_b64", "mlp", True, "MLP batch 64: CrossEntropyLoss, backward, "
             "SGD(lr=0.01, momentum=0.9) step", batch=64, loss="cross_entropy",
             optimizer="sgd"),
    Workload("cnn_infer", "cnn", False, "spec CNN on (32,3,28,28), inference", batch=32),
    Workload("cnn_train", "cnn", True, "spec CNN on (32,3,28,28): CrossEntropyLoss, "
             "backward, Adam step", batch=32, loss="cross_entropy", optimizer="adam"),
    Workload("lstm_infer", "lstm", False, "spec 2-layer LSTM(10, 20) + Linear(20, 5) on "
             "(32,15,10), inference", batch=32),
    Workload("lstm_train", "lstm", True, "spec LSTM on (32,15,10): MSELoss, backward, Adam "
             "step", batch=32, loss="mse", optimizer="adam"),
    Workload("eltwise", "eltwise", False, "gelu_tanh(x*a+b)*sigmoid(x), x (4096,1024) = 4M "
             "float32, a and b (1024,) broadcast over rows"),
    Workload("gemm_1024", "gemm", False, "float32 matmul (1024,1024) @ (1024,1024)"),
]}

OFF_TUNING: dict[str, Workload] = {w.name: w for w in [
    Workload("mlp_train_b256_w1024", "mlp", True, "MLP 784-1024-1024-10 batch 256: "
             "CrossEntropyLoss, backward, SGD momentum step", batch=256, loss="cross_entropy",
             optimizer="sgd", dims=(784, 1024, 1024, 10)),
    Workload("cnn_train_b8", "cnn", True, "spec CNN on (8,3,28,28): CrossEntropyLoss, "
             "backward, Adam step", batch=8, loss="cross_entropy", optimizer="adam"),
    Workload("cnn_train_b64_c32", "cnn", True, "CNN 32/64 channels on (64,3,32,32), hidden "
             "256: CrossEntropyLoss, backward, Adam step", batch=64, loss="cross_entropy",
             optimizer="adam", dims=(32, 64, 32, 256)),
    Workload("lstm_train_s50_h64", "lstm", True, "2-layer LSTM(32, 64) + Linear(64, 8) on "
             "(16,50,32): MSELoss, backward, Adam step", batch=16, loss="mse",
             optimizer="adam", dims=(50, 32, 64, 8)),
]}
"""Training shapes outside the three tuned workloads (issue 15's "report on others too"):
`benchmarks/training_loops.py --only` takes their names; bench.py does not run them."""

MLP_SIZES = {False: (784, 512, 512, 10), True: (16, 8, 8, 4)}
LSTM_SIZES = {False: (15, 10, 20, 5), True: (3, 10, 4, 5)}  # seq, input, hidden, output
CNN_SIZES = {False: (16, 32, 28, 128), True: (16, 32, 28, 128)}  # channels, side, hidden


def workload(name: str) -> Workload:
    """The workload called `name`, tuned or off-tuning."""
    try:
        return WORKLOADS[name] if name in WORKLOADS else OFF_TUNING[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; known: "
                         f"{sorted(WORKLOADS) + sorted(OFF_TUNING)}") from None


def sizes_of(w: Workload, tiny: bool) -> tuple[int, ...]:
    """The family's sizes at this scale (see `Workload.dims`)."""
    table = {"mlp": MLP_SIZES, "lstm": LSTM_SIZES, "cnn": CNN_SIZES}[w.family]
    return w.dims if w.dims and not tiny else table[tiny]
ELTWISE_SHAPE = {False: (4096, 1024), True: (4, 64)}
GEMM_N = {False: 1024, True: 16}


def batch_of(w: Workload, tiny: bool) -> int:
    """The batch size at this scale."""
    return min(w.batch, 2) if tiny else w.batch


def eltwise_bytes(tiny: bool = False) -> int:
    """Bytes the elementwise chain must move at least: read x once, write the result once."""
    rows, cols = ELTWISE_SHAPE[tiny]
    return 2 * rows * cols * 4


def gemm_flops(tiny: bool = False) -> float:
    """Floating-point operations of the GEMM workload (2 n^3)."""
    return 2.0 * GEMM_N[tiny] ** 3


def make_inputs(w: Workload, tiny: bool = False) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The workload's inputs (and training target), the same for every framework."""
    rng = np.random.default_rng(0)
    b = batch_of(w, tiny)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    if w.family == "mlp":
        sizes = sizes_of(w, tiny)
        x, classes = [normal(b, sizes[0])], sizes[-1]
    elif w.family == "cnn":
        side = sizes_of(w, tiny)[2]
        x, classes = [normal(b, 3, side, side)], 10
    elif w.family == "lstm":
        seq, inp, _, out = sizes_of(w, tiny)
        x, classes = [normal(b, seq, inp)], out
    elif w.family == "eltwise":
        rows, cols = ELTWISE_SHAPE[tiny]
        return [normal(rows, cols), normal(cols), normal(cols)], None
    else:
        n = GEMM_N[tiny]
        return [normal(n, n), normal(n, n)], None
    if not w.train:
        return x, None
    if w.loss == "cross_entropy":
        return x, rng.integers(0, classes, size=(b,), dtype=np.int64)
    return x, normal(b, classes)


# ---- Neurenix -------------------------------------------------------------------------------

def neurenix_model(w: Workload, tiny: bool = False) -> Any:
    """The workload's Neurenix module, initialised from seed 0 (None for plain functions)."""
    import neurenix
    from neurenix.nn import LSTM, Conv2d, Linear, MaxPool2d, Module, ReLU, Sequential

    neurenix.manual_seed(0)
    if w.family == "mlp":
        i, h1, h2, o = sizes_of(w, tiny)
        return Sequential(Linear(i, h1), ReLU(), Linear(h1, h2), ReLU(), Linear(h2, o))
    if w.family == "cnn":
        c1, c2, side, hidden = sizes_of(w, tiny)

        class CNN(Module):
            def __init__(self) -> None:
                super().__init__()
                self.features = Sequential(
                    Conv2d(3, c1, kernel_size=3, stride=1, padding=1), ReLU(),
                    MaxPool2d(kernel_size=2, stride=2),
                    Conv2d(c1, c2, kernel_size=3, stride=1, padding=1), ReLU(),
                    MaxPool2d(kernel_size=2, stride=2))
                self.classifier = Sequential(Linear(c2 * (side // 4) ** 2, hidden), ReLU(),
                                             Linear(hidden, 10))

            def forward(self, x):
                x = self.features(x)
                return self.classifier(x.view(x.shape[0], -1))

        return CNN()
    if w.family == "lstm":
        _, inp, hidden, out = sizes_of(w, tiny)

        class RNN(Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = LSTM(inp, hidden, num_layers=2, batch_first=True)
                self.fc = Linear(hidden, out)

            def forward(self, x):
                output, _ = self.lstm(x)
                return self.fc(output[:, -1, :])

        return RNN()
    return None


def neurenix_eltwise(x: Any, a: Any, b: Any) -> Any:
    """gelu(x*a+b) (tanh approximation) * sigmoid(x), in Neurenix."""
    import neurenix.nn.functional as F

    return F.gelu(x * a + b, approximate="tanh") * F.sigmoid(x)


def matmul(a: Any, b: Any) -> Any:
    """a @ b (works for Neurenix and PyTorch tensors alike)."""
    return a @ b


def reference_weights(w: Workload, tiny: bool = False) -> dict[str, np.ndarray]:
    """The Neurenix model's state_dict as NumPy arrays: what every framework loads."""
    model = neurenix_model(w, tiny)
    if model is None:
        return {}
    return {k: np.array(v.numpy(), copy=True) for k, v in model.state_dict().items()}


@dataclass
class Runner:
    """One workload on one framework: `step()` runs a call (inference) or a training step.

    `value(out)` turns what `step` returned into NumPy (the output, or the loss);
    `context()` is entered around every run of `step` (no-grad for inference); `info()`
    says what the framework built (compile statistics, export time).
    """

    step: Callable[[], Any]
    value: Callable[[Any], np.ndarray]
    context: Callable[[], Any] = contextlib.nullcontext
    info: Callable[[], dict] = dict
    keep: list = field(default_factory=list)


def _neurenix_runner(w: Workload, compiled: bool, tiny: bool, backend: str | None) -> Runner:
    import neurenix

    inputs, target = make_inputs(w, tiny)
    xs = [neurenix.Tensor(a) for a in inputs]
    model = neurenix_model(w, tiny)
    fn = model if model is not None else (neurenix_eltwise if w.family == "eltwise"
                                          else matmul)
    call = neurenix.compile(fn, backend=backend) if compiled else fn

    def info() -> dict:
        if not compiled:
            return {}
        stats = call.stats()
        stats["passes"] = [list(p) for p in stats.get("passes", [])]
        # stats() has no naive/lower-bound bytes for the backward program: read its Program
        program = getattr(getattr(getattr(call, "_last", None), "backward", None), "program",
                          None)
        if program is not None:
            stats["backward_memory"] = dict(program.memory)
        return stats

    if not w.train:
        if model is not None:
            model.eval()
        return Runner(lambda: call(*xs), lambda out: out.numpy(), neurenix.no_grad, info)
    from neurenix.nn import CrossEntropyLoss, MSELoss
    from neurenix.optim import SGD, Adam

    model.train()
    criterion = CrossEntropyLoss() if w.loss == "cross_entropy" else MSELoss()
    if w.optimizer == "sgd":
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        opt = Adam(model.parameters(), lr=1e-3)
    y = neurenix.Tensor(target)

    def train_step(*args: Any) -> Any:
        opt.zero_grad()
        loss = criterion(model(*args[:-1]), args[-1])
        loss.backward()
        opt.step()
        return loss

    # compiled: the whole step (forward, loss, backward, optimizer) is one program
    call = neurenix.compile(train_step, backend=backend) if compiled else train_step
    return Runner(lambda: call(*xs, y), lambda loss: np.asarray(loss.item()), info=info)


# ---- PyTorch and onnxruntime ----------------------------------------------------------------

def torch_model(w: Workload, tiny: bool = False) -> Any:
    """The same model in PyTorch, holding the Neurenix model's weights."""
    import torch
    from torch import nn

    class Eltwise(nn.Module):
        def forward(self, x, a, b):
            return nn.functional.gelu(x * a + b, approximate="tanh") * torch.sigmoid(x)

    class Gemm(nn.Module):
        def forward(self, a, b):
            return a @ b

    if w.family == "eltwise":
        return Eltwise()
    if w.family == "gemm":
        return Gemm()
    if w.family == "mlp":
        i, h1, h2, o = sizes_of(w, tiny)
        model = nn.Sequential(nn.Linear(i, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                              nn.Linear(h2, o))
    elif w.family == "cnn":
        c1, c2, side, hidden = sizes_of(w, tiny)

        class CNN(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.features = nn.Sequential(
                    nn.Conv2d(3, c1, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2),
                    nn.Conv2d(c1, c2, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2))
                self.classifier = nn.Sequential(nn.Linear(c2 * (side // 4) ** 2, hidden),
                                                nn.ReLU(), nn.Linear(hidden, 10))

            def forward(self, x):
                x = self.features(x)
                return self.classifier(x.view(x.shape[0], -1))

        model = CNN()
    else:
        _, inp, hidden, out = sizes_of(w, tiny)

        class RNN(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(inp, hidden, num_layers=2, batch_first=True)
                self.fc = nn.Linear(hidden, out)

            def forward(self, x):
                output, _ = self.lstm(x)
                return self.fc(output[:, -1, :])

        model = RNN()
    weights = {k: torch.from_numpy(v) for k, v in reference_weights(w, tiny).items()}
    model.load_state_dict(weights, strict=True)
    return model


def _torch_runner(w: Workload, compiled: bool, tiny: bool, whole_step: bool = False) -> Runner:
    """PyTorch eager, `torch.compile` of the model, or (`whole_step`, training only)
    `torch.compile` of the function that runs forward, loss, backward and the optimizer step:
    the same unit Neurenix compiled compiles."""
    import torch

    torch.set_num_threads(THREADS)
    inputs, target = make_inputs(w, tiny)
    xs = [torch.from_numpy(a) for a in inputs]
    model = torch_model(w, tiny)
    call = torch.compile(model) if compiled and not whole_step else model
    if not w.train:
        model.eval()
        return Runner(lambda: call(*xs), lambda out: out.detach().numpy(), torch.no_grad)
    model.train()
    criterion = torch.nn.CrossEntropyLoss() if w.loss == "cross_entropy" else torch.nn.MSELoss()
    if w.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.from_numpy(target)

    def step() -> Any:
        opt.zero_grad()
        loss = criterion(call(*xs), y)
        loss.backward()
        opt.step()
        return loss

    return Runner(torch.compile(step) if whole_step else step,
                  lambda loss: np.asarray(loss.item()))


def _onnxruntime_runner(w: Workload, tiny: bool) -> Runner:
    import onnxruntime as ort
    import torch

    if w.train:
        raise ValueError("onnxruntime: inference workloads only")
    torch.set_num_threads(THREADS)
    inputs, _ = make_inputs(w, tiny)
    model = torch_model(w, tiny).eval()
    names = [f"input{i}" for i in range(len(inputs))]
    tmp = tempfile.TemporaryDirectory(prefix="bench-onnx-")
    path = os.path.join(tmp.name, f"{w.name}.onnx")
    t0 = time.perf_counter()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        torch.onnx.export(model, tuple(torch.from_numpy(a) for a in inputs), path,
                          input_names=names, output_names=["output"])
    t1 = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    t2 = time.perf_counter()
    feeds = dict(zip(names, inputs))
    return Runner(lambda: session.run(None, feeds), lambda out: out[0],
                  info=lambda: {"export_s": t1 - t0, "session_s": t2 - t1}, keep=[tmp])


def build_runner(name: str, framework: str, tiny: bool = False,
                 backend: str | None = None) -> Runner:
    """A runner for workload `name` on `framework` (one of FRAMEWORKS).

    `backend` picks the Neurenix compile backend ("llvm" or "reference"; default: Neurenix's).
    """
    w = workload(name)
    if framework == "neurenix_eager":
        return _neurenix_runner(w, False, tiny, backend)
    if framework == "neurenix_compiled":
        return _neurenix_runner(w, True, tiny, backend)
    if framework == "torch_eager":
        return _torch_runner(w, False, tiny)
    if framework == "torch_compile":
        return _torch_runner(w, True, tiny)
    if framework == "torch_compile_step":
        if not w.train:
            raise ValueError(f"torch_compile_step: {name!r} is not a training workload")
        return _torch_runner(w, True, tiny, whole_step=True)
    if framework == "onnxruntime":
        return _onnxruntime_runner(w, tiny)
    raise ValueError(f"unknown framework {framework!r}; expected one of {FRAMEWORKS}")
