"""Real low-shot image sources."""

from gantransfer_jax.data.folder import IMAGE_EXTENSIONS, list_image_files, load_image_folder

__all__ = ["IMAGE_EXTENSIONS", "list_image_files", "load_image_folder"]
