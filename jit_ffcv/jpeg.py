"""Exact JPEG decoding from numba code: a small binding to the system libturbojpeg.

FFCV's ``imdecode`` asks libjpeg-turbo for its fast, inexact integer IDCT, which
shifts real ImageNet crops by about -1.1 (R) and -1.3 (B) grey levels on average;
a diffusion model learns that shift. :func:`decode_rgb` calls libturbojpeg with its
default, accurate IDCT and default (fancy) upsampling, as Pillow does, so a decoded
image equals ``PIL.Image.open(BytesIO(payload)).convert("RGB")`` pixel for pixel.
The fast IDCT stays available as an explicit opt-in (``jpeg_decode="fast"``).

Thread safety: every call creates and destroys its own TurboJPEG handle, so any
number of numba ``prange`` threads (and loaders) may decode at once. A fresh handle
costs about 0.4 µs, under 1% of a 256 px decode (measured against one reused handle).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable, Sequence

import numpy as np
from numba import njit

__all__ = ["DECODES", "compile_decode_rgb", "compile_raise_on_failure", "decode_flags", "decode_rgb", "describe",
           "load_turbojpeg", "raise_on_failure"]

#: values of the ``decode`` option: libjpeg-turbo's accurate IDCT (exact, Pillow's) or its fast one (biased)
DECODES = ("accurate", "fast")
TJFLAG_FASTDCT = 2048  # turbojpeg.h (TurboJPEG 2.x API, also exported by 3.x)
TJPF_RGB = 0
TJERR_WARNING = 0

# Status codes of decode_rgb (0 = decoded).
OK, NOT_A_JPEG, SIZE_MISMATCH, BAD_DESTINATION, CORRUPT, FAILED, NO_MEMORY = 0, -1, -2, -3, -4, -5, -6

_APT_HINT = ("install the TurboJPEG library: `apt-get install libturbojpeg0` (Debian/Ubuntu; `make install` "
             "installs libturbojpeg0-dev, which includes it), or `conda install libjpeg-turbo`")


def load_turbojpeg(names: Sequence[str] = ("libturbojpeg.so.0", "turbojpeg")) -> ctypes.CDLL:
    """Open the first loadable TurboJPEG library among ``names`` (ImportError saying how to install it)."""
    errors = []
    for name in names:
        path = name if "." in name else ctypes.util.find_library(name)
        if path is None:
            errors.append(f"{name}: not found")
            continue
        try:
            lib = ctypes.CDLL(path)
            for symbol in ("tjInitDecompress", "tjDecompressHeader3", "tjDecompress2", "tjGetErrorCode", "tjDestroy"):
                getattr(lib, symbol)
            return lib
        except (OSError, AttributeError) as err:
            errors.append(f"{name}: {err}")
    raise ImportError(f"jit-ffcv decodes JPEGs with libturbojpeg, which could not be loaded ({'; '.join(errors)}); "
                      f"{_APT_HINT}")


def _bind(lib: ctypes.CDLL, name: str, restype: type | None, *argtypes: type) -> ctypes._CFuncPtr:
    function = getattr(lib, name)
    function.restype, function.argtypes = restype, list(argtypes)
    return function


_lib = load_turbojpeg()
_ptr, _int, _size = ctypes.c_void_p, ctypes.c_int, ctypes.c_ulong
_init = _bind(_lib, "tjInitDecompress", _ptr)
_destroy = _bind(_lib, "tjDestroy", _int, _ptr)
_header = _bind(_lib, "tjDecompressHeader3", _int, _ptr, _ptr, _size, _ptr, _ptr, _ptr, _ptr)
_decompress = _bind(_lib, "tjDecompress2", _int, _ptr, _ptr, _size, _ptr, _int, _int, _int, _int, _int)
_error_code = _bind(_lib, "tjGetErrorCode", _int, _ptr)


def decode_flags(decode: str) -> int:
    """TurboJPEG flags of a ``decode`` option value (ValueError naming the allowed values)."""
    if decode not in DECODES:
        raise ValueError(f"jpeg_decode must be one of {DECODES}, got {decode!r}")
    return TJFLAG_FASTDCT if decode == "fast" else 0


def _decode_rgb(source: np.ndarray, destination: np.ndarray, flags: int) -> int:
    """Decode the JPEG bytes ``source`` into ``destination`` (HxWx3 uint8, RGB); return a status code.

    ``flags`` 0 is the accurate IDCT (Pillow's pixels), :data:`TJFLAG_FASTDCT` the fast one.
    Nothing is written unless the JPEG is exactly the destination's size and the
    destination is C-contiguous; 0 means decoded, a negative code a failure
    (:func:`describe` says which). Thread-safe (one TurboJPEG handle per call).
    """
    height, width, channels = destination.shape
    if not (channels == 3 and height > 0 and width > 0 and destination.strides[2] == 1
            and destination.strides[1] == 3 and destination.strides[0] == 3 * width):
        return BAD_DESTINATION
    handle = _init()
    if handle == 0:
        return NO_MEMORY
    info = np.zeros(4, dtype=np.int32)  # width, height, subsampling, colorspace
    address = info.ctypes.data
    if _header(handle, source.ctypes.data, source.size, address, address + 4, address + 8, address + 12) != 0:
        status = NOT_A_JPEG
    elif info[0] != width or info[1] != height:
        status = SIZE_MISMATCH
    # width, pitch and height equal to the JPEG's own: scale 1/1, exactly height * pitch bytes written
    elif _decompress(handle, source.ctypes.data, source.size, destination.ctypes.data, width, 3 * width, height,
                     TJPF_RGB, flags) != 0:
        status = CORRUPT if _error_code(handle) == TJERR_WARNING else FAILED
    else:
        status = OK
    _destroy(handle)
    return status


def compile_decode_rgb() -> Callable[[np.ndarray, np.ndarray, int], int]:
    """A fresh numba dispatcher of :func:`decode_rgb`, for one compiled pipeline.

    Each FFCV pipeline gets its own (as FFCV does with its ``imdecode``): with numba
    0.68 we saw a pipeline compiled in FFCV's thread fail with a KeyError (and the
    loader hang) when it needed a new overload of a dispatcher already compiled for
    other array types (e.g. a writable source buffer in a test, a read-only one here).
    """
    return njit(nogil=True)(_decode_rgb)


#: :func:`_decode_rgb` compiled for direct calls (tests, benchmarks); pipelines use :func:`compile_decode_rgb`
decode_rgb = compile_decode_rgb()


@njit(nogil=True)
def describe(status: int) -> str:
    """What a :func:`decode_rgb` status code means."""
    if status == NOT_A_JPEG:
        return "the payload is not a readable JPEG (bad header)"
    if status == SIZE_MISMATCH:
        return "the JPEG's width/height differ from the image size in the beton's metadata"
    if status == BAD_DESTINATION:
        return "the destination is not a contiguous HxWx3 uint8 array"
    if status == CORRUPT:
        return "the JPEG data is corrupt or truncated"
    if status == FAILED:
        return "libjpeg-turbo could not decode the JPEG"
    if status == NO_MEMORY:
        return "libjpeg-turbo could not allocate a decoder (out of memory)"
    return "unknown error"


def _raise_on_failure(statuses: np.ndarray, indices: np.ndarray) -> None:
    """Raise a RuntimeError naming the first sample of ``indices`` whose decode status is not 0."""
    for i in range(len(statuses)):
        if statuses[i] != OK:
            raise RuntimeError("cannot decode the JPEG of sample " + str(indices[i]) + ": "
                               + describe(np.int32(statuses[i]))
                               + "; check the beton with `jit-ffcv info BETON --verify` or write it again")


def compile_raise_on_failure() -> Callable[[np.ndarray, np.ndarray], None]:
    """A fresh numba dispatcher of :func:`raise_on_failure`, for one pipeline (see :func:`compile_decode_rgb`)."""
    return njit(nogil=True)(_raise_on_failure)


#: :func:`_raise_on_failure` compiled for direct calls; pipelines use :func:`compile_raise_on_failure`
raise_on_failure = compile_raise_on_failure()
