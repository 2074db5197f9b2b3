"""Writers: turn an ImageFolder into FFCV ``.beton`` files of pre-cropped images.

The lower layer of the project: it imports nothing from :mod:`jit_ffcv` (the loader side),
and :mod:`writers.ffcv_api` is the one module of either package that imports FFCV.
"""

__version__ = "0.1.0"
