"""The thin layer over eos-py: numpy in, plain results out (see ``fitting.py``, ``contour.py``)."""

from native_eos_bindings.fitting import EosFit, EosFitter, default_image_size

__all__ = ['EosFit', 'EosFitter', 'default_image_size']
