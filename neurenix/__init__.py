"""Neurenix: PyTorch-style modules whose models are compiled.

`neurenix.Tensor` runs eagerly on the registry's reference implementations with autograd;
`neurenix.nn` and `neurenix.optim` build and train models on top of it; `neurenix.compile`
(the `neurenix.compilation` package) traces and compiles them.  The modules import one way:
state <- tensor <- autograd <- dispatch <- operations <- tensor_methods <- nn, optim <-
compilation <- cli, estimator, sklearn; this file wires the operations onto `Tensor`.
"""
from neurenix.compiler.types import DType, bool_, float32, float64, int32, int64

from .creation import (
    arange,
    as_tensor,
    empty,
    eye,
    from_numpy,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    tensor,
    zeros,
    zeros_like,
)
from .device import Device, DeviceType, get_available_devices
from .elementwise import (
    abs,
    add,
    ceil,
    clamp,
    clamp_max,
    clamp_min,
    cos,
    div,
    eq,
    erf,
    exp,
    expm1,
    floor,
    floor_divide,
    ge,
    gt,
    isclose,
    isfinite,
    isinf,
    isnan,
    le,
    log,
    log1p,
    logical_and,
    logical_not,
    logical_or,
    lt,
    maximum,
    minimum,
    mul,
    ne,
    neg,
    pow,
    reciprocal,
    relu,
    remainder,
    rsqrt,
    sigmoid,
    sign,
    sin,
    sqrt,
    square,
    sub,
    tanh,
    where,
)
from .indexing import (
    argsort,
    gather,
    index_select,
    masked_fill,
    repeat_interleave,
    sort,
    topk,
    tril,
    triu,
)
from .linalg import bmm, dot, einsum, matmul, mm
from .random import manual_seed
from .reductions import (
    all,
    allclose,
    amax,
    amin,
    any,
    argmax,
    argmin,
    cumsum,
    log_softmax,
    logsumexp,
    max,
    mean,
    min,
    norm,
    prod,
    softmax,
    std,
    sum,
    var,
)
from .shapes import (
    broadcast_to,
    cat,
    chunk,
    flatten,
    flip,
    movedim,
    narrow,
    permute,
    repeat,
    reshape,
    split,
    squeeze,
    stack,
    transpose,
    unbind,
    unflatten,
    unsqueeze,
)
from .state import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .tensor import Tensor, is_tensor
from .tensor_methods import install_methods
from .version import __version__

bool = bool_  # noqa: A001  (neurenix.bool, as torch.bool)
float = float32  # noqa: A001
double = float64
long = int64
int = int32  # noqa: A001


def _attach_creators() -> None:
    # The spec calls creators as static methods: Tensor.randn((32, 10)), Tensor.randint(...)
    for fn in (randn, rand, randint, zeros, ones, full, arange, eye, empty, linspace):
        setattr(Tensor, fn.__name__, staticmethod(fn))


install_methods(Tensor)
_attach_creators()

from . import (  # noqa: E402  (after the methods: the layers build on them)
    nn,
    optim,
    utils,  # noqa: E402  (neurenix.utils.data, as torch.utils.data)
)
from .compilation.compiled import compile  # noqa: E402,A004
from .device import install_device_methods  # noqa: E402

install_device_methods(Tensor)
install_device_methods(nn.Module)
from .export import export  # noqa: E402
from .serialization import load, save  # noqa: E402
