"""Read PyTorch checkpoints (`.pth`) into numpy arrays without importing torch.

A `.pth` file is a pickle whose tensors point at raw storages. Two layouts exist:

* the zip layout (torch >= 1.6 default): a zip archive holding `<name>/data.pkl` and one
  `<name>/data/<key>` file of raw bytes per storage;
* the legacy layout: five pickles in a row (magic number, protocol version, system info,
  the object, the storage keys) followed by each storage as an int64 element count and
  its raw bytes.

Both are read with a restricted unpickler: only the handful of globals a state dict needs
(`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, the typed storage classes)
may be named, so a hostile checkpoint cannot run code the way `torch.load` of old could.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pizzactl.errors import WeightsError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype ("bfloat16" is widened to float32 below)
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclass
class _Storage:
    """A storage named by the pickle; its bytes are attached once they have been read."""

    key: str
    dtype: str
    numel: int
    data: np.ndarray | None = None
    # legacy layout only: this storage is a view (offset, size in elements) of another one
    view_of: _Storage | None = None
    view_offset: int = 0

    def array(self) -> np.ndarray:
        if self.view_of is not None:
            return self.view_of.array()[self.view_offset : self.view_offset + self.numel]
        if self.data is None:
            raise WeightsError(f"Storage {self.key} has no data: the checkpoint is truncated.")
        return self.data


@dataclass
class _Tensor:
    """What `_rebuild_tensor_v2` describes; turned into a numpy array after the storages are read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        if not self.size:
            return np.array(flat[self.offset])
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=[s * flat.itemsize for s in self.stride],
            writeable=False,
        )
        return np.ascontiguousarray(view)


@dataclass(frozen=True)
class _StorageType:
    name: str


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None, legacy: bool = False):
        super().__init__(file)
        self.storages = {} if storages is None else storages
        self.legacy = legacy

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise WeightsError(
                f"Refusing to load {module}.{name} from a checkpoint.",
                hint="Only plain state dicts of tensors can be read; re-save the model with "
                "torch.save(model.state_dict(), path).",
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise WeightsError(f"Unsupported object in checkpoint: {pid!r}.")
        if self.legacy:
            storage_type, key, _location, numel, view_metadata = pid[1:6]
        else:
            storage_type, key, _location, numel = pid[1:5]
            view_metadata = None
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"Unsupported storage type in checkpoint: {storage_type!r}.")
        key = str(key)
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _Storage(key, STORAGE_DTYPES[storage_type.name], int(numel))
        if view_metadata is None:
            return root
        view_key, view_offset, view_size = view_metadata
        return _Storage(str(view_key), root.dtype, int(view_size), view_of=root, view_offset=int(view_offset))


def _decode(raw: bytes, dtype: str, numel: int, byteorder: str = "little") -> np.ndarray:
    if dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2" if byteorder == "little" else ">u2", count=numel)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    dt = np.dtype(dtype)
    if byteorder == "big" and dt.itemsize > 1:
        dt = dt.newbyteorder(">")
    return np.frombuffer(raw, dtype=dt, count=numel).astype(dt.newbyteorder("="), copy=False)


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise WeightsError(f"{path} is a zip file without data.pkl: not a PyTorch checkpoint.")
        prefix = pkl[: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pkl)))
        result = unpickler.load()
        for key, storage in unpickler.storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            storage.data = _decode(raw, storage.dtype, storage.numel, byteorder)
    return result


def _load_legacy(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            magic = _RestrictedUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise WeightsError(f"{path} is not a PyTorch checkpoint ({exc}).") from None
        if magic != LEGACY_MAGIC:
            raise WeightsError(f"{path} is not a PyTorch checkpoint (bad magic number).")
        protocol = _RestrictedUnpickler(f).load()
        if protocol != LEGACY_PROTOCOL:
            raise WeightsError(f"{path}: unsupported legacy PyTorch protocol {protocol}.")
        sys_info = _RestrictedUnpickler(f).load()
        byteorder = "little" if sys_info.get("little_endian", True) else "big"
        unpickler = _RestrictedUnpickler(f, legacy=True)
        result = unpickler.load()
        keys = _RestrictedUnpickler(f).load()
        for key in keys:
            storage = unpickler.storages[str(key)]
            header = f.read(8)
            if len(header) != 8:
                raise WeightsError(f"{path} is truncated (storage {key}).")
            (numel,) = struct.unpack("<q" if byteorder == "little" else ">q", header)
            nbytes = numel * _itemsize(storage.dtype)
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise WeightsError(f"{path} is truncated (storage {key}).")
            storage.data = _decode(raw, storage.dtype, numel, byteorder)
            storage.numel = numel
    return result


def checkpoint_format(path: str | Path) -> str:
    """'zip' or 'legacy': how the checkpoint at `path` is laid out."""
    return "zip" if zipfile.is_zipfile(path) else "legacy"


def load_state_dict(path: str | Path) -> collections.OrderedDict[str, np.ndarray]:
    """A PyTorch checkpoint -> {name: numpy array}, without torch. Accepts both layouts."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Checkpoint {path} does not exist.")
    result = _materialize(_load_zip(path) if checkpoint_format(path) == "zip" else _load_legacy(path))
    if isinstance(result, dict) and "state_dict" in result and isinstance(result["state_dict"], dict):
        result = result["state_dict"]
    if not isinstance(result, dict):
        raise WeightsError(f"{path} does not hold a state dict (found {type(result).__name__}).")
    return collections.OrderedDict(result)
