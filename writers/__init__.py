"""Writers: turn an ImageFolder into FFCV ``.beton`` files of pre-cropped images."""
