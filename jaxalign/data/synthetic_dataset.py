"""Writing synthetic faces as a 300-W-style folder, in parallel, and the contact sheet.

Layout of a data set folder (read by :func:`jaxalign.data.records.scan_folder`):

* ``synth_<index:07d>.png`` and ``synth_<index:07d>.pts`` per face (``.pts``: 2D / 300-W
  convention, 1-based as iBUG files are);
* ``annotations.jsonl``: one JSON object per face, sorted by index (keys in
  :func:`annotation`);
* ``synthesis.json``: the configuration and seed. A later run into the same folder must use the
  same ones (checked), so that shards written with different ``start`` values into one folder,
  or into several folders whose files and ``annotations.jsonl`` lines are then concatenated,
  give exactly the data set one run makes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as io_lib
import json
import multiprocessing
import os
import pathlib
import tempfile
import time
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

from jaxalign import io
from jaxalign.data import synthetic

try:
  import resource             # POSIX: CPU time of the worker processes
except ImportError:           # pragma: no cover
  resource = None

FORMAT_VERSION = 1
ANNOTATIONS = 'annotations.jsonl'
SETTINGS = 'synthesis.json'
_THREAD_VARS = ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')


def file_stem(index: int) -> str:
  """File name (without extension) of face ``index``."""
  return f'synth_{index:07d}'


def _r(x, digits: int = 4):
  """Floats rounded for JSON (plenty for pixels and coefficients, and short lines)."""
  return np.round(np.asarray(x, np.float64), digits).tolist()


def annotation(face: synthetic.SyntheticFace, index: int) -> dict:
  """The ``annotations.jsonl`` object of a face.

  Keys: ``file`` (image path relative to the folder), ``index``, ``bbox`` [x0, y0, x1, y1]
  (tight box of the 2D points, pixels), ``yaw``, ``pitch``, ``roll`` (degrees, eos sign),
  ``visibility`` (68 bools: 2D point seen, i.e. not self-occluded and not occluded),
  ``occluded`` (68 bools: under an occluder), ``points_3d`` (68 x [x, y], 3D convention),
  ``visibility_3d``, ``shape_coeffs`` (63), ``expression_coeffs`` (6, in
  ``SurreyModel.expression_names`` order), ``camera`` (2 x 4 affine camera, image =
  camera @ [v, 1] in model millimetres).
  """
  p = face.params
  return {
      'file': file_stem(index) + '.png',
      'index': int(index),
      'bbox': _r(face.box),
      'yaw': round(p.yaw, 4), 'pitch': round(p.pitch, 4), 'roll': round(p.roll, 4),
      'visibility': [bool(v) for v in face.visible],
      'occluded': [bool(v) for v in face.occluded],
      'points_3d': _r(face.points_3d),
      'visibility_3d': [bool(v) for v in face.visible_3d],
      'shape_coeffs': _r(p.shape_coeffs, 5),
      'expression_coeffs': _r(p.expression_coeffs, 5),
      'camera': _r(face.camera, 6),
  }


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 (H, W, 3) image (deterministic for the same pixels)."""
  buf = io_lib.BytesIO()
  Image.fromarray(image).save(buf, format='PNG', compress_level=1)
  return buf.getvalue()


# ------------------------------------------------------------------------------ worker process
_WORKER: dict = {}


def _init_worker(config: synthetic.SynthConfig, model_dir: str, seed: int, out_dir: str):
  from jaxalign.morphable import model as model_lib
  _WORKER['renderer'] = synthetic.Renderer(config, model_lib.load_model(model_dir))
  _WORKER['seed'] = seed
  _WORKER['out'] = pathlib.Path(out_dir)


def _write_face(index: int) -> tuple[int, str | None, str | None]:
  """Renders and writes face ``index``; returns (index, json line, error)."""
  try:
    face = _WORKER['renderer'].face(_WORKER['seed'], index)
    stem = _WORKER['out'] / file_stem(index)
    stem.with_suffix('.png').write_bytes(encode_png(face.image))
    io.write_pts(stem.with_suffix('.pts'), face.points)
    return index, json.dumps(annotation(face, index), separators=(',', ':')), None
  except Exception as e:  # pylint: disable=broad-except
    # A long job counts bad samples instead of dying; the summary lists them.
    return index, None, f'{type(e).__name__}: {e}'


# ------------------------------------------------------------------------------- the data set
@dataclasses.dataclass
class Summary:
  """What a :func:`synthesize` run did.

  Attributes:
    out_dir: the folder.
    written: number of faces written.
    failed: (index, error) of faces that could not be rendered.
    seconds: wall time.
    cpu_seconds: CPU time of the rendering processes (workers, or this process with 1 worker).
    workers: processes used.
  """

  out_dir: str
  written: int
  failed: list[tuple[int, str]]
  seconds: float
  cpu_seconds: float
  workers: int

  @property
  def faces_per_second(self) -> float:
    return self.written / max(self.seconds, 1e-9)


def _children_cpu() -> float:
  """CPU seconds of this process's finished children (NaN where unknown)."""
  if resource is None:
    return float('nan')
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be an integer, got {value!r}')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value}')


def _prepare_out_dir(out_dir: pathlib.Path) -> None:
  if out_dir.exists() and not out_dir.is_dir():
    raise ValueError(f'output folder {out_dir} exists and is not a folder')
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out_dir, prefix='.write-test-'):
      pass
  except OSError as e:
    raise ValueError(f'cannot write to output folder {out_dir}: {e.strerror or e}') from None


def _settings(config: synthetic.SynthConfig, seed: int) -> dict:
  return {'format_version': FORMAT_VERSION, 'seed': int(seed), 'config': config.to_json()}


@contextlib.contextmanager
def _locked(path: pathlib.Path):
  """An exclusive advisory lock on ``path`` (parallel shards writing into one folder)."""
  with open(path, 'a+') as f:
    try:
      import fcntl
      fcntl.flock(f, fcntl.LOCK_EX)
    except ImportError:     # not POSIX: shards into one folder must then run one at a time
      pass
    yield


def _merge_annotations(out_dir: pathlib.Path, lines: dict[int, str]) -> None:
  """Adds this run's lines to ``annotations.jsonl`` (replacing those of the same index) and
  writes the file sorted by index."""
  path = out_dir / ANNOTATIONS
  with _locked(out_dir / '.annotations.lock'):
    merged: dict[int, str] = {}
    if path.is_file():
      for n, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        if line.strip():
          try:
            merged[int(json.loads(line)['index'])] = line
          except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f'{path}:{n}: not a synthetic annotation line') from None
    merged.update(lines)
    tmp = path.with_name(ANNOTATIONS + '.tmp')
    tmp.write_text(''.join(merged[i] + '\n' for i in sorted(merged)), encoding='utf-8')
    os.replace(tmp, path)


def _check_settings(out_dir: pathlib.Path, settings: dict) -> None:
  path = out_dir / SETTINGS
  with _locked(out_dir / '.annotations.lock'):
    if path.is_file():
      try:
        old = json.loads(path.read_text(encoding='utf-8'))
      except json.JSONDecodeError:
        raise ValueError(f'{path} is not valid JSON') from None
      if old != settings:
        raise ValueError(
            f'{out_dir} already holds a synthetic data set made with other settings '
            f'({path}: {old}); use a new folder or the same seed and flags')
    else:
      path.write_text(json.dumps(settings, indent=1, sort_keys=True) + '\n', encoding='utf-8')


def synthesize(out_dir: str | os.PathLike, num: int,
               config: synthetic.SynthConfig | None = None, seed: int = 0, start: int = 0,
               workers: int | None = None, model_dir: str | os.PathLike | None = None,
               progress: Callable[[int], None] | None = None) -> Summary:
  """Renders faces ``start .. start + num - 1`` of data set ``seed`` into ``out_dir``.

  Args:
    out_dir: the folder (created if missing).
    num: number of faces (> 0).
    config: image size, pose ranges, occlusion... (default :class:`SynthConfig`).
    seed: data set seed (>= 0).
    start: index of the first face (for shards).
    workers: processes (default: every CPU core); 1 renders in this process.
    model_dir: Surrey Face Model folder (default: :func:`jaxalign.assets.sfm_dir`).
    progress: called with the number of faces finished so far.

  Raises:
    ValueError: bad argument, unwritable folder, or a folder holding another data set.
  """
  from jaxalign.morphable import model as model_lib
  config = config or synthetic.SynthConfig()
  _check_int('num', num, 1)
  _check_int('seed', seed, 0)
  _check_int('start', start, 0)
  workers = (os.cpu_count() or 1) if workers is None else workers
  _check_int('workers', workers, 1)
  out = pathlib.Path(out_dir)
  _prepare_out_dir(out)
  model = model_lib.load_model(model_dir)
  _check_settings(out, _settings(config, seed))
  indices = range(start, start + num)
  workers = min(workers, num)
  lines: dict[int, str] = {}
  failed: list[tuple[int, str]] = []
  t0, cpu0 = time.perf_counter(), time.process_time()
  children0 = _children_cpu()
  args = (config, str(model.directory), seed, str(out))

  def collect(results: Iterable[tuple[int, str | None, str | None]]):
    for k, (index, line, error) in enumerate(results, 1):
      if line is None:
        failed.append((index, error))
      else:
        lines[index] = line
      if progress is not None:
        progress(k)

  if workers == 1:
    _init_worker(*args)
    collect(_write_face(i) for i in indices)
    cpu = time.process_time() - cpu0
  else:
    # Spawned workers start clean (no inherited JAX threads); one BLAS thread each.
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: '1' for k in _THREAD_VARS})
    try:
      ctx = multiprocessing.get_context('spawn')
      with ctx.Pool(workers, initializer=_init_worker, initargs=args) as pool:
        collect(pool.imap(_write_face, indices, chunksize=max(1, min(16, num // (4 * workers)))))
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
    cpu = _children_cpu() - children0
  _merge_annotations(out, lines)
  return Summary(out_dir=str(out), written=len(lines), failed=failed,
                 seconds=time.perf_counter() - t0, cpu_seconds=cpu, workers=workers)


# ------------------------------------------------------------------------------ contact sheet
def contact_sheet(path: str | os.PathLike, num: int = 24, seed: int = 0, columns: int = 6,
                  config: synthetic.SynthConfig | None = None, upscale: int = 2,
                  occlusion: float = 0.25) -> np.ndarray:
  """Writes a grid of synthetic faces with their 2D points to ``path`` (PNG) and returns it.

  Yaw runs evenly across the configured range from the first face to the last, so the sheet
  shows every pose. Points: green = visible, red = hidden by the face itself, yellow = under an
  occluder.
  """
  _check_int('num', num, 1)
  _check_int('columns', columns, 1)
  config = config or synthetic.SynthConfig(occlusion=occlusion)
  renderer = synthetic.Renderer(config)
  yaws = np.linspace(*config.yaw_range, num)
  tile = config.size * upscale
  rows = -(-num // columns)
  sheet = Image.new('RGB', (columns * tile, rows * tile), (255, 255, 255))
  for k in range(num):
    params = dataclasses.replace(renderer.sample(seed, k), yaw=float(yaws[k]))
    face = renderer.render(params)
    img = Image.fromarray(face.image).resize((tile, tile), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    r = max(1.0, 0.75 * upscale)
    for (x, y), vis, occ in zip((face.points + 0.5) * upscale - 0.5, face.visible,
                                face.occluded):
      colour = (40, 255, 40) if vis else ((255, 230, 0) if occ else (255, 40, 40))
      draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    draw.text((3, 2), f'yaw {face.params.yaw:+.0f}', fill=(255, 255, 255))
    sheet.paste(img, ((k % columns) * tile, (k // columns) * tile))
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  sheet.save(path)
  return np.asarray(sheet)
