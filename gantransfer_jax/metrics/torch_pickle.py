"""A restricted, torch-free reader of files written by `torch.save` and TorchScript.

Two container formats exist in the wild:

* zip (torch >= 1.6 `torch.save`, and every TorchScript archive): `<root>/data.pkl` is
  a pickle whose tensors name their storage by key; the storage bytes lie raw in
  `<root>/data/<key>`, in the byte order given by `<root>/byteorder` (little if absent).
* legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): one stream of five
  pickles (magic number, protocol version, system info, the object, the sorted storage
  keys) followed by every storage as an int64 element count and its raw bytes.

A plain `pickle.dump` of tensors (StyleGAN2-ADA's network pickles) is read too: there each
storage is pickled inline as `torch.storage._load_from_bytes(<a legacy torch.save file>)`.

In both, a tensor is pickled as a call `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)` on a storage that names its element type (`torch.FloatStorage`, ...),
so a tensor is rebuilt here as a strided numpy view of its storage, then copied.

Unpickling is restricted: only the tensor-rebuild functions, storage and dtype names,
`collections.OrderedDict` and numpy's array reconstruction resolve to real callables.
Every other global (TorchScript classes, `nn.Module` subclasses, `argparse.Namespace`)
becomes an inert `PickledObject` that records its arguments and state, so nothing named
by the file is imported or run.

Typical use:

  arrays = torch_pickle.load_arrays('model.pth')   # {'conv.weight': np.ndarray, ...}
  obj = torch_pickle.load('checkpoint.pt')         # the pickled structure, numpy leaves
"""

from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "PickledObject",
    "TorchPickleError",
    "flatten_arrays",
    "load",
    "load_arrays",
]

PathOrFile = str | os.PathLike | bytes | BinaryIO

# `torch.serialization.MAGIC_NUMBER` and `PROTOCOL_VERSION` of the legacy format.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


class TorchPickleError(ValueError):
  """The file is not a torch file this reader understands."""


def _bfloat16() -> np.dtype:
  import ml_dtypes  # A dependency of jax; imported lazily since few files hold bf16.

  return np.dtype(ml_dtypes.bfloat16)


# Storage classes (`torch.FloatStorage`) and dtypes (`torch.float32`) by pickled name.
_STORAGE_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "DoubleStorage": lambda: np.dtype(np.float64),
    "FloatStorage": lambda: np.dtype(np.float32),
    "HalfStorage": lambda: np.dtype(np.float16),
    "BFloat16Storage": _bfloat16,
    "LongStorage": lambda: np.dtype(np.int64),
    "IntStorage": lambda: np.dtype(np.int32),
    "ShortStorage": lambda: np.dtype(np.int16),
    "CharStorage": lambda: np.dtype(np.int8),
    "ByteStorage": lambda: np.dtype(np.uint8),
    "BoolStorage": lambda: np.dtype(np.bool_),
    "ComplexFloatStorage": lambda: np.dtype(np.complex64),
    "ComplexDoubleStorage": lambda: np.dtype(np.complex128),
    "UntypedStorage": lambda: np.dtype(np.uint8),
}
_TORCH_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "float64": _STORAGE_DTYPES["DoubleStorage"],
    "double": _STORAGE_DTYPES["DoubleStorage"],
    "float32": _STORAGE_DTYPES["FloatStorage"],
    "float": _STORAGE_DTYPES["FloatStorage"],
    "float16": _STORAGE_DTYPES["HalfStorage"],
    "half": _STORAGE_DTYPES["HalfStorage"],
    "bfloat16": _bfloat16,
    "int64": _STORAGE_DTYPES["LongStorage"],
    "long": _STORAGE_DTYPES["LongStorage"],
    "int32": _STORAGE_DTYPES["IntStorage"],
    "int": _STORAGE_DTYPES["IntStorage"],
    "int16": _STORAGE_DTYPES["ShortStorage"],
    "short": _STORAGE_DTYPES["ShortStorage"],
    "int8": _STORAGE_DTYPES["CharStorage"],
    "uint8": _STORAGE_DTYPES["ByteStorage"],
    "bool": _STORAGE_DTYPES["BoolStorage"],
    "complex64": _STORAGE_DTYPES["ComplexFloatStorage"],
    "complex128": _STORAGE_DTYPES["ComplexDoubleStorage"],
}


class _StorageType:
  """What `torch.FloatStorage` and friends unpickle to: just an element type."""

  def __init__(self, dtype: np.dtype):
    self.dtype = dtype


class _Storage:
  """A flat buffer of elements; its bytes arrive at once (zip) or after the pickle (legacy)."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype = dtype
    self.numel = numel
    self.raw: np.ndarray | None = None  # uint8 bytes in native byte order
    self.base: _Storage | None = None  # legacy views: the storage this one slices
    self.byte_offset = 0

  def elements(self, dtype: np.dtype) -> np.ndarray:
    """The storage as a flat array of `dtype` (tensors may reinterpret untyped bytes)."""
    if self.base is not None:
      start = self.byte_offset
      raw = self.base.raw_bytes()[start:start + self.numel * self.dtype.itemsize]
    else:
      raw = self.raw_bytes()
    usable = len(raw) - len(raw) % dtype.itemsize
    return raw[:usable].view(dtype)

  def raw_bytes(self) -> np.ndarray:
    if self.base is not None:
      return self.base.raw_bytes()
    if self.raw is None:
      raise TorchPickleError("a tensor refers to a storage whose bytes are missing")
    return self.raw


class _PendingTensor:
  """A tensor whose storage bytes may not have been read yet."""

  def __init__(self, storage: _Storage, offset: int, size, stride, dtype: np.dtype | None = None):
    if not isinstance(storage, _Storage):
      raise TorchPickleError(f"tensor storage has unexpected type {type(storage).__name__}")
    self.storage = storage
    self.offset = int(offset)
    self.size = tuple(int(n) for n in size)
    self.stride = tuple(int(s) for s in stride)
    self.dtype = storage.dtype if dtype is None else dtype

  def materialize(self) -> np.ndarray:
    if any(n == 0 for n in self.size):
      return np.zeros(self.size, self.dtype)
    flat = self.storage.elements(self.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if self.offset < 0 or last >= len(flat):
      raise TorchPickleError(
          f"tensor of size {self.size}, stride {self.stride}, offset {self.offset} "
          f"overruns its storage of {len(flat)} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size,
        strides=tuple(s * self.dtype.itemsize for s in self.stride), writeable=False)
    # A copy: an owned, contiguous, writable array that no longer pins the whole storage.
    return np.array(view, copy=True)


# ---- Tensor rebuild functions, named as torch pickles them ------------------------------


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata  # Training state: irrelevant to the values.
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _PendingTensor(storage, storage_offset, size, stride, dtype=np.dtype(dtype))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  del new_type, state  # Tensor subclasses (e.g. Parameter) read as plain arrays.
  return func(*args)


_TORCH_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): lambda data: _load_from_bytes(data),  # Defined below.
    # TorchScript archives wrap typed lists in builders that are the identity here.
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_floatlist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, type_string: value,
    ("torch", "Size"): tuple,
    ("torch", "device"): lambda kind, index=None: kind if index is None else f"{kind}:{index}",
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # How protocol 2 pickles bytes.
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): set,
}


def _numpy_global(module: str, name: str):
  """numpy's own array pickling (safe constructors only), old and new module names."""
  try:
    from numpy._core import multiarray  # numpy >= 2; pickles may still say numpy.core.
  except ImportError:
    from numpy.core import multiarray

  if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
      "_reconstruct", "scalar"):
    return getattr(multiarray, name)
  if module == "numpy" and name in ("ndarray", "dtype"):
    return getattr(np, name)
  return None


# ---- Inert stand-ins for every other global ---------------------------------------------


class PickledObject:
  """An instance of a class the file names but this reader does not import.

  Attributes:
    qualified_name: 'module.Class' as pickled (e.g. '__torch__.inceptionv3.Conv2dLayer').
    args: constructor arguments (REDUCE / NEWOBJ).
    state: what the pickle passed to `__setstate__` (usually the instance `__dict__`).
    items: key/value pairs or elements set on dict- or list-like objects.
  """

  qualified_name = "?"

  def __new__(cls, *args, **kwargs):
    instance = super().__new__(cls)
    instance.args = args
    instance.kwargs = kwargs
    instance.state = None
    instance.items = {}
    return instance

  def __init__(self, *args, **kwargs):
    del args, kwargs  # Recorded by __new__.

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.items[key] = value

  def append(self, value):
    self.items[len(self.items)] = value

  def extend(self, values):
    for value in values:
      self.append(value)

  def __repr__(self) -> str:
    return f"PickledObject({self.qualified_name})"


_OPAQUE_CLASSES: dict[tuple[str, str], type] = {}


def _opaque_class(module: str, name: str) -> type:
  key = (module, name)
  if key not in _OPAQUE_CLASSES:
    _OPAQUE_CLASSES[key] = type(name, (PickledObject,), {
        "qualified_name": f"{module}.{name}",
        "__module__": module,
    })
  return _OPAQUE_CLASSES[key]


def _decode(value):
  return value.decode("ascii") if isinstance(value, bytes) else value


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves tensor-related globals to the rebuilders above and everything else to inert
  stand-ins; `storage_loader` maps a persistent storage id to a `_Storage`."""

  def __init__(self, file, storage_loader: Callable[[tuple], Any]):
    super().__init__(file, encoding="utf-8")
    self._storage_loader = storage_loader

  def find_class(self, module: str, name: str):
    if (module, name) in _TORCH_FUNCTIONS:
      return _TORCH_FUNCTIONS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name]())
    if module == "torch" and name in _TORCH_DTYPES:
      return _TORCH_DTYPES[name]()
    if module.startswith("numpy"):
      found = _numpy_global(module, name)
      if found is not None:
        return found
    return _opaque_class(module, name)

  def persistent_load(self, pid):
    return self._storage_loader(pid)


def _storage_dtype(storage_type) -> np.dtype:
  if isinstance(storage_type, _StorageType):
    return storage_type.dtype
  if isinstance(storage_type, np.dtype):
    return storage_type
  raise TorchPickleError(f"unknown storage type {storage_type!r}")


# ---- The two container formats ----------------------------------------------------------


def _zip_root(names: list[str]) -> str:
  """The folder holding data.pkl (torch names it after the file, e.g. 'archive/')."""
  roots = [n[:-len("data.pkl")] for n in names
           if n.endswith("data.pkl") and n.count("/") <= 1]
  if not roots:
    raise TorchPickleError("zip file has no data.pkl: not a torch checkpoint")
  return sorted(roots, key=len)[0]


def _load_zip(archive: zipfile.ZipFile) -> Any:
  root = _zip_root(archive.namelist())
  byteorder = "little"
  if f"{root}byteorder" in archive.namelist():
    byteorder = archive.read(f"{root}byteorder").decode("ascii").strip()
  storages: dict[str, _Storage] = {}

  def load_storage(pid):
    kind, storage_type, key, _location, numel = (_decode(v) for v in pid[:5])
    if kind != "storage":
      raise TorchPickleError(f"unsupported persistent id {pid!r}")
    if key not in storages:
      storage = _Storage(_storage_dtype(storage_type), int(numel))
      raw = np.frombuffer(archive.read(f"{root}data/{key}"), np.uint8)
      storage.raw = _to_native(raw, storage.dtype, byteorder)
      storages[key] = storage
    return storages[key]

  with archive.open(f"{root}data.pkl") as f:
    return _RestrictedUnpickler(io.BytesIO(f.read()), load_storage).load()


def _to_native(raw: np.ndarray, dtype: np.dtype, byteorder: str) -> np.ndarray:
  """Storage bytes in this machine's byte order (as uint8)."""
  native = "little" if np.little_endian else "big"
  if byteorder == native or dtype.itemsize == 1:
    return raw
  foreign = dtype.newbyteorder("<" if byteorder == "little" else ">")
  return raw.view(foreign).astype(dtype).view(np.uint8)


def _load_pickle_stream(stream: io.BytesIO) -> Any:
  """A legacy `torch.save` stream, or a plain pickle whose tensors carry their storages."""
  def plain(unpickle_from):
    return _RestrictedUnpickler(unpickle_from, _no_persistent_ids).load()

  try:
    first = plain(stream)
  except Exception as error:  # Not a pickle at all.
    raise TorchPickleError(f"not a torch file: {error}") from error
  if not (isinstance(first, int) and first == _LEGACY_MAGIC_NUMBER):
    # A plain pickle.dump of tensors (e.g. StyleGAN2-ADA's network pickles): each storage
    # was pickled inline as `torch.storage._load_from_bytes(<torch.save bytes>)`.
    return first
  protocol = plain(stream)
  if protocol != _LEGACY_PROTOCOL_VERSION:
    raise TorchPickleError(f"unsupported legacy protocol version {protocol}")
  sys_info = plain(stream)
  byteorder = "little" if sys_info.get("little_endian", True) else "big"

  storages: dict[str, _Storage] = {}

  def load_storage(pid):
    kind = _decode(pid[0])
    if kind == "module":  # The class of a pickled nn.Module (with its source): unused.
      return pid[1]
    if kind != "storage":
      raise TorchPickleError(f"unsupported persistent id {pid!r}")
    storage_type, root_key, _location, numel, view_metadata = pid[1:6]
    root_key = _decode(root_key)
    dtype = _storage_dtype(storage_type)
    if root_key not in storages:
      storages[root_key] = _Storage(dtype, int(numel))
    if view_metadata is None:
      return storages[root_key]
    # Pre-1.0 files pickle slices of a storage as views: (view key, byte offset, bytes).
    _view_key, byte_offset, view_bytes = view_metadata
    view = _Storage(dtype, int(view_bytes) // dtype.itemsize)
    view.base, view.byte_offset = storages[root_key], int(byte_offset)
    return view

  result = _RestrictedUnpickler(stream, load_storage).load()
  for key in plain(stream):
    storage = storages[_decode(key)]
    (numel,) = np.frombuffer(_read_exactly(stream, 8), "<i8" if byteorder == "little" else ">i8")
    raw = np.frombuffer(_read_exactly(stream, int(numel) * storage.dtype.itemsize), np.uint8)
    storage.raw = _to_native(raw, storage.dtype, byteorder)
  return result


def _load_unmaterialized(data: bytes) -> Any:
  stream = io.BytesIO(data)
  if zipfile.is_zipfile(stream):
    stream.seek(0)
    with zipfile.ZipFile(stream) as archive:
      return _load_zip(archive)
  stream.seek(0)
  return _load_pickle_stream(stream)


def _load_from_bytes(data: bytes) -> Any:
  """`torch.storage._load_from_bytes`: a storage pickled inline as a torch.save'd file."""
  storage = _load_unmaterialized(data)
  if not isinstance(storage, _Storage):
    raise TorchPickleError(f"inline storage bytes hold a {type(storage).__name__}")
  return storage


def _no_persistent_ids(pid):
  raise TorchPickleError(f"unexpected persistent id {pid!r} in a header pickle")


def _read_exactly(stream: io.BytesIO, num_bytes: int) -> bytes:
  data = stream.read(num_bytes)
  if len(data) != num_bytes:
    raise TorchPickleError("file ends inside a storage: truncated download?")
  return data


# ---- Turning the unpickled graph into numpy ---------------------------------------------


def _materialize(obj: Any, memo: dict[int, Any]) -> Any:
  """Replaces every pending tensor by its array, keeping shared references shared."""
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, _PendingTensor):
    result = memo[id(obj)] = obj.materialize()
    return result
  if isinstance(obj, dict):
    memo[id(obj)] = obj  # Mutated in place so cycles through it terminate.
    for key, value in obj.items():
      obj[key] = _materialize(value, memo)
    return obj
  if isinstance(obj, list):
    memo[id(obj)] = obj
    obj[:] = [_materialize(value, memo) for value in obj]
    return obj
  if type(obj) is tuple:  # Immutable: rebuilt (tuples cannot close a cycle on their own).
    result = memo[id(obj)] = tuple(_materialize(value, memo) for value in obj)
    return result
  if isinstance(obj, PickledObject):
    memo[id(obj)] = obj
    obj.args = _materialize(obj.args, memo)
    obj.state = _materialize(obj.state, memo)
    obj.items = _materialize(obj.items, memo)
    return obj
  return obj


def _read_all(source: PathOrFile) -> bytes:
  if isinstance(source, bytes):
    return source
  if isinstance(source, (str, os.PathLike)):
    with open(source, "rb") as f:
      return f.read()
  return source.read()


def load(source: PathOrFile) -> Any:
  """Reads a torch file (zip or legacy format, or a TorchScript archive).

  Args:
    source: a path, the file's bytes, or a binary file object.

  Returns:
    The pickled structure with every tensor as a numpy array; containers stay dicts
    (`OrderedDict`), lists and tuples; any other class is a `PickledObject`
    (a TorchScript module's attributes, parameters included, are in its `.state`).
  """
  return _materialize(_load_unmaterialized(_read_all(source)), {})


def flatten_arrays(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """Every array in a loaded structure, keyed by its '.'-joined path.

  Dict keys and sequence indices name the path, as do a `PickledObject`'s state and
  items, so a TorchScript module flattens to the keys of its `state_dict()`
  (e.g. 'net.layers.conv.weight') and a checkpoint {'generator': state_dict} to
  'generator.<parameter name>'. Non-array leaves are dropped.
  """
  flat: dict[str, np.ndarray] = {}
  seen: set[int] = set()
  # Temporaries built here must outlive the walk: a freed dict's id() can be reused by
  # the next one, which `seen` would then wrongly skip.
  alive: list[Any] = []

  def visit(value, path):
    if isinstance(value, np.ndarray):
      flat[path] = value
      return
    if id(value) in seen:  # Shared submodules are listed once, under their first path.
      return
    if isinstance(value, PickledObject):
      seen.add(id(value))
      entries = _module_entries(_instance_state(value))
      alive.append(entries)
      visit(entries, path)
      visit(value.items, path)
    elif isinstance(value, dict):
      seen.add(id(value))
      for key, item in value.items():
        visit(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
      seen.add(id(value))
      for index, item in enumerate(value):
        visit(item, f"{path}.{index}" if path else str(index))

  visit(obj, prefix)
  return flat


# StyleGAN2-ADA network pickles wrap every network in `torch_utils.persistence`: the
# pickle calls this function with meta = {'state': instance __dict__, ...}.
_PERSISTENT_OBJECT = "torch_utils.persistence._reconstruct_persistent_obj"


def _instance_state(obj: PickledObject) -> Any:
  """The instance __dict__ of a pickled object, persistent StyleGAN2-ADA objects included."""
  if (obj.state is None and obj.qualified_name == _PERSISTENT_OBJECT and obj.args
      and isinstance(obj.args[0], dict)):
    return obj.args[0].get("state")
  return obj.state


def _module_entries(state: Any) -> Any:
  """A whole pickled `nn.Module`'s state, reduced to what its `state_dict()` would hold."""
  if not (isinstance(state, dict) and "_parameters" in state and "_modules" in state):
    return state
  skipped = set(state.get("_non_persistent_buffers_set") or ())
  buffers = {k: v for k, v in (state.get("_buffers") or {}).items() if k not in skipped}
  return {**(state["_parameters"] or {}), **buffers, **(state["_modules"] or {})}


def load_arrays(source: PathOrFile) -> dict[str, np.ndarray]:
  """`flatten_arrays(load(source))`: a state dict of numpy arrays."""
  return flatten_arrays(load(source))
