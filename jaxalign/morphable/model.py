"""The Surrey Face Model as host (numpy) arrays: :class:`SurreyModel` and :func:`load_model`.

The model files are read in :mod:`native_eos_bindings.model_files` (eos-py reads the cereal
binaries), which sits below this package: the bindings depend on the model files only, and
everything in :mod:`jaxalign.morphable` takes the model from here.
"""

from native_eos_bindings.model_files import SurreyModel, load_model

__all__ = ['SurreyModel', 'load_model']
