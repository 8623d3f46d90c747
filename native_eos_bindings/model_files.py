"""The Surrey Face Model files as host (numpy) arrays, loaded once per folder.

This is the single loader of the model files (eos-py reads the cereal binaries): the eos
bindings, the JAX fitter (through :mod:`jaxalign.morphable.model`) and the synthetic renderer
all start from :func:`load_model`. Units are the model's (millimetres). Depends on nothing in
jaxalign but :mod:`jaxalign.assets` (where the files are).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import tomllib

import numpy as np

from jaxalign import assets


@dataclasses.dataclass(frozen=True, eq=False)
class SurreyModel:
  """Shape PCA model, expression blendshapes, mesh topology and landmark definitions.

  Attributes:
    directory: the folder the files were read from.
    mean: (V, 3) float32 mean shape.
    shape_basis: (V, 3, K) float32 PCA basis rescaled by sqrt(eigenvalue), so coefficients are
      in standard deviations (eos's ``get_rescaled_pca_basis``).
    shape_eigenvalues: (K,) float32.
    expression_basis: (V, 3, E) float32 blendshape deformations (E = 6).
    expression_names: the E blendshape names.
    triangles: (T, 3) int32 vertex indices.
    texcoords: (V, 2) float32 texture coordinates in [0, 1].
    ibug_vertex: (68,) int32 vertex of each iBUG-68 point (0-based point index), -1 where the
      mapping has none (the 16 contour points and the inner mouth corners 60 and 64).
    contour_right: (17,) int32 model contour vertices on the subject's right (viewer's left),
      from the top down to the chin (eos ``ModelContour.right_contour``).
    contour_left: (17,) int32 the same on the subject's left (viewer's right).
    contour_landmarks_right: 0-based iBUG points on the viewer's-left contour (0..7).
    contour_landmarks_left: 0-based iBUG points on the viewer's-right contour (9..16).
    edge_adjacent_faces: (NE, 2) int32 the two triangles of each edge, -1 for none (0-based).
    edge_adjacent_vertices: (NE, 2) int32 the two vertices of each edge (0-based).
    symmetry: (845,) int32 0-based symmetric counterpart of each reference vertex.
  """

  directory: pathlib.Path
  mean: np.ndarray
  shape_basis: np.ndarray
  shape_eigenvalues: np.ndarray
  expression_basis: np.ndarray
  expression_names: tuple[str, ...]
  triangles: np.ndarray
  texcoords: np.ndarray
  ibug_vertex: np.ndarray
  contour_right: np.ndarray
  contour_left: np.ndarray
  contour_landmarks_right: tuple[int, ...]
  contour_landmarks_left: tuple[int, ...]
  edge_adjacent_faces: np.ndarray
  edge_adjacent_vertices: np.ndarray
  symmetry: np.ndarray

  @property
  def num_vertices(self) -> int:
    return self.mean.shape[0]

  @property
  def num_shape(self) -> int:
    return self.shape_basis.shape[-1]

  @property
  def num_expression(self) -> int:
    return self.expression_basis.shape[-1]

  def vertices(self, shape_coeffs=None, expression_coeffs=None) -> np.ndarray:
    """(V, 3) mesh for the given coefficients (missing ones are zero; shorter vectors use the
    leading components)."""
    v = self.mean.astype(np.float64)
    if shape_coeffs is not None:
      a = np.asarray(shape_coeffs, np.float64)
      v = v + self.shape_basis[..., :a.shape[-1]] @ a
    if expression_coeffs is not None:
      b = np.asarray(expression_coeffs, np.float64)
      v = v + self.expression_basis[..., :b.shape[-1]] @ b
    return v.astype(np.float32)


def _read_landmark_mapping(path: pathlib.Path):
  try:
    data = tomllib.loads(path.read_text())
  except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: not a valid landmark mapping file: {e}') from None
  vertex = np.full(68, -1, np.int32)
  for key, value in data['landmark_mappings'].items():
    vertex[int(key) - 1] = int(value)
  contour = data.get('contour_landmarks', {})
  right = tuple(int(i) - 1 for i in contour.get('right', ()))
  left = tuple(int(i) - 1 for i in contour.get('left', ()))
  return vertex, right, left


def _read_edge_topology(path: pathlib.Path):
  topo = json.loads(path.read_text())['edge_topology']
  faces = np.array([[e['value0'], e['value1']] for e in topo['adjacent_faces']], np.int32) - 1
  verts = np.array([[e['value0'], e['value1']] for e in topo['adjacent_vertices']], np.int32) - 1
  return faces, verts


@functools.lru_cache(maxsize=4)
def _load(directory: str) -> SurreyModel:
  import eos  # eos-py: reads the cereal binary files.

  d = pathlib.Path(directory)
  model = eos.morphablemodel.load_model(str(d / 'sfm_shape_3448.bin'))
  shape = model.get_shape_model()
  mean = np.asarray(shape.get_mean(), np.float32).reshape(-1, 3)
  num_v = mean.shape[0]
  basis = np.asarray(shape.get_rescaled_pca_basis(), np.float32).reshape(num_v, 3, -1)
  blend = eos.morphablemodel.load_blendshapes(str(d / 'expression_blendshapes_3448.bin'))
  expr = np.stack([np.asarray(b.deformation, np.float32).reshape(num_v, 3) for b in blend], -1)
  vertex, right, left = _read_landmark_mapping(d / 'ibug_to_sfm.txt')
  contours = json.loads((d / 'sfm_model_contours.json').read_text())['model_contour']
  faces, verts = _read_edge_topology(d / 'sfm_3448_edge_topology.json')
  sym = np.loadtxt(d / 'sfm_reference_symmetry.txt', dtype=np.int64, comments='#')
  return SurreyModel(
      directory=d, mean=mean, shape_basis=basis,
      shape_eigenvalues=np.asarray(shape.get_eigenvalues(), np.float32),
      expression_basis=expr, expression_names=tuple(b.name for b in blend),
      triangles=np.asarray(shape.get_triangle_list(), np.int32),
      texcoords=np.asarray(model.get_texture_coordinates(), np.float32),
      ibug_vertex=vertex,
      contour_right=np.asarray(contours['right_contour'], np.int32),
      contour_left=np.asarray(contours['left_contour'], np.int32),
      contour_landmarks_right=right, contour_landmarks_left=left,
      edge_adjacent_faces=faces, edge_adjacent_vertices=verts,
      symmetry=(sym.reshape(-1) - 1).astype(np.int32))


def load_model(path: str | os.PathLike | None = None) -> SurreyModel:
  """Loads (and caches per folder) the Surrey Face Model; see :func:`jaxalign.assets.sfm_dir`."""
  return _load(str(assets.sfm_dir(path).resolve()))
