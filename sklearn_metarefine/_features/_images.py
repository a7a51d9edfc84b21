"""Image inputs: arrays, PIL images and files, checked and read one batch at a time."""

import os
import threading
import warnings

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from sklearn.utils.validation import check_array

from .._utils import file_digest, is_whole, warn
from ._embedding import _resize


# warnings.catch_warnings sets the process's filters (and where warnings go)
# and restores those it found: two threads inside at once left one's settings
# in place for good. The lock covers opening a file only (its header, no
# decoding, no code of the caller's). A fork waits for it, so that a child
# never starts inside another thread's catch_warnings (its warnings would go
# to that thread's list), and gets a free one.
_OPENING = threading.Lock()


def _new_lock_after_fork():
    global _OPENING
    _OPENING = threading.Lock()


os.register_at_fork(
    before=lambda: _OPENING.acquire(),
    after_in_parent=lambda: _OPENING.release(),
    after_in_child=_new_lock_after_fork,
)


def _open(path, named):
    """``Image.open(path)``, Pillow's warnings of it (of a very large image)
    given again with the file's name in front (``named``), or dropped (a
    check before the reading, which repeats them)."""
    with _OPENING, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = Image.open(path)
    if named:
        try:
            for warning in caught:
                warn(f"{os.fspath(path)}: {warning.message}", warning.category)
        except BaseException:  # a filter made one an error
            image.close()
            raise
    return image


def _is_uint16(dtype):
    """Whether ``dtype`` holds 16-bit unsigned pixels, in either byte order
    (a big-endian 16-bit TIFF decodes to ``>u2``, which is not ``np.uint16``)."""
    return dtype.kind == "u" and dtype.itemsize == 2


def _check_pixel_range(values, where):
    if values.size == 0:
        raise ValueError(f"{where} is an empty image.")
    if _is_uint16(values.dtype):
        return  # every value is a 16-bit intensity
    if values.dtype.kind in "ui":
        low, high, limit = values.min(), values.max(), 255
    else:
        if not np.isfinite(values).all():
            raise ValueError(f"{where} contains NaN or infinity.")
        low, high, limit = values.min(), values.max(), 1.0
    if low < 0 or high > limit:
        raise ValueError(
            f"{where} has pixel values in [{low}, {high}]; expected integers in "
            "[0, 255], uint16 or floats in [0, 1]. Rescale it (e.g. divide 8-bit "
            "data by 255) or pass uint8 (or uint16 for 16-bit data)."
        )


def _check_channels(
    n_channels, where, *, images=None, channels_first="use np.moveaxis(X, 1, -1)"
):
    """Refuse a channel count other than 1 and 3; ``images`` names the
    channels-last array the fix slices (``where`` by default)."""
    images = where if images is None else images
    if n_channels not in (1, 3):
        if n_channels == 4:
            fix = f"For RGBA images drop the alpha channel, e.g. {images}[..., :3]"
        elif n_channels == 2:
            fix = f"For gray images with alpha keep the gray, e.g. {images}[..., :1]"
        else:
            fix = f"For channels-first data {channels_first}"
        raise ValueError(
            f"{where} has {n_channels} channels in its last axis; expected 1 (gray) "
            f"or 3 (RGB), channels last. {fix}."
        )


# The largest value of a 16-bit pixel: Pillow decodes 16-bit PNG and TIFF
# files into the modes "I;16*" or "I" (32-bit integers).
_MAX_16BIT = 65535


class _UnreadableImage(ValueError):
    """An image whose pixels cannot be read without guessing; the message says why."""


def _check_one_image(image, where):
    """Refuse a PIL image that is empty or holds several pages."""
    if image.width == 0 or image.height == 0:
        raise _UnreadableImage(f"{where} is an empty image.")
    n_frames = getattr(image, "n_frames", 1)
    # A camera's JPEG (MPO) holds previews after its image, not pages.
    if n_frames > 1 and image.format != "MPO":
        # Pillow would give the first page alone, and the others would pass
        # unseen.
        raise _UnreadableImage(
            f"{where} holds {n_frames} images (pages or frames); one image is "
            "read per file. Save each page as a file of its own."
        )


def _pil_to_array(image, where, *, upright=False):
    """The pixels of a PIL image as uint8, or floats in [0, 1]; with
    ``upright``, turned by its EXIF orientation first (image files).

    8-bit modes are converted to RGB by Pillow (alpha dropped, palettes and
    other colour spaces mapped to RGB); 16-bit modes and 32-bit integer images
    whose values fit in 16 bits are divided by 65535 (in-memory 32-bit images
    whose values all fit in 8 bits are refused as ambiguous); float images
    (mode F) must hold values in [0, 1]. Anything else is refused, never
    clipped.
    """
    _check_one_image(image, where)
    decoded = image.format is not None  # lost by the turn upright
    if upright:
        image = _upright(image)
    mode = image.mode
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / _MAX_16BIT
    if mode in ("I", "F"):
        values = np.asarray(image)
        low, high = values.min(), values.max()
        if mode == "I" and not decoded and 0 <= low and high <= 255:
            # Not decoded from a file: 8-bit values in 32-bit integers, or a
            # dark 16-bit image? The array would be read as 8-bit, a file as
            # 16-bit; neither guess is safe.
            raise _UnreadableImage(
                f"{where} has PIL mode 'I' (32-bit integers) with values in "
                f"[{low}, {high}]: 8-bit intensities or a dark 16-bit image? "
                "Convert it to mode 'L' (8-bit) or 'I;16' (16-bit) first."
            )
        if mode == "I" and 0 <= low and high <= _MAX_16BIT:
            return values.astype(np.float32) / _MAX_16BIT
        finite = np.isfinite(values)
        if not finite.all():  # rescaling keeps them: not a range to advise on
            n = int(np.sum(~finite))
            raise _UnreadableImage(
                f"{where} has PIL mode 'F' (32-bit floats) and {n} "
                f"{'pixel' if n == 1 else 'pixels'} NaN or infinite. Replace "
                "them before passing the image."
            )
        if mode == "F" and 0 <= low and high <= 1:
            return values.astype(np.float32)
        raise _UnreadableImage(_mode_message(where, mode, low, high))
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError:
        try:
            # Pillow converts premultiplied modes through their plain
            # counterparts only: RGBa through RGBA, La through LA.
            plain = "LA" if mode == "La" else "RGBA"
            return np.asarray(image.convert(plain).convert("RGB"))
        except ValueError as error:
            raise _UnreadableImage(
                f"{where} has PIL mode {mode!r}, which cannot be converted to "
                f"RGB ({error}). Convert it to RGB or L (8-bit gray) first."
            ) from None


def _mode_message(where, mode, low, high):
    if mode == "I":
        return (
            f"{where} has PIL mode 'I' (32-bit integers) with values in "
            f"[{low}, {high}]; integer images are read by their bit depth, as "
            "8-bit or 16-bit (0 to 65535) intensities, and these values fit "
            "neither. Convert it to 16 bits, or pass the pixels as a float "
            "array scaled to [0, 1]."
        )
    return (
        f"{where} has PIL mode 'F' (32-bit floats) with values in [{low}, "
        f"{high}]; float images are read as intensities in [0, 1], which these "
        "values are not. Rescale it to [0, 1] (e.g. divide 16-bit data by "
        "65535), or save it as 8 or 16 bits."
    )


# EXIF orientations that turn the stored image a quarter turn: its height and
# width swap on screen.
_QUARTER_TURNS = (5, 6, 7, 8)


def _upright(image):
    """A decoded image file as viewers show it: turned by its EXIF orientation
    (cameras store portrait photographs sideways and say so in the tag)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # an unreadable tag: the stored pixels as they are
        return image


def _upright_size(image):
    """``(height, width)`` of an opened image file once turned upright."""
    width, height = image.size
    try:
        turned = image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
    except Exception:
        turned = False
    if turned and not _turned_on_opening(image):
        return width, height
    return height, width


def _turned_on_opening(image):
    """Whether Pillow gives the upright size on opening already: its TIFF
    reader does (Pillow 13), where its other readers give the stored size."""
    tags = getattr(image, "tag_v2", None)  # TIFF tags: the stored width, length
    if tags is None:
        return False
    return tuple(image.size) != (tags.get(256), tags.get(257))


def _missing_file(path, index):
    return f"X[{index}]: image file {os.fspath(path)!r} not found."


def _directory(path, index=None):
    where = "X" if index is None else f"X[{index}]"
    return (
        f"{where}: {os.fspath(path)!r} is a directory, not an image file; "
        "pass the image files in it, e.g. sorted(Path(folder).glob('*.png'))."
    )


def decode_file(path, where):
    """The pixels of the image file ``path`` (decoded here, so that a
    truncated file fails in the caller's ``try``), turned upright."""
    with _open(path, named=True) as image:
        image.load()
        return _pil_to_array(image, where, upright=True)


def check_file_header(path, where):
    """Open the image file ``path`` without decoding its pixels, and refuse it
    as ``decode_file`` would for what its header shows."""
    with _open(path, named=False) as image:
        _check_one_image(image, where)


def _read_file(path, index):
    """The pixels of an image file, with errors that name it."""
    where = f"X[{index}]: image file {os.fspath(path)!r}"
    try:
        return decode_file(path, where)
    except FileNotFoundError as error:
        raise FileNotFoundError(_missing_file(path, index)) from error
    except IsADirectoryError as error:
        raise IsADirectoryError(_directory(path, index)) from error
    except (_UnreadableImage, Warning):  # a warning a filter made an error
        raise
    except Exception as error:
        raise ValueError(f"{where}: cannot read image file: {error}") from error


def _read_item(item, index):
    """One image of a sequence as an (H, W, C) array, C in {1, 3}."""
    try:
        if isinstance(item, (str, os.PathLike)):
            array = _read_file(item, index)
        elif isinstance(item, Image.Image):
            array = _pil_to_array(item, f"X[{index}]")
        else:
            array = np.asarray(item)
            if array.ndim not in (2, 3) or array.dtype.kind not in "uifb":
                raise ValueError(
                    f"X[{index}] must be a (H, W) or (H, W, C) numeric array; got "
                    f"shape {array.shape} and dtype {array.dtype}."
                )
            _check_pixel_range(array, f"X[{index}]")
    except _UnreadableImage as error:
        # A plain ValueError for the user; the message says it all.
        raise ValueError(str(error)) from None
    if array.ndim == 2:
        array = array[:, :, None]
    _check_channels(
        array.shape[2],
        f"X[{index}]",
        channels_first=f"use np.moveaxis(X[{index}], 0, -1)",
    )
    return array


def _cpu_tensor(batch, dtype):
    """``batch`` as a CPU tensor of ``dtype``, in the memory layout it has.

    An array that is a permuted view of dense memory (a channels-first stack
    seen as (B, H, W, C)) is not gathered into C order here: the copy to the
    device keeps its strides, and the device reorders it. On a GPU, that
    gather on the CPU took longer than the CNN itself.
    """
    if batch.dtype != dtype:
        batch = batch.astype(dtype)  # order "K": keeps the layout
    if (
        not batch.flags.writeable
        or not batch.flags.aligned
        or any(stride < 0 or stride % batch.itemsize for stride in batch.strides)
    ):
        # torch wants memory it may write, aligned, in whole elements forward
        # (a field of a structured array is none of these).
        batch = np.array(batch, order="C")
    return torch.from_numpy(batch)


def _to_unit_tensor(batch, device):
    """(B, H, W, C) array -> (B, 3, H, W) float32 tensor in [0, 1] on ``device``."""
    if _is_uint16(batch.dtype):
        # 16-bit intensities, divided by 65535 as for 16-bit image files,
        # whatever the largest value (a dark frame is no 8-bit image).
        tensor = _cpu_tensor(batch, np.float32).to(device).div(_MAX_16BIT)
    elif batch.dtype.kind in "ui":
        # Ship 8-bit data to the device and convert there: 4x less to copy.
        tensor = _cpu_tensor(batch, np.uint8).to(device).float().div_(255.0)
    else:
        tensor = _cpu_tensor(batch, np.float32).to(device)
    tensor = tensor.permute(0, 3, 1, 2)
    return tensor.expand(-1, 3, -1, -1) if tensor.shape[1] == 1 else tensor


class _ArrayImages:
    """Images of one size in a numeric array of shape (n, H, W, C).

    ``load`` returns images ``start:stop`` as a [0, 1] float batch resized to
    ``size``, on ``device``, in ``memory_format``; so does ``_ImageSequence.load``.
    """

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def load(self, start, stop, size, device, memory_format):
        batch = _resize(_to_unit_tensor(self.images[start:stop], device), size)
        return batch.contiguous(memory_format=memory_format)

    def sizes(self):
        """``(height, width)`` of every image."""
        return [tuple(self.images.shape[1:3])] * len(self.images)

    def file_digests(self):
        """Digests of the image files' bytes: none, the images are arrays."""
        return None


class _ImageSequence:
    """Images given one by one: file paths (decoded only when their batch is due),
    PIL images or arrays, of any sizes."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def load(self, start, stop, size, device, memory_format):
        shape = (stop - start, 3) + tuple(size)
        batch = torch.empty(
            shape, dtype=torch.float32, device=device, memory_format=memory_format
        )
        for row, index in enumerate(range(start, stop)):
            image = _read_item(self.items[index], index)[None]
            batch[row] = _resize(_to_unit_tensor(image, device), size)[0]
        return batch

    def file_digests(self):
        """SHA-256 of each file's bytes (None for an image given in memory)."""
        return [
            file_digest(item) if isinstance(item, (str, os.PathLike)) else None
            for item in self.items
        ]

    def sizes(self):
        """``(height, width)`` of every image; files are read up to their header."""
        sizes = []
        for index, item in enumerate(self.items):
            if isinstance(item, (str, os.PathLike)):
                try:
                    with _open(item, named=False) as image:  # the reading names them
                        height, width = _upright_size(image)
                except Warning:  # a warning a filter made an error stays one
                    raise
                except Exception as error:
                    raise ValueError(
                        f"X[{index}]: cannot read image file {os.fspath(item)!r}: "
                        f"{error}"
                    ) from error
            elif isinstance(item, Image.Image):
                width, height = item.size
            else:
                height, width = np.shape(item)[:2]
            sizes.append((int(height), int(width)))
        return sizes


def _check_input_shape(input_shape):
    entries = list(np.ravel(input_shape))
    # Whole numbers only: a fraction is refused, not truncated.
    if len(entries) not in (2, 3) or not all(is_whole(e) and e >= 1 for e in entries):
        raise ValueError(
            f"input_shape must be (height, width) or (height, width, channels); got "
            f"{input_shape!r}."
        )
    shape = tuple(int(entry) for entry in entries)
    if len(shape) == 3:
        _check_channels(
            shape[2],
            f"input_shape={input_shape!r}",
            images="X.reshape(n, H, W, C)",
            channels_first="reorder each row's pixels to channels last, e.g. "
            "X.reshape(n, C, H, W).transpose(0, 2, 3, 1).reshape(n, -1), and "
            "pass input_shape=(H, W, C)",
        )
    return shape


def one_image_with_channels(shape):
    """Whether a 3-D array of ``shape`` reads as one ``(H, W, C)`` image, not
    as ``(n, H, W)`` gray images 1, 3 or 4 pixels wide."""
    return shape[2] in (1, 3, 4) and shape[1] > shape[2]


def _image_source(X, input_shape):
    """Validate ``X`` and wrap it in an object that yields batches of images."""
    if isinstance(X, (str, os.PathLike)) and os.path.isdir(X):
        raise IsADirectoryError(_directory(X))
    if isinstance(X, (str, os.PathLike, Image.Image)):
        raise ValueError(
            f"X is a single image ({type(X).__name__}); pass a list of images or "
            "file paths, e.g. [X]."
        )
    if not isinstance(X, (list, tuple)):
        array = np.asarray(X)
        if array.ndim == 1 and array.dtype.kind in "OUS":
            X = list(array)
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError("X is empty: no images to embed.")
        for i, item in enumerate(X):
            if isinstance(item, (str, os.PathLike)):
                if os.path.isdir(item):
                    raise IsADirectoryError(_directory(item, i))
                if not os.path.isfile(item):
                    raise FileNotFoundError(_missing_file(item, i))
            elif isinstance(item, np.ndarray):
                _read_item(item, i)
            elif not isinstance(item, Image.Image):
                raise ValueError(
                    f"X[{i}] is a {type(item).__name__}; a list X must hold file "
                    "paths, PIL images or numpy arrays."
                )
        return _ImageSequence(list(X))

    images = check_array(X, dtype=None, allow_nd=True, input_name="X")
    if images.dtype.kind not in "uifb":
        raise ValueError(
            f"X has dtype {images.dtype}; expected integer or float pixels."
        )
    if images.ndim == 2:
        if input_shape is None:
            raise ValueError(
                f"X is a 2-D array of shape {images.shape}. If its rows are "
                "flattened images, pass input_shape=(height, width) or (height, "
                "width, channels); for a stack of images pass an (n, H, W) or "
                "(n, H, W, C) array."
            )
        shape = _check_input_shape(input_shape)
        if int(np.prod(shape)) != images.shape[1]:
            raise ValueError(
                f"input_shape={tuple(input_shape)!r} holds {int(np.prod(shape))} pixel "
                f"values but each row of X has {images.shape[1]}."
            )
        images = images.reshape((images.shape[0],) + shape)
    if images.ndim == 3:
        if one_image_with_channels(images.shape):
            # A stack of gray images 1, 3 or 4 pixels wide is no input for a
            # CNN; one image with a channel axis is a common slip, read
            # silently as many images.
            raise ValueError(
                f"X has shape {images.shape}, which reads as {images.shape[0]} gray "
                f"images of {images.shape[1]} x {images.shape[2]} pixels. For one "
                "image with a channel axis pass X[np.newaxis] or [X]; for gray "
                "images that narrow, X[..., np.newaxis]."
            )
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(
            f"X has shape {images.shape}; expected (n, H, W), (n, H, W, C) or "
            "flattened rows (n, H*W*C) with input_shape."
        )
    _check_channels(images.shape[3], "X")
    _check_pixel_range(images, "X")
    return _ArrayImages(images)
