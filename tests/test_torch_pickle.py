"""The torch-free reader of torch files: hand-built files always, torch-written ones when
torch is installed."""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from gantransfer_jax.metrics import torch_pickle

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


def test_unknown_globals_are_inert(tmp_path):
  marker = tmp_path / "pwned"
  payload = b"\x80\x02" + _call("os", "system", _str(f"touch {marker}")) + b"."
  data = io.BytesIO()
  with zipfile.ZipFile(data, "w") as archive:
    archive.writestr("archive/data.pkl", payload)
  loaded = torch_pickle.load(data.getvalue())
  assert isinstance(loaded, torch_pickle.PickledObject)
  assert loaded.qualified_name == "os.system"
  assert not marker.exists()


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
