"""load_image_folder: formats, modes, cropping, bad files and bad paths."""

import hashlib
import warnings

import numpy as np
import pytest
from PIL import Image

from gantransfer_jax.data import folder, load_image_folder

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _stripes(width: int, height: int, horizontal: bool = True) -> np.ndarray:
  """Three equal bands red | green | blue (along the longer side)."""
  image = np.zeros((height, width, 3), np.uint8)
  bands = np.array_split(np.arange(width if horizontal else height), 3)
  for band, colour in zip(bands, (RED, GREEN, BLUE)):
    if horizontal:
      image[:, band] = colour
    else:
      image[band] = colour
  return image


def _digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def image_folder(tmp_path):
  """A folder of mixed formats and modes, one nested folder, a corrupt file and a note."""
  rng = np.random.default_rng(0)
  Image.fromarray(_stripes(60, 20)).save(tmp_path / "a_wide.png")
  Image.fromarray(_stripes(20, 60, horizontal=False)).save(tmp_path / "b_tall.bmp")
  Image.fromarray(np.full((30, 30), 77, np.uint8)).save(tmp_path / "c_grey.pgm")
  rgba = np.zeros((24, 24, 4), np.uint8)
  rgba[..., :3] = 10
  rgba[:, 12:, 3] = 255  # Left half transparent, right half opaque dark.
  Image.fromarray(rgba).save(tmp_path / "d_rgba.png")
  Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(tmp_path / "e_16bit.png")
  Image.fromarray(np.full((20, 20), 32896, np.uint16)).save(tmp_path / "f_16bit.tif")
  Image.fromarray(rng.integers(0, 255, (40, 50, 3), np.uint8)).save(tmp_path / "g.JPG")
  Image.fromarray(rng.integers(0, 255, (30, 30, 3), np.uint8)).convert("P").save(
      tmp_path / "h_palette.png")
  (tmp_path / "nested").mkdir()
  Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path / "nested" / "i.webp")
  (tmp_path / "z_corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
  (tmp_path / "notes.txt").write_text("not an image")
  return tmp_path


def test_loads_every_format_and_mode(image_folder):
  digests = {p: _digest(p) for p in folder.list_image_files(str(image_folder))}
  with pytest.warns(UserWarning, match=r"(?s)skipped 1 unreadable image file.*z_corrupt\.jpg"):
    images = load_image_folder(str(image_folder), 8)
  assert images.shape == (9, 8, 8, 3) and images.dtype == np.uint8
  wide, tall, grey, rgba, white16, mid16, _, palette, nested = images
  # Shorter side resized, centre cropped: only the middle (green) band remains
  # (Lanczos rings by a few levels near the cut bands).
  np.testing.assert_allclose(wide[:, 2:-2], np.broadcast_to(GREEN, (8, 4, 3)), atol=4)
  np.testing.assert_allclose(tall[2:-2], np.broadcast_to(GREEN, (4, 8, 3)), atol=4)
  np.testing.assert_array_equal(grey, 77)  # Greyscale replicated to 3 channels.
  # Transparent pixels composited onto white, opaque ones kept.
  np.testing.assert_allclose(rgba[:, :3], 255, atol=4)
  np.testing.assert_allclose(rgba[:, -3:], 10, atol=4)
  np.testing.assert_array_equal(white16, 255)  # 16 bit scaled to 8 bit.
  np.testing.assert_array_equal(mid16, 128)
  assert palette.std() > 0
  np.testing.assert_array_equal(nested, 200)
  # Nothing under the folder was modified.
  assert digests == {p: _digest(p) for p in digests}


def test_order_is_sorted_and_recursive_is_optional(image_folder):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    everything = load_image_folder(str(image_folder), 8)
    top_level = load_image_folder(str(image_folder), 8, recursive=False)
    again = load_image_folder(str(image_folder), 8)
  assert len(top_level) == len(everything) - 1
  np.testing.assert_array_equal(everything, again)
  files = folder.list_image_files(str(image_folder))
  assert files == sorted(files) and files[-1].endswith("z_corrupt.jpg")
  assert not any(f.endswith(".txt") for f in files)


def test_missing_empty_and_unreadable_paths_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_image_folder(str(tmp_path / "missing"), 8)
  with pytest.raises(ValueError, match="no image files"):
    load_image_folder(str(tmp_path), 8)
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match="not a folder"):
    load_image_folder(str(tmp_path / "notes.txt"), 8)
  (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
  with pytest.raises(ValueError, match="(?s)none of the 1 image files.*bad.png"):
    load_image_folder(str(tmp_path), 8)
  with pytest.raises(ValueError, match="resolution"):
    load_image_folder(str(tmp_path), 0)


def test_fit_image_takes_arrays():
  np.testing.assert_array_equal(folder.fit_image(np.full((10, 20), 5, np.uint8), 4), 5)
  np.testing.assert_array_equal(folder.fit_image(np.full((10, 20, 1), 5, np.uint8), 4), 5)
  np.testing.assert_array_equal(folder.fit_image(np.full((8, 8), 65535, np.uint16), 4), 255)
  out = folder.fit_image(_stripes(30, 10), 5)
  assert out.shape == (5, 5, 3)
  np.testing.assert_allclose(out[:, 1:-1], np.broadcast_to(GREEN, (5, 3, 3)), atol=4)
  with pytest.raises(ValueError, match="uint8, uint16 or bool"):
    folder.fit_image(np.zeros((4, 4), np.float32), 4)
  with pytest.raises(ValueError, match="shape"):
    folder.fit_image(np.zeros((4, 4, 2), np.uint8), 4)


def _save(path, value: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)


def test_labelled_folder_classes_labels_and_skipped_files(tmp_path):
  # Classes sort by name as strings ('10' < '2'); deeper folders belong to their top one.
  _save(tmp_path / "2" / "a.png", 20)
  _save(tmp_path / "10" / "a.png", 100)
  _save(tmp_path / "10" / "sub" / "deep" / "b.png", 101)
  _save(tmp_path / "bird" / "a.png", 30)
  (tmp_path / "2" / "b_corrupt.png").write_bytes(b"\x89PNG broken")
  (tmp_path / "bird" / "notes.txt").write_text("not an image")
  (tmp_path / "empty").mkdir()  # No image: no class.
  with pytest.warns(UserWarning, match="b_corrupt.png"):
    images, labels, class_names = folder.load_labelled_image_folder(str(tmp_path), 4)
  assert class_names == ("10", "2", "bird")
  # The corrupt file's label is dropped with it: labels stay aligned with the images.
  np.testing.assert_array_equal(images[:, 0, 0, 0], [100, 101, 20, 30])
  np.testing.assert_array_equal(labels, [0, 0, 1, 2])
  assert labels.dtype == np.int32
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    np.testing.assert_array_equal(images, load_image_folder(str(tmp_path), 4))


def test_labelled_folder_rejects_loose_images_and_flat_folders(tmp_path):
  _save(tmp_path / "flat" / "a.png", 1)
  with pytest.raises(ValueError, match="has no class subfolders.*1 image file"):
    folder.load_labelled_image_folder(str(tmp_path / "flat"), 4)
  _save(tmp_path / "flat" / "cls" / "b.png", 2)
  with pytest.raises(ValueError, match=r"holds 1 image file\(s\) directly \(a.png\)") as e:
    folder.check_class_folders(str(tmp_path / "flat"))
  assert str(tmp_path / "flat") in str(e.value)
  (tmp_path / "only_empty" / "cls").mkdir(parents=True)
  with pytest.raises(ValueError, match="no image files"):
    folder.load_labelled_image_folder(str(tmp_path / "only_empty"), 4)
  with pytest.raises(FileNotFoundError):
    folder.load_labelled_image_folder(str(tmp_path / "missing"), 4)


def _load_within(seconds: float, load, *args):
  """Runs `load(*args)` in a daemon thread: a loader blocked on a FIFO fails, not hangs."""
  import threading  # pylint: disable=g-import-not-at-top
  result = {}

  def run():
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      try:
        result["value"] = load(*args)
      except Exception as error:  # pylint: disable=broad-except
        result["error"] = error
      result["warnings"] = [str(w.message) for w in caught]

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"{load.__name__} hung (opened a FIFO?)"
  if "error" in result:
    raise result["error"]
  return result["value"], result["warnings"]


def _folder_with_non_regular_files(root):
  """One real image, plus a dangling symlink, a looping symlink and a FIFO with image names."""
  import os  # pylint: disable=g-import-not-at-top
  root.mkdir()
  _save(root / "a.png", 100)
  os.symlink(root / "gone.png", root / "b_dangling.png")
  os.symlink(root / "c_loop.png", root / "c_loop.png")
  os.mkfifo(root / "d_fifo.png")
  os.symlink(root / "a.png", root / "e_link.png")  # A link to a regular file is read.
  return root


def test_non_regular_files_are_skipped_with_a_warning_naming_them(tmp_path):
  root = _folder_with_non_regular_files(tmp_path / "odd")
  images, caught = _load_within(30, load_image_folder, str(root), 8)
  assert images.shape == (2, 8, 8, 3) and (images == 100).all()
  (message,) = [m for m in caught if "not regular files" in m]
  for name in ("b_dangling.png", "c_loop.png", "d_fifo.png"):
    assert name in message
  assert "e_link.png" not in message
