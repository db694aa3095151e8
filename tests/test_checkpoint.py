"""Checkpoints: `neurenix.save`/`neurenix.load` of whole training states (nested containers,
tensors of every dtype, NumPy values, Python scalars) in safetensors files, never pickled; the
flat-dict layout other safetensors readers read; errors; and resumed training that continues
exactly where uninterrupted training goes."""
import json
import math
import os
import struct
from collections import OrderedDict

import numpy as np
import pytest
import safetensors.numpy

import neurenix as nx
from neurenix import nn, optim
from neurenix.nn import Parameter
from neurenix.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau, StepLR


def assert_same(a, b, path="obj"):
    """a and b are equal in type and value, tensors bitwise (dtype, device, requires_grad)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, nx.Tensor):
        assert (a.dtype, a.device, a.requires_grad, a.shape) == \
            (b.dtype, b.device, b.requires_grad, b.shape), path
        assert a._host().tobytes() == b._host().tobytes(), path
    elif isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert type(key) is type(next(k for k in b if k == key and type(k) is type(key)))
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(a, np.floating):
        assert struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
        if isinstance(a, np.generic):
            assert a.dtype == b.dtype, path
    else:
        assert a == b, path
        if isinstance(a, np.generic):
            assert a.dtype == b.dtype, path


def roundtrip(obj, tmp_path, **kwargs):
    path = tmp_path / "ckpt.safetensors"
    nx.save(obj, path)
    return nx.load(path, **kwargs)


# ---- every supported kind --------------------------------------------------------------------

def test_nested_checkpoint_roundtrips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    obj = {
        "tensors": [nx.Tensor(rng.standard_normal((3, 4)).astype(np.float32)),
                    nx.Tensor(rng.standard_normal(5), dtype=nx.float64),
                    nx.Tensor(np.array([True, False, True])),
                    nx.Tensor(np.array([-(2 ** 62), 7], dtype=np.int64)),
                    nx.Tensor(np.array([1, -2], dtype=np.int32)),
                    nx.Tensor(np.float32(3.5)),                     # 0-d
                    nx.Tensor(np.zeros((0, 3), np.float32)),        # empty
                    nx.Tensor(np.ones((2, 2), np.float32), requires_grad=True)],
        "arrays": (np.arange(6, dtype=np.uint8).reshape(2, 3), np.float16([1.5, -2]),
                   np.arange(4, dtype=">i4"), np.asfortranarray(rng.standard_normal((2, 3))),
                   np.array(True), np.zeros((0,), np.uint64)),
        "scalars": [np.float32(0.1), np.int64(-3), np.bool_(True), np.uint16(9), np.float64(2.5)],
        "numbers": [0, -1, 2 ** 100, 0.1, -0.0, 1e-310, 1e300, math.inf, -math.inf, math.nan],
        "other": [None, True, False, "", "héllo ✓", "x" * 1000],
        "keys": {0: "int zero", "0": "str zero", -5: "negative", "a.b": {"c": 1}},
        "empty": [{}, [], (), OrderedDict()],
        "ordered": OrderedDict([("z", 1), ("a", 2)]),
        "tuple": (1, (2, [3, (4,)])),
    }
    back = roundtrip(obj, tmp_path)
    # NumPy arrays come back native-endian and C-ordered, with the same values
    obj["arrays"] = tuple(np.asarray(a, dtype=a.dtype.newbyteorder("="), order="C")
                          for a in obj["arrays"])
    assert_same(obj, back)
    assert back["tensors"][7].is_leaf


@pytest.mark.parametrize("value", [nx.Tensor(np.arange(4, dtype=np.int64)), np.arange(3.0),
                                   1.5, 7, None, "text", True, [1, 2], (3,), {"a": 1}])
def test_any_supported_value_at_the_top(tmp_path, value):
    assert_same(value, roundtrip(value, tmp_path))


def test_non_contiguous_tensor_saves_its_values(tmp_path):
    base = nx.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    view = base.transpose(0, 1)[1:]
    back = roundtrip({"v": view, "n": 1}, tmp_path)
    np.testing.assert_array_equal(back["v"].numpy(), view.numpy())


def test_parameters_load_as_parameters(tmp_path):
    model = nn.Linear(3, 2)
    back = roundtrip(model.state_dict(keep_vars=True), tmp_path)
    assert all(type(v) is Parameter and v.requires_grad for v in back.values())
    assert_same(dict(model.state_dict(keep_vars=True)), dict(back))


def test_loaded_values_are_private_copies(tmp_path):
    t = nx.Tensor(np.zeros(3, np.float32))
    arr = np.zeros(3)
    back = roundtrip({"t": t, "a": arr}, tmp_path)
    back["t"].add_(1.0)
    back["a"] += 1
    assert t.numpy().sum() == 0 and arr.sum() == 0 and back["a"].flags.writeable


# ---- shared storage ------------------------------------------------------------------------

def test_shared_tensors_are_stored_once_and_load_shared(tmp_path):
    w = nx.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    obj = {"a": {"w": w}, "b": [w, w.detach()], "n": 0}
    path = tmp_path / "c.safetensors"
    nx.save(obj, path)
    assert len(safetensors.numpy.load_file(str(path))) == 1
    back = nx.load(path)
    assert back["a"]["w"] is back["b"][0]                      # the same object twice
    assert back["b"][1] is not back["b"][0]
    back["b"][1].add_(1.0)                                     # a detach() shares its storage
    np.testing.assert_array_equal(back["a"]["w"].numpy(), w.numpy() + 1)


def test_tied_weights_in_a_flat_state_dict(tmp_path):
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight
    state = nn.Sequential(first, second).state_dict()
    path = tmp_path / "tied.safetensors"
    nx.save(state, path)
    plain = safetensors.numpy.load_file(str(path))          # every key, as any reader wants
    assert sorted(plain) == sorted(state)
    back = nx.load(path)
    back["1.weight"].mul_(0.0)
    assert not back["0.weight"].numpy().any()
    assert back["0.bias"].numpy().any()


# ---- the flat layout and older files -------------------------------------------------------

def test_flat_state_dict_is_a_plain_safetensors_file(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    state = model.state_dict()
    path = tmp_path / "model.safetensors"
    nx.save(state, path)
    plain = safetensors.numpy.load_file(str(path))
    assert sorted(plain) == sorted(state)
    for key, value in state.items():
        assert plain[key].dtype == value.numpy().dtype
        np.testing.assert_array_equal(plain[key], value.numpy())
    back = nx.load(path)
    assert type(back) is OrderedDict and list(back) == list(state)  # the saved order
    assert_same(state, back)


def test_files_without_a_header_load_as_ordered_dicts(tmp_path):
    arrays = {"w": np.ones((2, 2), np.float32), "steps": np.array(3, np.int64),
              "mask": np.array([True, False]), "d": np.arange(3.0)}
    path = tmp_path / "old.safetensors"
    safetensors.numpy.save_file(arrays, str(path))
    back = nx.load(path)
    assert type(back) is OrderedDict and sorted(back) == sorted(arrays)
    for key, value in arrays.items():
        assert isinstance(back[key], nx.Tensor)
        assert back[key].numpy().dtype == value.dtype
        np.testing.assert_array_equal(back[key].numpy(), value)


def test_flat_file_reads_into_pytorch(tmp_path):
    torch = pytest.importorskip("safetensors.torch")
    model = nn.Linear(3, 2)
    nx.save(model.state_dict(), tmp_path / "m.safetensors")
    loaded = torch.load_file(str(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(loaded["weight"].numpy(), model.weight.detach().numpy())


# ---- devices ---------------------------------------------------------------------------------

def _a_device():
    others = [d for d in nx.get_available_devices() if d.type.value != "cpu"]
    if not others:
        pytest.skip("no device besides the CPU is available here")
    return others[0]


def test_device_tensors_load_on_the_cpu_unless_mapped(tmp_path):
    device = _a_device()
    t = nx.Tensor(np.arange(5, dtype=np.float32)).to(device)
    path = tmp_path / "d.safetensors"
    nx.save({"t": t, "step": 1}, path)
    on_cpu = nx.load(path)["t"]
    assert on_cpu.device == nx.Device("cpu")
    np.testing.assert_array_equal(on_cpu.numpy(), np.arange(5, dtype=np.float32))
    for where in (device.name, device, {device.name: device}):
        back = nx.load(path, map_location=where)["t"]
        assert back.device == device
        np.testing.assert_array_equal(back.numpy(), np.arange(5, dtype=np.float32))
    assert nx.load(path, map_location={"cuda:0": "cpu"})["t"].device == nx.Device("cpu")


def test_cpu_tensors_map_to_a_device(tmp_path):
    device = _a_device()
    back = roundtrip({"t": nx.Tensor(np.ones(3, np.float32)), "k": 2}, tmp_path,
                     map_location=device)
    assert back["t"].device == device


def test_map_location_errors(tmp_path):
    path = tmp_path / "c.safetensors"
    nx.save({"t": nx.Tensor(np.ones(2, np.float32))}, path)
    with pytest.raises(ValueError, match="unknown device type 'tpu'"):
        nx.load(path, map_location="tpu")
    with pytest.raises(TypeError, match="map_location must be"):
        nx.load(path, map_location=3)


# ---- errors ----------------------------------------------------------------------------------

def test_unsupported_value_names_its_place_and_type(tmp_path):
    model = nn.Linear(2, 2)
    opt = optim.Adam(model.parameters())
    model(nx.Tensor.randn((1, 2))).sum().backward()
    opt.step()
    checkpoint = {"optimizer": opt.state_dict()}
    checkpoint["optimizer"]["state"][0]["foo"] = {1, 2}
    path = tmp_path / "bad.safetensors"
    with pytest.raises(TypeError, match=r"checkpoint\['optimizer'\]\['state'\]\[0\]\['foo'\] "
                                        r"of type builtins\.set"):
        nx.save(checkpoint, path)
    assert not path.exists() and os.listdir(tmp_path) == []   # nothing half-written


@pytest.mark.parametrize("bad, match", [
    ({"f": lambda: 0}, r"checkpoint\['f'\] of type builtins\.function"),
    ({"c": 1j}, r"checkpoint\['c'\] of type builtins\.complex"),
    ({"b": b"bytes"}, r"of type builtins\.bytes"),
    ([np.array(["a"])], r"checkpoint\[0\], a NumPy array of dtype <U1"),
    ([np.array([1j])], r"NumPy array of dtype complex128"),
    ({(1, 2): 3}, r"checkpoint has a key \(1, 2\) of type tuple"),
    ({True: 3}, r"key True of type bool"),
    ({"x": {1.5: 3}}, r"checkpoint\['x'\] has a key 1.5 of type float"),
    ({"d": __import__("collections").defaultdict(int)}, r"of type collections\.defaultdict"),
])
def test_unsupported_values_raise_type_error(tmp_path, bad, match):
    with pytest.raises(TypeError, match=match):
        nx.save(bad, tmp_path / "x.safetensors")


def test_cycles_are_refused(tmp_path):
    loop = {"a": []}
    loop["a"].append(loop)
    with pytest.raises(ValueError, match=r"checkpoint\['a'\]\[0\] contains itself"):
        nx.save(loop, tmp_path / "x.safetensors")
    shared = [1]
    back = roundtrip({"a": shared, "b": shared}, tmp_path)       # shared, not cyclic: fine
    assert back == {"a": [1], "b": [1]}


def test_failed_save_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "c.safetensors"
    nx.save({"epoch": 1}, path)
    with pytest.raises(TypeError):
        nx.save({"epoch": 2, "bad": object()}, path)
    assert nx.load(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["c.safetensors"]


def _write_with_header(path, header, arrays=None):
    safetensors.numpy.save_file(arrays or {"x": np.ones(2, np.float32)}, str(path),
                                metadata={"neurenix.checkpoint": header})


@pytest.mark.parametrize("header, match", [
    ("{not json", "its header is not JSON"),
    (json.dumps({"format": "other", "root": 1}), "does not describe a checkpoint"),
    (json.dumps({"format": "neurenix.checkpoint", "version": 99, "root": 1}),
     "format version 99"),
    (json.dumps({"format": "neurenix.checkpoint", "version": 1,
                 "root": {"type": "tensor", "key": "missing", "object": 0, "dtype": "float32",
                          "device": "cpu", "requires_grad": False, "parameter": False}}),
     "refers to a tensor 'missing'"),
    (json.dumps({"format": "neurenix.checkpoint", "version": 1,
                 "root": {"type": "tensor", "key": "x", "object": 0, "dtype": "int64",
                          "device": "cpu", "requires_grad": False, "parameter": False}}),
     "holds float32, the header says int64"),
    (json.dumps({"format": "neurenix.checkpoint", "version": 1,
                 "root": {"type": "pickle", "data": "..."}}), "unknown entry type 'pickle'"),
    (json.dumps({"format": "neurenix.checkpoint", "version": 1,
                 "root": {"type": "dict", "items": [[[1], 2]]}}), "neither str nor int"),
    (json.dumps({"format": "neurenix.checkpoint", "version": 1,
                 "root": {"type": "list"}}), "malformed 'list' entry"),
])
def test_damaged_headers_raise_value_error(tmp_path, header, match):
    path = tmp_path / "c.safetensors"
    _write_with_header(path, header)
    with pytest.raises(ValueError, match=f"is not a valid neurenix checkpoint: .*{match}"):
        nx.load(path)


@pytest.mark.parametrize("content, match", [
    (b"", "not a safetensors file"),
    (b"hello, world, this is text", "not a safetensors file"),
    (b"\x80\x04\x95" + b"\x00" * 40, "torch.save pickle, which neurenix never unpickles"),
    (b"PK\x03\x04" + b"\x00" * 40, "torch.save pickle"),
])
def test_non_safetensors_files_raise_value_error(tmp_path, content, match):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        nx.load(path)


def test_truncated_file_raises_value_error(tmp_path):
    path = tmp_path / "c.safetensors"
    nx.save({"w": nx.Tensor(np.ones((64, 64), np.float32)), "epoch": 3}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 100])
    with pytest.raises(ValueError, match="not a safetensors file"):
        nx.load(path)


def test_symbolic_tensors_are_refused_inside_a_compiled_function(tmp_path):
    layer = nn.Linear(2, 2)

    @nx.compile
    def forward(x):
        out = layer(x)
        nx.save({"out": out}, tmp_path / "x.safetensors")
        return out

    with pytest.raises(TypeError, match=r"checkpoint\['out'\] is a symbolic tensor"):
        forward(nx.Tensor(np.ones((1, 2), np.float32)))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        nx.load(tmp_path / "absent.safetensors")


# ---- optimizers and schedulers ---------------------------------------------------------------

OPTIMIZERS = [
    ("sgd_momentum", lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                          weight_decay=1e-3)),
    ("adam", lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True)),
    ("adamw", lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    ("adadelta", lambda ps: optim.Adadelta(ps, lr=1.0, rho=0.8)),
]


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (nx.Tensor(rng.standard_normal((16, 6)).astype(np.float32)),
            nx.Tensor(rng.standard_normal((16, 2)).astype(np.float32)))


def _model(init_seed=1):
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    rng = np.random.default_rng(init_seed)
    model.load_state_dict({k: rng.standard_normal(v.shape).astype(np.float32) * 0.5
                           for k, v in model.state_dict().items()})
    return model


def _eager_step(model, opt):
    criterion = nn.MSELoss()

    def step(x, y):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def _train(step, scheduler, x, y, n):
    losses = []
    for _ in range(n):
        losses.append(float(step(x, y).item()))
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(losses[-1])
        else:
            scheduler.step()
    return losses


@pytest.mark.parametrize("name, make", OPTIMIZERS, ids=[n for n, _ in OPTIMIZERS])
def test_optimizer_state_dict_roundtrips(tmp_path, name, make):
    model = _model()
    opt = make(model.parameters())
    scheduler = ExponentialLR(opt, gamma=0.9)
    _train(_eager_step(model, opt), scheduler, *_data(), 3)
    state = opt.state_dict()
    back = roundtrip({"optimizer": state, "scheduler": scheduler.state_dict()}, tmp_path)
    assert_same(state, back["optimizer"])
    fresh = make(_model(2).parameters())
    fresh.load_state_dict(back["optimizer"])
    assert_same(state, fresh.state_dict())
    fresh_scheduler = ExponentialLR(fresh, gamma=0.5)
    fresh_scheduler.load_state_dict(back["scheduler"])
    assert_same(scheduler.state_dict(), fresh_scheduler.state_dict())


def test_reduce_on_plateau_state_roundtrips(tmp_path):
    opt = optim.SGD(_model().parameters(), lr=0.1)
    scheduler = ReduceLROnPlateau(opt, mode="max", patience=0, min_lr=[1e-3])
    for metric in (1.0, 0.5, 0.5):
        scheduler.step(metric)
    back = roundtrip(scheduler.state_dict(), tmp_path)
    assert_same(scheduler.state_dict(), back)
    fresh = ReduceLROnPlateau(optim.SGD(_model().parameters(), lr=0.1), mode="max")
    fresh.load_state_dict(back)
    assert_same(scheduler.state_dict(), fresh.state_dict())
    assert fresh.mode_worse == -math.inf


def _resume_matches(tmp_path, make, scheduler_cls, compiled, total=8, at=3):
    """Train `total` steps straight, and `at` steps, checkpoint, reload into fresh objects and
    finish: the losses and final weights agree bitwise."""
    x, y = _data()
    make_scheduler = {StepLR: lambda o: StepLR(o, step_size=2, gamma=0.5),
                      ReduceLROnPlateau: lambda o: ReduceLROnPlateau(o, patience=0,
                                                                     factor=0.5)}[scheduler_cls]

    def setup(seed):
        model = _model(seed)
        opt = make(model.parameters())
        step = _eager_step(model, opt)
        return model, opt, make_scheduler(opt), (nx.compile(step) if compiled else step)

    model, opt, scheduler, step = setup(1)
    straight = _train(step, scheduler, x, y, total)
    final = {k: v.numpy().copy() for k, v in model.state_dict().items()}

    model, opt, scheduler, step = setup(1)
    first = _train(step, scheduler, x, y, at)
    path = tmp_path / "resume.safetensors"
    nx.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": scheduler.state_dict(), "step": at}, path)

    model, opt, scheduler, step = setup(7)                     # fresh, differently initialised
    checkpoint = nx.load(path)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    rest = _train(step, scheduler, x, y, total - checkpoint["step"])

    assert first + rest == straight
    assert len(set(straight)) > 1
    for key, value in model.state_dict().items():
        assert value.numpy().tobytes() == final[key].tobytes(), key
    if compiled:
        assert step.stats()["kernels"] > 0


@pytest.mark.parametrize("name, make", OPTIMIZERS, ids=[n for n, _ in OPTIMIZERS])
def test_resumed_training_follows_the_same_trajectory(tmp_path, name, make):
    _resume_matches(tmp_path, make, StepLR, compiled=False)


def test_resumed_training_with_reduce_on_plateau(tmp_path):
    _resume_matches(tmp_path, OPTIMIZERS[1][1], ReduceLROnPlateau, compiled=False)


@pytest.mark.parametrize("name, make", [OPTIMIZERS[0], OPTIMIZERS[1]],
                         ids=["sgd_momentum", "adam"])
def test_resumed_compiled_training_follows_the_same_trajectory(tmp_path, name, make):
    _resume_matches(tmp_path, make, StepLR, compiled=True)
