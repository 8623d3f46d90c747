"""``predict(workdir, images, ...)``: landmarks, pose and 3DMM fit for faces in any photo.

Per image: decode (an unreadable or missing file is reported in one line and skipped), find the
faces (the given ``--bbox``, else :mod:`jaxalign.prediction.detector`), run the full pipeline
(:func:`jaxalign.inference.run_pipeline`: CNN pair + 3DMM completion) on all faces of a chunk
of images in batches (faces of different photos share a batch; each photo is decoded once), and
write per face ``<stem>.pts``, ``<stem>.json`` (and
``<stem>.obj`` with ``mesh``) plus one overlay ``<stem>.png`` per image.

Detector boxes follow the Haar cascades' framing, not the landmark box the network was trained
on, so a detected face goes through the pipeline twice: the second pass crops around the tight
box of the first pass's 68 points (the training framing for synthetic and folder data).

JPEG draft decoding (``draft``, on by default; ``--no-draft``): a JPEG is decoded for the
detector at the smallest DCT scale (1/2, 1/4, 1/8: PIL's draft mode) whose long side is still
:data:`DETECT_LONG_SIDE` pixels, and the networks read a decode at the smallest scale that still
gives the crop of the photo's smallest face its resolution (the host crop's pixels per photo
pixel, :func:`jaxalign.data.pipeline.host_crop_matrix`; the scale training and evaluation decode
that face at, :func:`jaxalign.data.pipeline.decode_photo`), decoded again only when that scale
differs from the detector's. With a run trained with ``data.jpeg_draft=False`` the networks
read the full-size decode, as in its training. Boxes, points and the overlay stay in the photo's
pixels: detector boxes are mapped back (:func:`jaxalign.data.pipeline.photo_from_draft`), the
crops account for the scale (:class:`jaxalign.data.pipeline.DecodedPhoto`), and the overlay is
drawn at the photo's size on the finer decode enlarged to it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from typing import Sequence, TextIO

import numpy as np

from jaxalign import inference
from jaxalign import schemes as schemes_lib
from jaxalign import transforms
from jaxalign.data import pipeline as data_pipeline
from jaxalign.data import records as records_lib
from jaxalign.prediction import detector as detector_lib
from jaxalign.prediction import writer

# Images decoded, detected and predicted together (bounds the memory held by decoded photos).
IMAGES_PER_CHUNK = 32
# Long side (pixels) of the JPEG draft decode the detector reads: MTCNN finds faces from 20 px,
# so down to 2 % of the photo's long side (80 px on a 4,000 x 3,000 photo, read at 1/4).
DETECT_LONG_SIDE = 1000


@dataclasses.dataclass
class Face:
  """One face to predict: its image, box and where the box came from."""

  image_index: int
  box: np.ndarray
  box_source: str


def parse_bbox(text: str) -> np.ndarray:
  """``"x0,y0,x1,y1"`` (image pixels) -> (4,) float32; ValueError naming the problem."""
  parts = [p for p in str(text).replace(' ', '').split(',') if p]
  try:
    box = np.array([float(p) for p in parts], np.float32)
  except ValueError:
    raise ValueError(f'--bbox {text!r}: expected four numbers x0,y0,x1,y1') from None
  if box.shape != (4,) or not records_lib.valid_box(box):
    raise ValueError(f'--bbox {text!r}: expected four finite numbers x0,y0,x1,y1 with '
                     'x1 > x0 and y1 > y0')
  return box


def read_image(path: str | os.PathLike) -> np.ndarray:
  """(H, W, 3) uint8 RGB; FileNotFoundError / ValueError naming the file."""
  return read_photo(path).image


def read_photo(path: str | os.PathLike, resolution: float = 1.0) -> data_pipeline.DecodedPhoto:
  """:func:`jaxalign.data.pipeline.decode_photo` (a JPEG at the smallest draft scale that keeps
  ``resolution``) after :func:`read_image`'s checks."""
  path = str(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such file')
  if os.path.isdir(path):
    raise ValueError(f'{path}: is a folder, not an image')
  return data_pipeline.decode_photo(path, resolution)


def _header(path) -> tuple[str, tuple[int, int]] | None:
  """(format, (W, H)) from the image file's header; None where it cannot be read (the decode
  then reports the file)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return str(im.format), im.size
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
    return None


def detection_resolution(path: str | os.PathLike) -> float:
  """Decoded pixels per photo pixel for the detector: :data:`DETECT_LONG_SIDE` over the photo's
  long side, at most 1."""
  header = _header(path)
  return 1.0 if header is None or min(header[1]) <= 0 else \
      min(1.0, DETECT_LONG_SIDE / max(header[1]))


def decode_for_crops(path: str | os.PathLike, photo: data_pipeline.DecodedPhoto, boxes,
                     spec: data_pipeline.CropSpec) -> data_pipeline.DecodedPhoto:
  """The decode the networks read for the faces at ``boxes`` (photo pixels): the JPEG at the
  smallest draft scale that keeps the crop of the smallest face (:func:`crop_resolution`);
  ``photo`` (a decode of ``path``) itself when it is at that scale or not a JPEG."""
  resolution = crop_resolution(boxes, spec)
  if data_pipeline.draft_factor(resolution) == photo.factor:
    return photo
  # At full size: a JPEG too small for the detector's draft, or no JPEG (no draft scales).
  if photo.factor == 1 and (_header(path) or ('',))[0] != 'JPEG':
    return photo
  return read_photo(path, resolution)


def crop_resolution(boxes, spec: data_pipeline.CropSpec) -> float:
  """Decoded pixels per photo pixel the host crops of ``boxes`` (photo pixels) need: the
  largest crop scale (the smallest face's; 1 when the spec has no JPEG draft decoding)."""
  if not spec.jpeg_draft or not len(boxes):
    return 1.0
  try:
    return max(float(np.abs(data_pipeline.host_crop_matrix(b, spec)[0, 0])) for b in boxes)
  except ValueError:   # a degenerate box: full size
    return 1.0


def boxes_to_photo(boxes, factor: int) -> np.ndarray:
  """(..., 4) boxes in the pixels of a 1/``factor`` draft decode -> the photo's pixels."""
  m = data_pipeline.photo_from_draft(factor)
  b = np.asarray(boxes, np.float64)
  corners = b.reshape(b.shape[:-1] + (2, 2)) @ m[:, :2].T + m[:, 2]
  return corners.reshape(b.shape).astype(np.float32)


def full_size(photo: data_pipeline.DecodedPhoto) -> np.ndarray:
  """(H, W, 3) the decode at the photo's size (a draft decode enlarged bilinearly, pixel
  centres where :func:`jaxalign.data.pipeline.photo_from_draft` puts them)."""
  if photo.factor == 1:
    return photo.image
  return transforms.warp_image_host(photo.image, data_pipeline.photo_from_draft(photo.factor),
                                   tuple(photo.photo_hw))


def _records(images, faces: Sequence[Face], num_points: int, boxes=None):
  """One record per face; ``image`` is the decoded photo (decoded once, shared by its faces)."""
  nan = np.full((num_points, 2), np.nan, np.float32)
  return [records_lib.FaceRecord(image=images[f.image_index], points=nan,
                                 box=np.asarray(f.box if boxes is None else boxes[i], np.float32))
          for i, f in enumerate(faces)]


def predict_faces(model, config, images, faces: Sequence[Face],
                  completion: inference.Completion | str | None = 'jax', batch_size: int = 32,
                  refine: bool = True):
  """The full pipeline on the given faces; detector boxes get a refinement pass.

  Args:
    images: ``{image_index: (H, W, 3) uint8 or DecodedPhoto}`` (or a list) of the decoded
      photos the faces index (a :class:`jaxalign.data.pipeline.DecodedPhoto` may be a JPEG
      draft decode: boxes and points stay in the photo's pixels).
    completion: the run's :class:`jaxalign.inference.Completion` (or a backend name: the
      completion without the run's tables).

  Returns:
    :func:`jaxalign.inference.run_pipeline`'s dict (``boxes`` are the boxes of the final pass).
  """
  scheme = schemes_lib.get_scheme(config.model.scheme)
  # Few faces need no full batch: the next power of two bounds both the padding and the number
  # of compiled batch shapes.
  batch_size = min(batch_size, 1 << max(0, len(faces) - 1).bit_length())
  records = _records(images, faces, scheme.num_points)
  if refine and any(f.box_source.startswith('detector') for f in faces):
    # First pass only for the CNN1 points (no completion needed for a box).
    first = inference.predict_records(model, config, records, batch_size=batch_size)
    framed = inference.recrop_records(records, first['rough'])   # NaN where not decoded
    boxes = [r.box if f.box_source.startswith('detector') else f.box
             for f, r in zip(faces, framed)]
    records = _records(images, faces, scheme.num_points, boxes)
  return inference.run_pipeline(model, config, records, completion, batch_size)


def _stem_of(path: str, used: dict[str, int]) -> str:
  """The image's file stem, made unique among the images of this call."""
  stem = pathlib.Path(path).stem or 'image'
  n = used.get(stem, 0)
  used[stem] = n + 1
  return stem if n == 0 else f'{stem}_{n}'


def predict(workdir: str | os.PathLike, images: Sequence[str], bbox: str | None = None,
            out: str | os.PathLike | None = None, mesh: bool = False, completion: str = 'jax',
            batch_size: int = 32, refine: bool = True, stderr: TextIO | None = None,
            stdout: TextIO | None = None, detector: str | None = None,
            progress: bool | None = None, verify: bool = True, draft: bool = True,
            verify_also: Sequence[str] = ()) -> int:
  """Predicts every face in ``images`` and writes the per-face files into ``out``.

  ``detector`` names the face detector (:data:`jaxalign.prediction.detector.DETECTORS`; None:
  the best installed). With ``verify`` (MTCNN only), MTCNN runs with lowered stage thresholds
  and its weaker candidates (below its usual final score, or found only by an extra pass) are
  kept only when the run's own CNN1 accepts them as faces (:mod:`jaxalign.prediction.verify`);
  the faces MTCNN finds at its usual thresholds are kept as before; ``verify_also`` (run
  folders, off by default) lets their CNN1s accept what the run's own rejects
  (:class:`jaxalign.prediction.verify.AnyVerifier`). ``progress`` shows a
  progress bar over the photos (default: when stderr is a terminal). ``draft``: JPEG draft
  decoding for the detector and the networks (the module docstring); off, every photo is decoded
  at full size.

  Returns:
    The exit status: 0 when every image gave at least one face, 1 when any image failed
    (missing, unreadable, or no face detected), 2 when nothing could run (no run, bad flags).
  """
  err = stderr or sys.stderr
  log = stdout or sys.stdout
  if completion not in inference.BACKENDS:
    print(f'error: unknown completion backend {completion!r}; expected one of '
          f'{", ".join(inference.BACKENDS)}', file=err)
    return 2
  try:
    box = parse_bbox(bbox) if bbox is not None else None
  except ValueError as e:
    print(f'error: {e}', file=err)
    return 2
  if not images:
    print('error: no image given', file=err)
    return 2
  detect = None
  if box is None:
    try:
      detect = detector_lib.make_detector(detector)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
      print(f'error: --detector {detector}: {e}', file=err)
      return 2
  try:
    run = inference.Run.load(workdir)
    model, config, step = run.model, run.config, run.step
    # A detector's box (or the caller's) is never disturbed by the evaluation's box jitter.
    config = data_pipeline.without_box_jitter(config)
    # The run's tables where they were made for this completion (Completion.of_run).
    run_completion = run.completion(completion)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: cannot load the run {workdir}: {e}', file=err)
    return 2
  if verify_also and not verify:
    print('error: --verify-also needs the verification (drop --no-verify)', file=err)
    return 2
  if detect is not None and verify and isinstance(detect, detector_lib.MtcnnDetector):
    from jaxalign.prediction import verify as verify_lib  # pylint: disable=g-import-not-at-top
    try:
      verifier = verify_lib.make_verifier(run, also=verify_also)
    except (FileNotFoundError, ValueError) as e:
      print(f'error: --verify-also: {e}', file=err)
      return 2
    detect = detector_lib.make_detector(
        'mtcnn', thresholds=verify_lib.VERIFIED_THRESHOLDS,
        extra_min_score=verify_lib.VERIFIED_EXTRA_MIN_SCORE,
        grey_equalized_min_score=verify_lib.VERIFIED_GREY_EQUALIZED_MIN_SCORE,
        verifier=verifier)
  elif verify_also and detect is not None:
    name = getattr(detect, 'name', detector)
    print(f'warning: --verify-also applies to the mtcnn detector only; {name} runs without '
          'verification', file=err)
  scheme = schemes_lib.get_scheme(config.model.scheme)
  spec = data_pipeline.CropSpec.from_config(config)
  out_dir = pathlib.Path(out) if out is not None else pathlib.Path(workdir) / 'predict'
  out_dir.mkdir(parents=True, exist_ok=True)
  sfm = None
  if mesh:
    from jaxalign.morphable import model as model_lib  # pylint: disable=g-import-not-at-top
    sfm = model_lib.load_model()
  failed = num_faces = 0
  used_stems: dict[str, int] = {}
  t0 = time.perf_counter()
  if progress is None:
    progress = hasattr(err, 'isatty') and err.isatty()
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=len(images), unit='photo', file=err)
  for start in range(0, len(images), IMAGES_PER_CHUNK):
    paths = list(images[start:start + IMAGES_PER_CHUNK])
    decoded: dict[int, data_pipeline.DecodedPhoto] = {}   # what the networks read
    overlays: dict[int, data_pipeline.DecodedPhoto] = {}  # the finer decode, drawn on
    faces: list[Face] = []
    for i, path in enumerate(paths):
      try:
        if box is not None:
          found = [Face(i, box, 'bbox')]
          photo = read_photo(path, crop_resolution([box], spec) if draft else 1.0)
        else:
          photo = read_photo(path, detection_resolution(path) if draft else 1.0)
          try:
            dets = detect(photo.image)
          except (RuntimeError, FileNotFoundError) as e:
            print(f'error: {path}: face detector unavailable: {e}', file=err)
            return 2
          found = [Face(i, boxes_to_photo(d.box, photo.factor),
                        f'detector:{getattr(d, "detector", "")}:{d.kind}') for d in dets]
      except (OSError, ValueError) as e:
        print(f'error: {e}', file=err)
        failed += 1
        continue
      if not found:
        print(f'{path}: no face detected (pass --bbox x0,y0,x1,y1 to give one)', file=err)
        failed += 1
        continue
      if draft and box is None:
        try:
          decoded[i] = decode_for_crops(path, photo, [f.box for f in found], spec)
        except (OSError, ValueError) as e:
          print(f'error: {e}', file=err)
          failed += 1
          continue
      else:
        decoded[i] = photo
      overlays[i] = min(photo, decoded[i], key=lambda p: p.factor)
      faces += found
    if not faces:
      if bar is not None:
        bar.update(len(paths))
      continue
    res = predict_faces(model, config, decoded, faces, run_completion, batch_size, refine)
    by_image: dict[int, list[int]] = {}
    for k, f in enumerate(faces):
      by_image.setdefault(f.image_index, []).append(k)
    for i, ks in by_image.items():
      stem = _stem_of(paths[i], used_stems)
      drawn = []
      for j, k in enumerate(ks):
        if not res['valid'][k]:
          print(f'error: {paths[i]}: the pipeline could not read the image', file=err)
          failed += 1
          break
        points = res['points'][k]
        fit = {n: res[n][k] for n in ('yaw', 'pitch', 'roll')}
        shape = None if res['shape_coeffs'] is None else res['shape_coeffs'][k]
        expr = None if res['expression_coeffs'] is None else res['expression_coeffs'][k]
        record = writer.face_record(
            points, res['boxes'][k], image=paths[i], scheme=scheme,
            yaw=fit['yaw'] if np.isfinite(fit['yaw']) else None,
            pitch=fit['pitch'] if np.isfinite(fit['pitch']) else None,
            roll=fit['roll'] if np.isfinite(fit['roll']) else None,
            shape_coeffs=shape, expression_coeffs=expr,
            backend=None if config.model.kind == 'plain' else res['backend'],
            flipped=bool(res['flipped'][k]), box_source=faces[k].box_source,
            extra={'detector_box': np.asarray(faces[k].box).tolist(),
                   'decode_factor': int(decoded[i].factor),
                   'checkpoint_step': int(step), 'workdir': str(workdir)})
        meshes = None
        if sfm is not None and shape is not None and np.isfinite(shape).all():
          v, t = writer.fitted_mesh(sfm, shape, expr, bool(res['flipped'][k]))
          meshes = (v, t, sfm.texcoords)
        writer.write_face(out_dir, writer.face_stem(stem, j), record, meshes)
        drawn.append((points, res['boxes'][k]))
        num_faces += 1
      else:
        writer.write_image(out_dir / f'{stem}.png',
                           writer.draw_landmarks(full_size(overlays[i]), drawn, scheme))
    if bar is not None:
      bar.update(len(paths))
  if bar is not None:
    bar.close()
  elapsed = time.perf_counter() - t0
  print(f'{num_faces} face(s) from {len(images) - failed} of {len(images)} image(s) written to '
        f'{out_dir} in {elapsed:.1f} s' + (f'; {failed} image(s) failed' if failed else ''),
        file=log)
  return 1 if failed else 0
