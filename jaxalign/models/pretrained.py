"""ImageNet ResNet weights in torchvision's layout -> the Flax ResNets of ``resnet.py``.

torchvision's ``resnet18/34/50`` state dicts (``torchvision.models.resnet50(weights=...)
.state_dict()``, saved as ``.safetensors`` or ``.pth``) map one to one onto
:class:`jaxalign.models.resnet.ResNet`:

=====================================  ===============================================
torchvision key                        Flax variable
=====================================  ===============================================
``conv1.weight`` (O, I, kh, kw)        ``conv1.kernel`` (kh, kw, I, O)
``bn1.weight`` / ``bn1.bias``          ``bn1.scale`` / ``bn1.bias``
``bn1.running_mean`` / ``running_var``  ``bn1.mean`` / ``bn1.var`` (batch statistics)
``layer{i}.{j}.conv{k}.weight``        ``layers[i-1][j].conv{k}.kernel``
``layer{i}.{j}.downsample.0.weight``   ``layers[i-1][j].downsample.conv.kernel``
``layer{i}.{j}.downsample.1.*``        ``layers[i-1][j].downsample.bn.*``
``*.num_batches_tracked``, ``fc.*``    skipped (no counterpart; the landmark head differs)
=====================================  ===============================================

``.safetensors`` files are read with the ``safetensors`` package's numpy loader; ``.pth`` files
need PyTorch (imported only then). Any missing, unexpected or mis-shaped key is an error that
names the keys, so a wrong depth or a classifier-only checkpoint fails loudly.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.models import resnet as resnet_lib

# Keys in a torchvision state dict that have no counterpart in the backbone.
_SKIPPED_PREFIXES = ('fc.',)
_SKIPPED_SUFFIXES = ('.num_batches_tracked',)


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What :func:`load_torchvision_into_resnet` did.

  Attributes:
    loaded: torchvision keys copied into the model.
    skipped: keys deliberately ignored (classifier, BatchNorm step counters).
  """

  loaded: tuple[str, ...]
  skipped: tuple[str, ...]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torchvision-layout state dict from ``.safetensors`` or ``.pth``/``.pt`` as numpy.

  A ``.pth`` holding ``{'state_dict': ...}`` or ``{'model': ...}`` is unwrapped and a leading
  ``module.`` (from ``DataParallel``) is stripped from every key.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: unknown extension or unreadable file.
    ImportError: a ``.pth`` file without PyTorch installed (with how to convert it).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'pretrained weights not found: {path}')
  suffix = path.suffix.lower()
  if suffix == '.safetensors':
    from safetensors.numpy import load_file
    try:
      state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types.
      raise ValueError(f'{path}: not a readable .safetensors file: {e}') from None
  elif suffix in ('.pth', '.pt', '.bin'):
    try:
      import torch
    except ImportError:
      raise ImportError(
          f'{path}: reading a .pth checkpoint needs PyTorch, which is not installed. Either '
          'install torch, or convert the file once on a machine that has it:\n'
          '  import torch, safetensors.torch\n'
          f'  sd = torch.load("{path.name}", map_location="cpu", weights_only=True)\n'
          f'  safetensors.torch.save_file(sd, "{path.stem}.safetensors")\n'
          'and pass the .safetensors file instead.') from None
    try:
      obj = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as e:
      raise ValueError(f'{path}: torch.load failed: {e}') from None
    for wrapper in ('state_dict', 'model'):
      if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
        obj = obj[wrapper]
    if not isinstance(obj, Mapping):
      raise ValueError(f'{path}: expected a state dict, got {type(obj).__name__}')
    state = {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
             for k, v in obj.items() if hasattr(v, 'numpy')}
  else:
    raise ValueError(
        f'{path}: unknown weight file type {suffix!r}; expected .safetensors or .pth')
  return {(k[len('module.'):] if k.startswith('module.') else k): np.asarray(v)
          for k, v in state.items()}


def _conv_from_torch(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _conv_to_torch(k: np.ndarray) -> np.ndarray:
  return np.transpose(k, (3, 2, 0, 1))  # HWIO -> OIHW


def _identity(a: np.ndarray) -> np.ndarray:
  return a


def _bn_entries(prefix: str, bn: nnx.BatchNorm):
  return {
      f'{prefix}.weight': (bn.scale, _identity, _identity),
      f'{prefix}.bias': (bn.bias, _identity, _identity),
      f'{prefix}.running_mean': (bn.mean, _identity, _identity),
      f'{prefix}.running_var': (bn.var, _identity, _identity),
  }


def torchvision_key_map(model: resnet_lib.ResNet) -> dict[str, tuple[nnx.Variable, Callable,
                                                                      Callable]]:
  """Every torchvision key of ``model``'s architecture -> (variable, from_torch, to_torch).

  ``from_torch`` converts a torchvision array to the variable's layout, ``to_torch`` back.
  """
  if not isinstance(model, resnet_lib.ResNet):
    raise TypeError(f'expected a jaxalign ResNet, got {type(model).__name__}')
  conv = (_conv_from_torch, _conv_to_torch)
  entries = {'conv1.weight': (model.conv1.kernel, *conv), **_bn_entries('bn1', model.bn1)}
  for i, stage in enumerate(model.layers):
    for j, block in enumerate(stage):
      prefix = f'layer{i + 1}.{j}'
      num_convs = 3 if isinstance(block, resnet_lib.Bottleneck) else 2
      for k in range(1, num_convs + 1):
        entries[f'{prefix}.conv{k}.weight'] = (getattr(block, f'conv{k}').kernel, *conv)
        entries.update(_bn_entries(f'{prefix}.bn{k}', getattr(block, f'bn{k}')))
      if block.downsample is not None:
        entries[f'{prefix}.downsample.0.weight'] = (block.downsample.conv.kernel, *conv)
        entries.update(_bn_entries(f'{prefix}.downsample.1', block.downsample.bn))
  return entries


def _is_skipped(key: str) -> bool:
  return key.startswith(_SKIPPED_PREFIXES) or key.endswith(_SKIPPED_SUFFIXES)


def _format_keys(keys, limit=12) -> str:
  keys = sorted(keys)
  shown = ', '.join(keys[:limit])
  return f'{shown}, ... ({len(keys)} in all)' if len(keys) > limit else shown


def load_torchvision_into_resnet(model: resnet_lib.ResNet, state_dict: Mapping[str, np.ndarray],
                                 *, source: str = 'state dict') -> LoadReport:
  """Copies a torchvision ResNet state dict into ``model`` in place (parameters and batch stats).

  ``model`` may also be abstract (built under ``nnx.eval_shape``): its variables then become
  concrete arrays.

  Raises:
    ValueError: naming every missing, unexpected and mis-shaped key (nothing is modified then).
  """
  entries = torchvision_key_map(model)
  skipped = tuple(sorted(k for k in state_dict if _is_skipped(k)))
  given = {k for k in state_dict if not _is_skipped(k)}
  missing = set(entries) - given
  unexpected = given - set(entries)
  mismatched = []
  converted = {}
  for key in sorted(given & set(entries)):
    var, from_torch, _ = entries[key]
    value = from_torch(np.asarray(state_dict[key]))
    expected = var.get_value().shape
    if value.shape != tuple(expected):
      mismatched.append(f'{key}: file {tuple(np.shape(state_dict[key]))} -> '
                        f'{value.shape}, model expects {tuple(expected)}')
    else:
      converted[key] = value
  problems = []
  if missing:
    problems.append(f'missing keys: {_format_keys(missing)}')
  if unexpected:
    problems.append(f'unexpected keys: {_format_keys(unexpected)}')
  if mismatched:
    problems.append('mis-shaped keys: ' + '; '.join(mismatched[:12])
                    + (f' ... ({len(mismatched)} in all)' if len(mismatched) > 12 else ''))
  if problems:
    raise ValueError(
        f'{source} does not match a torchvision ResNet with stage sizes '
        f'{model.spec.stage_sizes} and {model.spec.block} blocks (width {model.spec.width}): '
        + '; '.join(problems))
  for key, value in converted.items():
    var = entries[key][0]
    current = var.get_value()
    value = jnp.asarray(value, current.dtype)
    if isinstance(current, jax.Array):
      var[...] = value  # in place: keeps the variable's sharding
    else:  # an abstract model from nnx.eval_shape
      var.set_value(value)
  return LoadReport(loaded=tuple(sorted(converted)), skipped=skipped)


def export_torchvision_state_dict(model: resnet_lib.ResNet) -> dict[str, np.ndarray]:
  """The inverse mapping: ``model``'s backbone as a torchvision-layout numpy state dict
  (without ``fc`` and ``num_batches_tracked``)."""
  return {key: np.ascontiguousarray(to_torch(np.asarray(var[...])))
          for key, (var, _, to_torch) in torchvision_key_map(model).items()}


def init_from_pretrained(model: nnx.Module, path: str | os.PathLike) -> int:
  """Loads ImageNet weights from ``path`` into every ResNet backbone inside ``model``.

  ``model`` may be a :class:`~jaxalign.models.resnet.ResNet`, a ``LandmarkRegressor``, a
  ``PlainAligner`` or a ``PoseAwareAligner`` (both CNNs get the same initial weights, as
  fine-tuning from ImageNet implies). The landmark heads keep their initialisation.

  Returns:
    The number of backbones loaded.
  Raises:
    FileNotFoundError, ValueError, ImportError: see :func:`load_state_dict` and
      :func:`load_torchvision_into_resnet`.
  """
  state_dict = load_state_dict(path)
  backbones = [m for _, m in nnx.iter_modules(model) if isinstance(m, resnet_lib.ResNet)]
  if not backbones:
    raise ValueError(f'{type(model).__name__} holds no ResNet backbone to load {path} into')
  for backbone in backbones:
    load_torchvision_into_resnet(backbone, state_dict, source=str(path))
  return len(backbones)
