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
`collections.OrderedDict` and validating stand-ins for numpy's array reconstruction
resolve to callables. The classes that real torch files name (TorchScript's `__torch__.*`,
torch's own `torch.nn.modules.*`, StyleGAN2-ADA's persistent objects, `argparse.Namespace`,
`dnnlib.EasyDict`) become inert `PickledObject`s that record their arguments and state,
so nothing named by the file is imported or run; any other global is an error that names
it.

The file is untrusted input, so nothing it declares is believed before it is checked:
every tensor view must lie inside its storage (non-negative offset, sizes and strides,
highest reachable element inside), a storage's bytes must be exactly what its tensors'
pickle declares, zip members' declared sizes are checked before they are read (and no
more is read), and one load may allocate at most `_MAX_AMPLIFICATION` times the file's
size plus `_ALLOWANCE_BYTES` (zip members, expanded views, copies of shared storages).
Every failure is a `TorchPickleError` (a ValueError) with a one-line reason.

Typical use:

  arrays = torch_pickle.load_arrays('model.pth')   # {'conv.weight': np.ndarray, ...}
  obj = torch_pickle.load('checkpoint.pt')         # the pickled structure, numpy leaves
"""

from __future__ import annotations

import codecs
import collections
import io
import math
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from gantransfer_jax import errors

__all__ = [
    "PickledObject",
    "TorchPickleError",
    "flatten_arrays",
    "load",
    "load_arrays",
    "read_zip_member",
]

PathOrFile = str | os.PathLike | bytes | BinaryIO

# `torch.serialization.MAGIC_NUMBER` and `PROTOCOL_VERSION` of the legacy format.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


# torch writes zip members uncompressed and one copy of each storage, so a real file
# decompresses and materializes to about its own size. 8x leaves room for views that
# share a storage and re-zipped (deflated) archives; the allowance for small files with
# legitimately expanded buffers. Beyond that a file is a zip bomb or a stride-0 expansion.
_MAX_AMPLIFICATION = 8
_ALLOWANCE_BYTES = 64 << 20
# A view with more elements than its storage repeats elements: torch writes those for
# `expand` (stride 0) and `unfold` (overlapping windows) results, which in checkpoints
# are small buffers. A few bytes expanding to GiBs is an attack, not a checkpoint.
_MAX_REPEATED_BYTES = 64 << 20
_MAX_DIMS = 64  # numpy's limit.


class TorchPickleError(errors.UserError, ValueError):
  """The file is not a torch file this reader understands, or it is malformed."""


class _Budget:
  """Bytes one load may still allocate (decompressed members, materialized arrays)."""

  def __init__(self, input_bytes: int):
    self.limit = _MAX_AMPLIFICATION * input_bytes + _ALLOWANCE_BYTES
    self.spent = 0

  def spend(self, num_bytes: int, what: str) -> None:
    self.spent += num_bytes
    if self.spent > self.limit:
      raise TorchPickleError(
          f"{what} would bring this load to {self.spent} bytes, more than "
          f"{_MAX_AMPLIFICATION} x the file's size + {_ALLOWANCE_BYTES}: a zip bomb or "
          "expanded view, not a checkpoint")


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
      start, stop = self.byte_offset, self.byte_offset + self.numel * self.dtype.itemsize
      base = self.base.raw_bytes()
      if start < 0 or stop > len(base):
        raise TorchPickleError(f"a storage view of bytes [{start}, {stop}) overruns its "
                               f"base storage of {len(base)} bytes")
      raw = base[start:stop]
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


def _ints(values, what: str) -> tuple[int, ...]:
  if not isinstance(values, (tuple, list)) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in values):
    raise TorchPickleError(f"tensor {what} must be a sequence of ints, got {values!r:.80}")
  return tuple(values)


def _check_view(size: tuple[int, ...], stride: tuple[int, ...], offset: int,
                storage_numel: int, itemsize: int) -> None:
  """Raises unless every element a strided view reaches lies inside its storage.

  torch never writes negative strides (it cannot represent them), so with non-negative
  strides the lowest reachable element is `offset` and the highest
  offset + sum((n - 1) * s); a view repeating elements must stay small (see above).
  """
  described = f"tensor of size {size}, stride {stride}, offset {offset}"
  if len(size) != len(stride) or len(size) > _MAX_DIMS:
    raise TorchPickleError(f"{described}: sizes and strides must pair up, at most "
                           f"{_MAX_DIMS} dimensions")
  if offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
    raise TorchPickleError(f"{described}: negative offset, size or stride")
  numel = math.prod(size)
  if numel == 0:
    return
  highest = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if highest >= storage_numel:
    raise TorchPickleError(f"{described} overruns its storage of {storage_numel} elements")
  if numel > storage_numel and numel * itemsize > _MAX_REPEATED_BYTES:
    raise TorchPickleError(
        f"{described} repeats the {storage_numel} elements of its storage into "
        f"{numel * itemsize} bytes (at most {_MAX_REPEATED_BYTES} allowed)")


class _PendingTensor:
  """A tensor whose storage bytes may not have been read yet."""

  def __init__(self, storage: _Storage, offset: int, size, stride, dtype: np.dtype | None = None):
    if not isinstance(storage, _Storage):
      raise TorchPickleError(f"tensor storage has unexpected type {type(storage).__name__}")
    if not (isinstance(offset, int) and not isinstance(offset, bool)):
      raise TorchPickleError(f"tensor offset must be an int, got {offset!r:.80}")
    self.storage = storage
    self.offset = offset
    self.size = _ints(size, "size")
    self.stride = _ints(stride, "stride")
    self.dtype = storage.dtype if dtype is None else dtype
    # Checked here against the declared storage size (a cheap early error), and again
    # against the bytes actually read when materialized.
    if self.dtype.itemsize:
      declared = storage.numel * storage.dtype.itemsize // self.dtype.itemsize
      _check_view(self.size, self.stride, self.offset, declared, self.dtype.itemsize)

  def materialize(self, budget: _Budget) -> np.ndarray:
    flat = self.storage.elements(self.dtype)
    _check_view(self.size, self.stride, self.offset, len(flat), self.dtype.itemsize)
    if any(n == 0 for n in self.size):
      return np.zeros(self.size, self.dtype)
    budget.spend(math.prod(self.size) * self.dtype.itemsize, f"a tensor of size {self.size}")
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
  if not isinstance(dtype, np.dtype) or dtype not in _known_dtypes():
    raise TorchPickleError(f"tensor dtype {dtype!r:.80} is not a torch dtype")
  return _PendingTensor(storage, storage_offset, size, stride, dtype=dtype)


def _known_dtypes() -> set[np.dtype]:
  return {make() for make in _STORAGE_DTYPES.values()}


def _pickled_bytes(text: str = "", encoding: str = "latin1") -> bytes:
  """How protocol 2 pickles bytes (`_codecs.encode(text, 'latin1')`, `bytes()` when
  empty); never `bytes(n)`, which would allocate whatever n the file says."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise TorchPickleError("bytes pickled in an unexpected form")
  return codecs.encode(text, "latin1")


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
    ("_codecs", "encode"): lambda text, encoding="latin1": _pickled_bytes(text, encoding),
    ("builtins", "bytes"): lambda *args: _pickled_bytes(*args),
    ("__builtin__", "bytes"): lambda *args: _pickled_bytes(*args),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): set,
}


# numpy's own array pickling, rebuilt by stand-ins that check what numpy does not:
# numpy's `ndarray.__setstate__` crashes the process on an object array whose element
# list is shorter than its shape, and `_reconstruct` allocates whatever shape it is given.
_NUMPY_DTYPE_NAME = re.compile(r"[biufcSUV]\d*|bool|float\d*|int\d*|uint\d*|complex\d*|"
                               r"str|bytes")


class _NumpyDtype:
  """What `numpy.dtype(name, align, copy)` unpickles to: a plain (not object, not
  structured) dtype, its byte order set by the pickled state."""

  def __init__(self, name, align=False, copy=True):
    del align, copy
    if not isinstance(name, str) or not _NUMPY_DTYPE_NAME.fullmatch(name):
      raise TorchPickleError(f"numpy dtype {name!r:.80} is not a plain numeric or string dtype")
    self.dtype = np.dtype(name)

  def __setstate__(self, state):
    # (version, byte order, subarray, names, fields, itemsize, alignment, flags).
    if not isinstance(state, tuple) or len(state) < 6 or any(
        part is not None for part in state[2:5]):
      raise TorchPickleError("structured or sub-array numpy dtypes are not supported")
    order = state[1]
    if order in ("<", ">"):
      self.dtype = self.dtype.newbyteorder(order)


def _plain_dtype(dtype) -> np.dtype:
  if isinstance(dtype, _NumpyDtype):
    return dtype.dtype
  raise TorchPickleError(f"numpy data with dtype {dtype!r:.80}: expected a pickled numpy dtype")


def _array_from_bytes(raw, dtype, shape, fortran_order: bool) -> np.ndarray:
  if isinstance(raw, str):  # Python 2 pickles: bytes as latin-1 text.
    raw = raw.encode("latin1")
  shape = _ints(shape, "shape")
  if not isinstance(raw, (bytes, bytearray)) or min(shape, default=0) < 0 or len(
      raw) != math.prod(shape) * dtype.itemsize:
    raise TorchPickleError(f"numpy array of shape {shape} and dtype {dtype}: its data does "
                           "not hold exactly that many bytes")
  flat = np.frombuffer(bytes(raw), dtype)
  return flat.reshape(shape, order="F" if fortran_order else "C").copy()


class _NumpyArray:
  """What `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` unpickles to; the
  pickled state (version, shape, dtype, fortran order, bytes) fills in `.array`."""

  def __init__(self, cls, shape, dtype_code):
    del dtype_code
    if cls is not _NdarrayName or tuple(shape) != (0,):
      raise TorchPickleError("numpy array reconstruction with unexpected arguments")
    self.array = np.zeros(0)

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      raise TorchPickleError("numpy array state is not (version, shape, dtype, order, data)")
    shape, dtype, fortran_order, raw = state[-4:]
    self.array = _array_from_bytes(raw, _plain_dtype(dtype), shape, bool(fortran_order))


class _NdarrayName:
  """What `numpy.ndarray` unpickles to: only ever an argument of `_reconstruct` (the real
  class, called by the pickle, would allocate whatever shape the file says)."""


def _numpy_scalar(dtype, raw):
  dtype = _plain_dtype(dtype)
  return _array_from_bytes(raw, dtype, (), False)[()]


def _numpy_frombuffer(buffer, dtype, shape, order):  # Protocol 5, in-band buffers.
  return _array_from_bytes(buffer, _plain_dtype(dtype), shape, order == "F")


def _numpy_global(module: str, name: str):
  """Stand-ins for numpy's array pickling, under old and new module names."""
  if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    return {"_reconstruct": _NumpyArray, "scalar": _numpy_scalar}.get(name)
  if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
    return _numpy_frombuffer
  if module == "numpy" and name == "dtype":
    return _NumpyDtype
  if module == "numpy" and name == "ndarray":
    return _NdarrayName
  return None


# ---- Inert stand-ins for the classes real torch files name ------------------------------

# TorchScript's classes (compiled from the archive's own code, module `__torch__...`) and
# torch's module classes in whole pickled modules.
_INERT_MODULE_PREFIXES = ("__torch__.", "torch.nn.modules.")
_INERT_GLOBALS = frozenset({
    ("__torch__", "*"),
    ("torch", "Tensor"),  # `_rebuild_from_type_v2`'s type argument.
    ("torch.nn.parameter", "Parameter"),
    ("torch.nn.parameter", "Buffer"),
    ("torch_utils.persistence", "_reconstruct_persistent_obj"),  # StyleGAN2-ADA networks.
    ("dnnlib.util", "EasyDict"),
    ("dnnlib", "EasyDict"),
    ("argparse", "Namespace"),
})


def _is_inert(module: str, name: str) -> bool:
  return ((module, name) in _INERT_GLOBALS or (module, "*") in _INERT_GLOBALS
          or module.startswith(_INERT_MODULE_PREFIXES))


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
  """Resolves tensor-related globals to the rebuilders above, the classes real torch files
  name to inert stand-ins, and anything else to an error; `storage_loader` maps a
  persistent storage id to a `_Storage`."""

  def __init__(self, file, storage_loader: Callable[[tuple], Any], budget: _Budget):
    super().__init__(file, encoding="utf-8")
    self._storage_loader = storage_loader
    self._budget = budget

  def find_class(self, module: str, name: str):
    if (module, name) in _TORCH_FUNCTIONS:
      return _TORCH_FUNCTIONS[(module, name)]
    if (module, name) == ("torch.storage", "_load_from_bytes"):
      return lambda data: _load_from_bytes(data, self._budget)
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name]())
    if module == "torch" and name in _TORCH_DTYPES:
      return _TORCH_DTYPES[name]()
    if module.startswith("numpy"):
      found = _numpy_global(module, name)
      if found is not None:
        return found
    if _is_inert(module, name):
      return _opaque_class(module, name)
    raise TorchPickleError(
        f"the file names {module}.{name}, which this reader does not know (it reads "
        "tensors, containers and torch's own module classes); if you trust the file, "
        "load it with torch and re-save its state_dict()")

  def persistent_load(self, pid):
    return self._storage_loader(pid)


def _storage_dtype(storage_type) -> np.dtype:
  if isinstance(storage_type, _StorageType):
    return storage_type.dtype
  if isinstance(storage_type, np.dtype):
    return storage_type
  raise TorchPickleError(f"unknown storage type {storage_type!r:.80}")


def _count(value, what: str) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise TorchPickleError(f"{what} must be a non-negative int, got {value!r:.80}")
  return value


def _storage_id(pid, length: int) -> tuple:
  if not isinstance(pid, tuple) or len(pid) < length:
    raise TorchPickleError(f"unsupported persistent id {pid!r:.80}")
  return tuple(_decode(v) for v in pid)


# ---- The two container formats ----------------------------------------------------------


def read_zip_member(archive: zipfile.ZipFile, name: str, archive_bytes: int, *,
                    expected_size: int | None = None, budget: _Budget | None = None) -> bytes:
  """A member's bytes, its declared size checked before anything is decompressed.

  Args:
    archive: an open zip file.
    name: the member.
    archive_bytes: the archive's size: a member may declare at most
      `_MAX_AMPLIFICATION` times that (a zip bomb declares far more).
    expected_size: the exact size the member must declare, when known.
    budget: charged with the member's size.

  Raises:
    TorchPickleError: the member is missing, declares a wrong or too large size, or
      does not decompress to what it declares.
  """
  try:
    info = archive.getinfo(name)
  except KeyError:
    raise TorchPickleError(f"the archive has no member {name!r}") from None
  if expected_size is not None and info.file_size != expected_size:
    raise TorchPickleError(f"archive member {name!r} declares {info.file_size} bytes, its "
                           f"tensors need exactly {expected_size}")
  if info.file_size > _MAX_AMPLIFICATION * archive_bytes:
    raise TorchPickleError(
        f"archive member {name!r} declares {info.file_size} bytes, more than "
        f"{_MAX_AMPLIFICATION} x the archive's {archive_bytes}: a zip bomb, not a checkpoint")
  if budget is not None:
    budget.spend(info.file_size, f"archive member {name!r}")
  try:
    with archive.open(info) as f:
      data = f.read(info.file_size)  # Never more than declared.
  except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError,
          OSError) as error:
    raise TorchPickleError(f"archive member {name!r} is unreadable: {error}") from error
  if len(data) != info.file_size:
    raise TorchPickleError(f"archive member {name!r} holds {len(data)} bytes, it declares "
                           f"{info.file_size}")
  return data


def _zip_root(names: list[str]) -> str:
  """The folder holding data.pkl (torch names it after the file, e.g. 'archive/')."""
  roots = [n[:-len("data.pkl")] for n in names
           if n.endswith("data.pkl") and n.count("/") <= 1]
  if not roots:
    raise TorchPickleError("zip file has no data.pkl: not a torch checkpoint")
  return sorted(roots, key=len)[0]


def _load_zip(archive: zipfile.ZipFile, archive_bytes: int, budget: _Budget) -> Any:
  root = _zip_root(archive.namelist())
  read = lambda name, **kwargs: read_zip_member(archive, name, archive_bytes, budget=budget,
                                                **kwargs)
  byteorder = "little"
  if f"{root}byteorder" in archive.namelist():
    byteorder = read(f"{root}byteorder").decode("ascii", "replace").strip()
  if byteorder not in ("little", "big"):
    raise TorchPickleError(f"unknown byte order {byteorder!r:.20}")
  storages: dict[str, _Storage] = {}

  def load_storage(pid):
    kind, storage_type, key, _location, numel = _storage_id(pid, 5)[:5]
    if kind != "storage" or not isinstance(key, str):
      raise TorchPickleError(f"unsupported persistent id {pid!r:.80}")
    dtype, numel = _storage_dtype(storage_type), _count(numel, "a storage's size")
    if key not in storages:
      storage = _Storage(dtype, numel)
      raw = np.frombuffer(read(f"{root}data/{key}", expected_size=numel * dtype.itemsize),
                          np.uint8)
      storage.raw = _to_native(raw, storage.dtype, byteorder)
      storages[key] = storage
    elif (storages[key].dtype, storages[key].numel) != (dtype, numel):
      raise TorchPickleError(f"storage {key!r} is declared twice, differently")
    return storages[key]

  return _RestrictedUnpickler(io.BytesIO(read(f"{root}data.pkl")), load_storage,
                              budget).load()


def _to_native(raw: np.ndarray, dtype: np.dtype, byteorder: str) -> np.ndarray:
  """Storage bytes in this machine's byte order (as uint8)."""
  native = "little" if np.little_endian else "big"
  if byteorder == native or dtype.itemsize == 1:
    return raw
  foreign = dtype.newbyteorder("<" if byteorder == "little" else ">")
  return raw.view(foreign).astype(dtype).view(np.uint8)


def _load_pickle_stream(stream: io.BytesIO, budget: _Budget) -> Any:
  """A legacy `torch.save` stream, or a plain pickle whose tensors carry their storages."""
  def plain(unpickle_from):
    return _RestrictedUnpickler(unpickle_from, _no_persistent_ids, budget).load()

  try:
    first = plain(stream)
  except TorchPickleError:
    raise
  except Exception as error:  # Not a pickle at all.
    raise TorchPickleError(f"not a torch file: {error}") from error
  if not (isinstance(first, int) and first == _LEGACY_MAGIC_NUMBER):
    # A plain pickle.dump of tensors (e.g. StyleGAN2-ADA's network pickles): each storage
    # was pickled inline as `torch.storage._load_from_bytes(<torch.save bytes>)`.
    return first
  protocol = plain(stream)
  if protocol != _LEGACY_PROTOCOL_VERSION:
    raise TorchPickleError(f"unsupported legacy protocol version {protocol!r:.20}")
  sys_info = plain(stream)
  if not isinstance(sys_info, dict):
    raise TorchPickleError("legacy torch file without its system info")
  byteorder = "little" if sys_info.get("little_endian", True) else "big"

  storages: dict[str, _Storage] = {}

  def load_storage(pid):
    kind = _storage_id(pid, 2)[0]
    if kind == "module":  # The class of a pickled nn.Module (with its source): unused.
      return pid[1]
    if kind != "storage":
      raise TorchPickleError(f"unsupported persistent id {pid!r:.80}")
    storage_type, root_key, _location, numel, view_metadata = _storage_id(pid, 6)[1:6]
    dtype, numel = _storage_dtype(storage_type), _count(numel, "a storage's size")
    if not isinstance(root_key, str):
      raise TorchPickleError(f"unsupported persistent id {pid!r:.80}")
    if root_key not in storages:
      storages[root_key] = _Storage(dtype, numel)
    elif (storages[root_key].dtype, storages[root_key].numel) != (dtype, numel):
      raise TorchPickleError(f"storage {root_key!r} is declared twice, differently")
    if view_metadata is None:
      return storages[root_key]
    # Pre-1.0 files pickle slices of a storage as views: (view key, byte offset, bytes).
    if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
      raise TorchPickleError(f"unsupported storage view {view_metadata!r:.80}")
    _view_key, byte_offset, view_bytes = view_metadata
    view = _Storage(dtype, _count(view_bytes, "a storage view's size") // dtype.itemsize)
    view.base = storages[root_key]
    view.byte_offset = _count(byte_offset, "a storage view's offset")
    return view

  result = _RestrictedUnpickler(stream, load_storage, budget).load()
  keys = plain(stream)
  if not isinstance(keys, list):
    raise TorchPickleError("legacy torch file without its list of storages")
  for key in keys:
    storage = storages.get(_decode(key))
    if storage is None or storage.raw is not None:
      raise TorchPickleError(f"legacy storage {key!r:.40} is unknown or listed twice")
    order = "<i8" if byteorder == "little" else ">i8"
    (numel,) = np.frombuffer(_read_exactly(stream, 8), order).tolist()
    if numel != storage.numel:
      raise TorchPickleError(f"legacy storage {key!r:.40} holds {numel} elements, its "
                             f"tensors declare {storage.numel}")
    raw = np.frombuffer(_read_exactly(stream, numel * storage.dtype.itemsize), np.uint8)
    storage.raw = _to_native(raw, storage.dtype, byteorder)
  return result


def _load_unmaterialized(data: bytes, budget: _Budget) -> Any:
  stream = io.BytesIO(data)
  if zipfile.is_zipfile(stream):
    stream.seek(0)
    try:
      archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
      raise TorchPickleError(f"unreadable zip file: {error}") from error
    with archive:
      return _load_zip(archive, len(data), budget)
  stream.seek(0)
  return _load_pickle_stream(stream, budget)


def _load_from_bytes(data: bytes, budget: _Budget) -> Any:
  """`torch.storage._load_from_bytes`: a storage pickled inline as a torch.save'd file."""
  if not isinstance(data, bytes):
    raise TorchPickleError(f"inline storage of type {type(data).__name__}, expected bytes")
  storage = _load_unmaterialized(data, budget)
  if not isinstance(storage, _Storage):
    raise TorchPickleError(f"inline storage bytes hold a {type(storage).__name__}")
  return storage


def _no_persistent_ids(pid):
  raise TorchPickleError(f"unexpected persistent id {pid!r:.80} in a header pickle")


def _read_exactly(stream: io.BytesIO, num_bytes: int) -> bytes:
  data = stream.read(num_bytes)
  if len(data) != num_bytes:
    raise TorchPickleError("file ends inside a storage: truncated download?")
  return data


# ---- Turning the unpickled graph into numpy ---------------------------------------------


def _materialize(obj: Any, memo: dict[int, Any], budget: _Budget) -> Any:
  """Replaces every pending tensor by its array, keeping shared references shared."""
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, _PendingTensor):
    result = memo[id(obj)] = obj.materialize(budget)
    return result
  if isinstance(obj, (_NumpyArray, _NumpyDtype)):
    result = memo[id(obj)] = obj.array if isinstance(obj, _NumpyArray) else obj.dtype
    return result
  if isinstance(obj, dict):
    memo[id(obj)] = obj  # Mutated in place so cycles through it terminate.
    for key, value in obj.items():
      obj[key] = _materialize(value, memo, budget)
    return obj
  if isinstance(obj, list):
    memo[id(obj)] = obj
    obj[:] = [_materialize(value, memo, budget) for value in obj]
    return obj
  if type(obj) is tuple:  # Immutable: rebuilt (tuples cannot close a cycle on their own).
    result = memo[id(obj)] = tuple(_materialize(value, memo, budget) for value in obj)
    return result
  if isinstance(obj, PickledObject):
    memo[id(obj)] = obj
    obj.args = _materialize(obj.args, memo, budget)
    obj.kwargs = _materialize(obj.kwargs, memo, budget)
    obj.state = _materialize(obj.state, memo, budget)
    obj.items = _materialize(obj.items, memo, budget)
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

  Raises:
    TorchPickleError: the file is not a torch file, is malformed or hostile (a view
      outside its storage, a zip bomb, an unknown global); the message says which.
  """
  data = _read_all(source)
  budget = _Budget(len(data))
  try:
    return _materialize(_load_unmaterialized(data, budget), {}, budget)
  except TorchPickleError:
    raise
  except RecursionError:
    raise TorchPickleError("the pickle nests too deeply") from None
  # Whatever else a malformed pickle makes the unpickler or a rebuilder raise.
  except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, KeyError, IndexError,
          ValueError, OverflowError, zipfile.BadZipFile, zlib.error) as error:
    raise TorchPickleError(f"malformed torch file ({type(error).__name__}: {error})") from error


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
