"""A tensor's storage: the NumPy array itself on the CPU, a `DeviceBuffer` elsewhere, read and
replaced only through `Tensor._host()` / `Tensor._set_host()` (see runtime/buffer.py)."""
from __future__ import annotations

import numpy as np

import neurenix
from neurenix import Tensor


class FakeBuffer:
    """A device buffer kept in a private array: every read and write is a copy."""

    def __init__(self, array: np.ndarray, device: str) -> None:
        self._values = np.array(array, copy=True)
        self.shape, self.dtype, self.device = self._values.shape, self._values.dtype, device

    def to_host(self) -> np.ndarray:
        return self._values.copy()

    @classmethod
    def from_host(cls, array: np.ndarray, device: str) -> FakeBuffer:
        return cls(array, device)


def _on_device(values) -> Tensor:
    return Tensor._wrap(FakeBuffer(np.asarray(values, np.float32), "fake"))


def test_cpu_storage_is_the_array_itself():
    t = neurenix.tensor([1.0, 2.0])
    assert type(t._data) is np.ndarray
    assert t._host() is t._data and t.numpy() is t._data


def test_values_of_a_device_buffer_are_read_through_the_accessor():
    t = _on_device([1.0, 2.0, 3.0])
    assert t.shape == (3,)
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0, 3.0])
    assert t.tolist() == [1.0, 2.0, 3.0]
    assert "1., 2., 3." in repr(t)
    assert _on_device([4.0]).item() == 4.0
    np.testing.assert_array_equal((t + t).numpy(), [2.0, 4.0, 6.0])


def test_writes_to_a_device_buffer_are_stored_back_on_its_device():
    t = _on_device([1.0, 2.0, 3.0])
    t.copy_(neurenix.tensor([7.0, 8.0, 9.0]))
    assert isinstance(t._data, FakeBuffer)
    np.testing.assert_array_equal(t.numpy(), [7.0, 8.0, 9.0])
    with neurenix.no_grad():
        t += 1
        t[0] = 0.0
    assert isinstance(t._data, FakeBuffer)
    np.testing.assert_array_equal(t.numpy(), [0.0, 9.0, 10.0])
