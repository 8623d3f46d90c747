"""Synthetic faces: rasteriser, pose convention (against eos), ground truth, data set files."""

import dataclasses
import filecmp
import json
import os
import pathlib

import numpy as np
import pytest

from jaxalign.data import records
from jaxalign.data import synthetic
from jaxalign.data import synthetic_dataset
from jaxalign.data import synthetic_raster
from jaxalign.morphable import contour


@pytest.fixture(scope='module')
def renderer():
  return synthetic.Renderer(synthetic.SynthConfig(size=128))


def _plain(params, **kw):
  """Params with flat white light, no background, occluder, blur or noise."""
  fields = dict(background=False, occluders=0, ambient=1.0, diffuse=0.0, specular=0.0,
                light_colour=np.ones(3), blur_sigma=0.0, noise_sigma=0.0)
  fields.update(kw)
  return dataclasses.replace(params, **fields)


# ------------------------------------------------------------------------------- rasteriser
def test_rasterize_coverage_and_depth_order():
  # Two triangles over the same pixels; the nearer one (larger depth) must win everywhere.
  xy = np.array([[0, 0], [4, 0], [0, 4], [0, 0], [4, 0], [0, 4]], np.float64)
  depth = np.array([1, 1, 1, 2, 2, 2], np.float64)
  tris = np.array([[0, 2, 1], [3, 5, 4]])        # clockwise on screen = front facing
  r = synthetic_raster.rasterize(xy, depth, tris, 6, 6)
  yy, xx = np.mgrid[0:6, 0:6]
  np.testing.assert_array_equal(r.mask, (xx + yy <= 4))
  assert (r.triangle[r.mask] == 1).all()
  np.testing.assert_allclose(r.depth[r.mask], 2.0, atol=1e-5)
  np.testing.assert_allclose(r.bary[r.mask].sum(-1), 1.0, atol=1e-5)
  # Back faces are culled on request.
  assert not synthetic_raster.rasterize(xy, depth, tris[:, ::-1], 6, 6).mask.any()
  assert synthetic_raster.rasterize(xy, depth, tris[:, ::-1], 6, 6, False).mask.any()


# ---------------------------------------------------------------------------- pose convention
def _eos_yaw_pitch_roll(points, model_points, size):
  import eos
  ip = [np.array([[x], [y]], np.float32) for x, y in points]
  mp = [np.array([[*v, 1.0]], np.float32).T for v in model_points]
  ortho = eos.fitting.estimate_orthographic_projection_linear(ip, mp, True, size)
  return np.array(eos.fitting.RenderingParameters(ortho, size, size).get_yaw_pitch_roll())


@pytest.mark.parametrize('ypr', [(30, 15, -10), (-60, -5, 12), (75, 10, 0)])
def test_rotation_matches_eos_angles(renderer, ypr):
  model = renderer.model
  idx = np.flatnonzero(model.ibug_vertex >= 0)
  v = model.mean[model.ibug_vertex[idx]].astype(np.float64)
  rot = synthetic.rotation_matrix(*ypr)
  cam = np.concatenate([np.stack([rot[0], -rot[1]]), [[64.0], [64.0]]], 1)
  got = _eos_yaw_pitch_roll(contour.project(v, cam), v, 128)
  np.testing.assert_allclose(got, ypr, atol=0.05)


@pytest.mark.parametrize('yaw', [-50.0, 40.0])
def test_rendered_face_pose_and_looking_direction_match_eos(renderer, yaw):
  params = renderer.sample(7, 0)
  params = dataclasses.replace(params, yaw=yaw, pitch=5.0, roll=-3.0)
  face = renderer.render(params)
  model = renderer.model
  # eos, given the rendered 2D points of the mean face's non-contour vertices, recovers the
  # pose up to the random shape.
  inner = np.arange(17, 68)
  verts = contour.landmark_geometry(model).vertices[inner]
  got = _eos_yaw_pitch_roll(face.points_3d[inner], model.mean[verts], 128)
  assert abs(got[0] - yaw) < 6 and abs(got[1] - 5) < 8 and abs(got[2] + 3) < 4
  # DESIGN.md: yaw > 0 = right-looking: the nose tip moves toward the viewer's right of the
  # eye-corner midpoint and the viewer's-left half (jaw 0-7) faces the camera.
  mid = 0.5 * (face.points[36, 0] + face.points[45, 0])
  assert np.sign(face.points[30, 0] - mid) == np.sign(yaw)
  near, far = (range(0, 4), range(13, 17)) if yaw > 0 else (range(13, 17), range(0, 4))
  assert face.visible_3d[list(near)].all() and not face.visible_3d[list(far)].any()


# ------------------------------------------------------------------------------ ground truth
@pytest.mark.parametrize('yaw', [0.0, 35.0, -35.0])
def test_marked_vertex_centroid_is_the_annotated_point(yaw):
  # Albedo white only within a small disc (in texture coordinates) around one landmark
  # vertex, flat light, nothing else: the white pixels' centroid is the vertex's projection.
  r = synthetic.Renderer(synthetic.SynthConfig(size=512))
  # Neutral expression: the inner-lip points 62 / 66 share texture coordinates, so a marker
  # around one would cover both once the lips part.
  params = _plain(r.sample(11, 0), yaw=yaw, pitch=8.0, roll=5.0, face_scale=0.7,
                  centre=np.array([0.5, 0.5]), expression_coeffs=np.zeros(6, np.float32))
  geo = contour.landmark_geometry(r.model)
  base = r.render(params)
  checked = 0
  # The jaw vertices other than the chin sit on the mesh border (half a disc, grazing view):
  # the silhouette test below covers them.
  # The inner mouth corners (60, 64) sit on the lip seam, where a texture disc folds over both
  # lips; the same holds for none of the others.
  for k in [8] + list(range(17, 60, 2)) + [62, 66]:
    if not base.visible_3d[k]:
      continue
    centre_uv = r.texcoords[geo.vertices[k]]

    def albedo(uv, c=centre_uv):
      hit = ((uv - c) ** 2).sum(1) < 0.006 ** 2
      return np.repeat(hit[:, None], 3, 1).astype(np.float32)

    face = r.render(params, albedo=albedo)
    ys, xs = np.nonzero(face.image[..., 0] > 127)
    if len(xs) < 10:          # seen edge-on (far-side eye corner under yaw): too few pixels
      continue
    centroid = np.array([xs.mean(), ys.mean()])
    err = np.linalg.norm(centroid - face.points_3d[k])
    assert err < 1.0, (k, centroid, face.points_3d[k])
    checked += 1
  assert checked >= 20
  # 2D convention: identical to 3D off the jaw.
  np.testing.assert_array_equal(base.points[17:], base.points_3d[17:])


@pytest.mark.parametrize('yaw', [20.0, 45.0, -30.0, -60.0])
def test_2d_jaw_points_lie_on_the_silhouette_where_visible(yaw):
  r = synthetic.Renderer(synthetic.SynthConfig(size=256))
  face = r.render(_plain(r.sample(5, 3), yaw=yaw, pitch=0.0, roll=0.0, face_scale=0.7))
  mask = face.raster.mask
  pad = np.pad(mask, 1)
  edge = mask & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
  ey, ex = np.nonzero(edge)
  far = [k for k in (range(9, 17) if yaw > 0 else range(0, 8)) if face.visible[k]]
  near = range(0, 8) if yaw > 0 else range(9, 17)
  assert len(far) >= 3
  for k in far + list(near):
    d = np.sqrt((ex - face.points[k, 0]) ** 2 + (ey - face.points[k, 1]) ** 2).min()
    assert d <= synthetic.OUTLINE_PIXELS, (k, d)   # what the renderer counts as on the outline
  # The far side moved off its hidden fixed vertices.
  far_all = list(range(9, 17) if yaw > 0 else range(0, 8))
  assert np.abs(face.points[far_all] - face.points_3d[far_all]).max() > 2.0


def test_visibility_flags_agree_with_the_z_buffer(renderer):
  clear = hidden = 0
  geo = contour.landmark_geometry(renderer.model)
  for i, yaw in enumerate([-85, -60, -30, 0, 30, 60, 85]):
    params = dataclasses.replace(renderer.sample(21, i), yaw=float(yaw), occluders=0)
    face = renderer.render(params)
    v = renderer.vertices(params)
    rot = synthetic.rotation_matrix(params.yaw, params.pitch, params.roll)
    scale = np.linalg.norm(face.camera[0, :3])
    point_depth = scale * v[geo.vertices] @ rot[2]
    # The z-buffer over the 3x3 pixels around each point (background = -inf).
    px = np.round(face.points_3d).astype(int)
    zb = np.pad(face.raster.depth, 1, constant_values=-np.inf)
    around = np.stack([zb[px[:, 1] + 1 + dy, px[:, 0] + 1 + dx]
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 1)
    # Clearly hidden: every pixel around shows a surface 4 mm or more in front.
    in_front = (around > point_depth[:, None] + 4 * scale).all(1)
    # Clearly seen: the point's own pixel shows its surface (within 2 mm: the pixel centre is
    # up to 0.7 px away on a slanted surface), and nothing around is 6 mm in front.
    seen = ((np.abs(around[:, 4] - point_depth) < 2 * scale)
            & ~(around > point_depth[:, None] + 6 * scale).any(1))
    assert not face.visible_3d[in_front].any(), (yaw, np.flatnonzero(in_front & face.visible_3d))
    assert face.visible_3d[seen].all(), (yaw, np.flatnonzero(seen & ~face.visible_3d))
    clear += (in_front | seen).sum()
    hidden += in_front.sum()
    # 2D jaw points on the rendered outline are seen (the 3D jaw vertices often are not: the
    # mesh border curls back under the jaw).
    mask = face.raster.mask
    pad = np.pad(mask, 1)
    ey, ex = np.nonzero(mask & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2]
                                 & pad[1:-1, 2:]))
    for k in range(17):
      d = np.sqrt((ex - face.points[k, 0]) ** 2 + (ey - face.points[k, 1]) ** 2).min()
      if d <= 1.5:
        assert face.visible[k], (yaw, k, d)
    # Off the jaw the 2D flags are the 3D ones.
    np.testing.assert_array_equal(face.visible[17:], face.visible_3d[17:])
  assert clear > 0.6 * 7 * 68 and hidden > 20, (clear, hidden)


def test_occluded_flags_mark_the_points_under_an_occluder():
  r = synthetic.Renderer(synthetic.SynthConfig(size=128, occlusion=1.0))
  n_occluded = 0
  for i in range(6):
    params = dataclasses.replace(r.sample(2, i), blur_sigma=0.0, noise_sigma=0.0)
    assert params.occluders >= 1
    with_occ = r.render(params)
    without = r.render(dataclasses.replace(params, occluders=0))
    assert not with_occ.visible[with_occ.occluded].any()
    px = np.round(with_occ.points).astype(int)
    changed = (with_occ.image != without.image).any(-1)[px[:, 1], px[:, 0]]
    assert changed[with_occ.occluded].all()
    assert not with_occ.occluded[~changed].any()
    n_occluded += with_occ.occluded.sum()
    assert with_occ.occluded.mean() <= 0.6
  assert n_occluded > 0


def test_points_inside_image_and_face_size(renderer):
  for i in range(8):
    face = renderer.face(4, i)
    assert (face.points >= 0).all() and (face.points <= 127).all()
    side = (face.box[2:] - face.box[:2]).max()
    assert 0.4 * 128 < side < 0.85 * 128
    assert face.image.dtype == np.uint8 and face.image.shape == (128, 128, 3)
    # The face is not flat: its pixels vary (shading and painted features).
    assert face.image[face.raster.mask].std() > 5


# --------------------------------------------------------------------------------- data set
def _files(d):
  return sorted(p.name for p in pathlib.Path(d).iterdir() if not p.name.startswith('.'))


def _same_tree(a, b):
  assert _files(a) == _files(b)
  match, mismatch, errors = filecmp.cmpfiles(a, b, _files(a), shallow=False)
  assert not mismatch and not errors, mismatch


def test_deterministic_shards_and_reader(tmp_path):
  config = synthetic.SynthConfig(size=64, occlusion=0.5)
  full = tmp_path / 'full'
  s = synthetic_dataset.synthesize(full, 6, config=config, seed=3, workers=1)
  assert s.written == 6 and not s.failed
  # Same seed again, in two worker processes: byte-identical.
  again = tmp_path / 'again'
  s2 = synthetic_dataset.synthesize(again, 6, config=config, seed=3, workers=2)
  assert s2.workers == 2
  _same_tree(full, again)
  # Shards into one folder (out of order) give the same folder.
  one = tmp_path / 'one'
  synthetic_dataset.synthesize(one, 4, config=config, seed=3, start=2, workers=1)
  synthetic_dataset.synthesize(one, 2, config=config, seed=3, start=0, workers=1)
  _same_tree(full, one)
  # Shards into separate folders concatenate to the same annotations.
  a, b = tmp_path / 'a', tmp_path / 'b'
  synthetic_dataset.synthesize(a, 3, config=config, seed=3, start=0, workers=1)
  synthetic_dataset.synthesize(b, 3, config=config, seed=3, start=3, workers=1)
  cat = ((a / 'annotations.jsonl').read_text() + (b / 'annotations.jsonl').read_text())
  assert cat == (full / 'annotations.jsonl').read_text()
  assert (b / 'synth_0000004.png').read_bytes() == (full / 'synth_0000004.png').read_bytes()
  # Another seed differs.
  other = tmp_path / 'other'
  synthetic_dataset.synthesize(other, 2, config=config, seed=4, workers=1)
  assert (other / 'synth_0000000.png').read_bytes() != (full / 'synth_0000000.png').read_bytes()

  # The 300-W folder reader takes the output as it is.
  recs, invalid = records.scan_folder(full)
  assert not invalid and len(recs) == 6
  renderer = synthetic.Renderer(config)
  lines = [json.loads(x) for x in (full / 'annotations.jsonl').read_text().splitlines()]
  for rec, line, i in zip(recs, lines, range(6)):
    face = renderer.face(3, i)
    assert os.path.basename(rec.image) == line['file'] == f'synth_{i:07d}.png'
    np.testing.assert_array_equal(rec.points, face.points)
    np.testing.assert_allclose(rec.box, face.box, atol=1e-4)
    assert rec.yaw == pytest.approx(face.params.yaw, abs=1e-4)
    np.testing.assert_array_equal(rec.visible, face.visible)
    np.testing.assert_allclose(rec.meta['points_3d'], face.points_3d, atol=1e-4)
    for key in ('pitch', 'roll', 'occluded', 'visibility_3d', 'shape_coeffs',
                'expression_coeffs', 'camera'):
      assert key in rec.meta
    assert len(rec.meta['shape_coeffs']) == 63 and len(rec.meta['expression_coeffs']) == 6
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(rec.image)), face.image)


def test_bad_arguments_give_clear_errors(tmp_path):
  with pytest.raises(ValueError, match='num'):
    synthetic_dataset.synthesize(tmp_path / 'x', 0)
  with pytest.raises(ValueError, match='start'):
    synthetic_dataset.synthesize(tmp_path / 'x', 1, start=-1)
  with pytest.raises(ValueError, match='yaw_range'):
    synthetic.SynthConfig(yaw_range=(10, -10))
  with pytest.raises(ValueError, match='yaw_range'):
    synthetic.SynthConfig(yaw_range=(-120, 0))
  with pytest.raises(ValueError, match='occlusion'):
    synthetic.SynthConfig(occlusion=1.5)
  with pytest.raises(ValueError, match='size'):
    synthetic.SynthConfig(size=8)
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(ValueError, match='not a folder'):
    synthetic_dataset.synthesize(blocker, 1)
  with pytest.raises(ValueError, match='cannot write'):
    synthetic_dataset.synthesize(blocker / 'sub', 1)
  config = synthetic.SynthConfig(size=32)
  synthetic_dataset.synthesize(tmp_path / 'd', 1, config=config, seed=1, workers=1)
  with pytest.raises(ValueError, match='other settings'):
    synthetic_dataset.synthesize(tmp_path / 'd', 1, config=config, seed=2, workers=1)


def test_cli_and_contact_sheet(tmp_path, capsys):
  from jaxalign import synthesize
  assert synthesize.main(['--out', str(tmp_path / 'o'), '--num', '0', '--quiet']) == 2
  assert 'num' in capsys.readouterr().err
  assert synthesize.main(['--out', str(tmp_path / 'o'), '--num', '2', '--yaw-range', '5', '-5',
                          '--quiet']) == 2
  assert 'yaw_range' in capsys.readouterr().err
  assert synthesize.main(['--out', str(tmp_path / 'o'), '--num', '2', '--size', '48',
                          '--seed', '9', '--yaw-range', '-30', '30', '--occlusion', '0.5',
                          '--workers', '1', '--quiet']) == 0
  recs, _ = records.scan_folder(tmp_path / 'o')
  assert len(recs) == 2 and all(-30 <= r.yaw <= 30 for r in recs)
  sheet = tmp_path / 'sheet.png'
  assert synthesize.main(['--contact-sheet', str(sheet), '--num', '3', '--size', '48']) == 0
  from PIL import Image
  assert Image.open(sheet).size == (6 * 96, 96)


def test_benchmark_runs(capsys):
  from jaxalign.benchmarks import synthesize as bench
  assert bench.main(['--num', '4', '--workers', '1', '--size', '48', '--json']) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out['faces'] == 4 and out['faces_per_second'] > 0 and out['cpu_ms_per_face'] > 0


# ------------------------------------------------------------------------------ model mismatch
MISMATCH = dict(tail_shape_sigma=2.0, tail_start=30, deformation_mm=3.0,
                deformation_scale_mm=40.0, expression_strength=(1.2, 1.8), annotation_noise=0.01)


def test_mismatch_defaults_leave_the_data_set_unchanged():
  plain = synthetic.SynthConfig(size=64)
  explicit = synthetic.SynthConfig(size=64, tail_shape_sigma=None, tail_start=30,
                                   deformation_mm=0.0, expression_strength=(0.2, 1.0),
                                   annotation_noise=0.0)
  assert not plain.has_mismatch and not explicit.has_mismatch
  # synthesis.json of an old data set: no mismatch key at all.
  assert not set(plain.to_json()) & set(synthetic.MISMATCH_FIELDS)
  assert synthetic.SynthConfig(size=64, deformation_mm=1.0).to_json()['deformation_mm'] == 1.0
  r = synthetic.Renderer(plain)
  p = r.sample(3, 5)
  assert p.deformation is None and p.point_noise is None


def test_mismatch_draws_leave_every_other_choice_alone(renderer):
  mm = synthetic.Renderer(synthetic.SynthConfig(size=128, **MISMATCH), model=renderer.model)
  for index in range(4):
    a, b = renderer.sample(7, index), mm.sample(7, index)
    for f in dataclasses.fields(a):
      if f.name in ('shape_coeffs', 'expression_coeffs', 'deformation', 'point_noise'):
        continue
      va, vb = getattr(a, f.name), getattr(b, f.name)
      if isinstance(va, dict):
        assert va.keys() == vb.keys()
        for k in va:
          np.testing.assert_array_equal(va[k], vb[k])
      else:
        np.testing.assert_array_equal(va, vb, err_msg=f.name)
    # Head components unchanged, tail ones scaled by 2 / 0.9 (before clipping).
    np.testing.assert_array_equal(a.shape_coeffs[:30], b.shape_coeffs[:30])
    unclipped = np.abs(a.shape_coeffs[30:]) < 3 * 0.9 / 2.0
    np.testing.assert_allclose(b.shape_coeffs[30:][unclipped],
                               a.shape_coeffs[30:][unclipped] * 2.0 / 0.9, rtol=1e-5)
    if a.expression_coeffs.sum() > 0:
      assert 1.2 - 1e-5 <= b.expression_coeffs.sum() <= 1.8 + 1e-5


def test_deformation_is_smooth_and_has_the_requested_rms(renderer):
  rng = np.random.default_rng(0)
  field = renderer.random_deformation(rng, 3.0, 40.0).astype(np.float64)
  assert field.shape == renderer.model.mean.reshape(-1, 3).shape
  np.testing.assert_allclose(np.sqrt((field ** 2).sum(1).mean()), 3.0, rtol=1e-4)
  # Smooth: along mesh edges the field changes far less than its own size.
  t = renderer.triangles
  edge_change = np.linalg.norm(field[t[:, 0]] - field[t[:, 1]], axis=1)
  assert edge_change.mean() < 0.1 * np.linalg.norm(field, axis=1).mean()
  # The rendered mesh moves by exactly the field.
  p = renderer.sample(0, 0)
  moved = renderer.vertices(dataclasses.replace(p, deformation=field.astype(np.float32)))
  np.testing.assert_allclose(moved - renderer.vertices(p), field, atol=1e-3)


def test_annotation_noise_moves_only_the_2d_ground_truth(renderer):
  params = _plain(renderer.sample(2, 1))
  clean = renderer.render(params)
  noise = np.random.default_rng(1).standard_normal((68, 2)).astype(np.float32) * 0.01
  noisy = renderer.render(dataclasses.replace(params, point_noise=noise))
  np.testing.assert_allclose(noisy.points - clean.points,
                             noise * params.face_scale * renderer.config.size, atol=1e-4)
  np.testing.assert_array_equal(noisy.points_3d, clean.points_3d)
  np.testing.assert_array_equal(noisy.image, clean.image)
  np.testing.assert_array_equal(noisy.visible, clean.visible)
  np.testing.assert_allclose(noisy.box, [*noisy.points.min(0), *noisy.points.max(0)])


def test_mismatch_flags_and_bad_values(tmp_path):
  from jaxalign import synthesize
  args = synthesize.parse_args(['--out', 'x', '--num', '1', '--tail-shape-sigma', '1.5',
                                '--deformation-mm', '2', '--expression-strength', '0.2', '1.5',
                                '--annotation-noise', '0.004'])
  cfg = synthetic.SynthConfig(**synthesize.mismatch_kwargs(args))
  assert (cfg.tail_shape_sigma, cfg.deformation_mm, cfg.expression_strength,
          cfg.annotation_noise) == (1.5, 2.0, (0.2, 1.5), 0.004)
  defaults = synthetic.SynthConfig(**synthesize.mismatch_kwargs(
      synthesize.parse_args(['--out', 'x', '--num', '1'])))
  assert not defaults.has_mismatch
  for bad in (dict(deformation_mm=-1.0), dict(annotation_noise=0.5),
              dict(tail_shape_sigma=-0.1), dict(tail_start=-1),
              dict(expression_strength=(2.0, 1.0)), dict(deformation_scale_mm=0.0)):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
      synthetic.SynthConfig(**bad)
  # The data set records the mismatch, and the renders differ from the plain ones.
  out = tmp_path / 'mm'
  synthetic_dataset.synthesize(out, 2, config=synthetic.SynthConfig(size=64, **MISMATCH),
                               workers=1)
  saved = json.loads((out / synthetic_dataset.SETTINGS).read_text())['config']
  assert saved['deformation_mm'] == 3.0 and saved['expression_strength'] == [1.2, 1.8]
