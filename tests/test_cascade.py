"""The cascade (issue 11): CNN2's own view from the host crop, the evaluation box jitter, the
mirror-aware stable-point metrics and CNN2's stable-point framing."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import metrics, schemes, transforms
from jaxalign.data import pipeline
from jaxalign.data import records as records_lib
from jaxalign.evaluation import report as report_lib
from jaxalign.models import aligner
from jaxalign.training import config as config_lib
from jaxalign.training import state as state_lib

S = schemes.IBUG68


def _pattern(x, y):
  """A smooth RGB test pattern as a function of image coordinates (pixels)."""
  return np.stack([127 + 100 * np.sin(x / 9.0), 127 + 100 * np.cos(y / 7.0),
                   127 + 80 * np.sin((x + y) / 11.0)], -1)


def test_cnn2_view_samples_the_host_crop_with_the_warp_image_convention(tmp_path):
  """CNN2's input, sampled once from the higher-resolution host crop through
  crop->input->canonical, shows the photo at the image coordinates that the inverse of the
  same composed matrix gives (the convention of transforms.warp_image), and is sharper than a
  resample of CNN1's input."""
  h, w = 180, 200
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  image = np.clip(_pattern(xx, yy), 0, 255).astype(np.uint8)
  path = str(tmp_path / 'face.png')
  from PIL import Image
  Image.fromarray(image).save(path)
  c = config_lib.base_config()
  c.model.input_size = 32
  c.model.cnn2_input_size = 32
  spec = pipeline.CropSpec.from_config(c)
  assert spec.host_scale == pytest.approx(pipeline.CNN2_ZOOM)
  assert spec.crop_size > int(32 * spec.crop_context)
  rec = records_lib.FaceRecord(image=path, points=np.full((68, 2), 100.0, np.float32),
                               box=np.array([60, 50, 140, 130], np.float32))
  ex = pipeline.load_example(rec, spec)
  batch = {k: jnp.asarray(ex[k])[None] for k in ('image', 'points', 'box')}
  views = pipeline.prepare_views(batch, c)
  model = state_lib.create_model(c)
  # A canonical transform with a zoom and a rotation, as the spatial transform makes.
  m = transforms.similarity_matrix(0.3, 1.4, (15.5, 15.5), (1.0, -2.0))[None]
  view = model.cnn2_view(views['images'], m, views['source'], views['matrices'])
  image_to_view = transforms.compose(jnp.asarray(ex['crop_from_image'])[None],
                                     views['matrices'], m)
  g = np.arange(32, dtype=np.float32)
  grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
  src = np.asarray(transforms.warp_points(grid[None], transforms.invert(image_to_view)))[0]
  expected = _pattern(src[:, 0], src[:, 1]).reshape(32, 32, 3)
  err_host = np.abs(np.asarray(view[0]) - expected).mean()
  # The old path: resampling CNN1's (downscaled) input instead of the host crop.
  old = model.cnn2_view(views['images'], m)
  err_old = np.abs(np.asarray(old[0]) - expected).mean()
  assert err_host < 3.0, err_host
  assert err_host < err_old, (err_host, err_old)


def test_eval_box_jitter_is_deterministic_per_face():
  c = config_lib.base_config()
  c.model.input_size = 32
  spec = pipeline.CropSpec.from_config(c)
  box = np.tile(pipeline.crop_box(spec), (4, 1))
  batch = {'image': np.zeros((4, spec.crop_size, spec.crop_size, 3), np.uint8),
           'points': np.zeros((4, 68, 2), np.float32), 'box': box}
  plain = pipeline.prepare_views(batch, c, eval_index=np.arange(4))['matrices']
  np.testing.assert_allclose(plain, pipeline.input_matrices(box, 32))   # no jitter by default
  c.eval.box_jitter.shift, c.eval.box_jitter.scale = 0.05, 0.07
  c.eval.box_jitter.rotation_deg = 10.0
  a = pipeline.prepare_views(batch, c, eval_index=np.arange(4))['matrices']
  b = pipeline.prepare_views(batch, c, eval_index=np.array([0, 1, 2, 3]))['matrices']
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a[0], a[1])          # per face
  assert not np.allclose(a, plain)
  # A face's jitter depends on its index only, not on its batch position.
  swapped = pipeline.prepare_views(batch, c, eval_index=np.array([3, 2, 1, 0]))['matrices']
  np.testing.assert_allclose(swapped[0], a[3], atol=1e-6)
  c.eval.box_jitter.seed = 1
  other = pipeline.prepare_views(batch, c, eval_index=np.arange(4))['matrices']
  assert not np.allclose(other, a)


def test_stable_metric_uses_the_mirror_set_of_left_looking_faces():
  """Hand-made: a face whose stable points are exact and whose mirror-set points are off by
  3 px. Scored on its own direction's SL set it is perfect when right-looking and 3 px off
  (over the points of the mirror set that are not also stable) when left-looking."""
  gt = np.zeros((2, 68, 2), np.float32)
  gt[:, :, 0] = np.arange(68)
  gt[:, :, 1] = np.arange(68) % 7
  gt[:, 36] = [0.0, 0.0]
  gt[:, 45] = [30.0, 0.0]                  # inter-ocular distance 30 px
  pred = gt.copy()
  stable = S.stable_mask()
  pred[:, ~stable, 0] += 3.0               # every non-stable point 3 px off
  left = np.array([False, True])
  mask = metrics.stable_mask_by_direction(left, S)
  assert mask[0].sum() == mask[1].sum() == len(S.stable)
  np.testing.assert_array_equal(mask[1], np.isin(np.arange(68),
                                                 S.flip_index_array()[list(S.stable)]))
  errors = report_lib.per_image_errors(pred, gt, None, S, left_looking=left)
  assert errors['nme_stable'][0] == pytest.approx(0.0)
  off = (mask[1] & ~stable).sum()
  assert errors['nme_stable'][1] == pytest.approx(3.0 * off / len(S.stable) / 30.0)
  # The fixed set scores both faces as perfect: the bug this metric fixes.
  fixed = report_lib.per_image_errors(pred, gt, None, S)
  assert fixed['nme_stable'][1] == pytest.approx(0.0)


def test_stage2_metrics_on_a_hand_made_case():
  gt = np.random.default_rng(0).uniform(10, 90, (3, 68, 2)).astype(np.float32)
  boxes = np.tile(np.array([0, 0, 100, 100], np.float32), (3, 1))
  left = np.array([False, True, False])
  sl = metrics.stable_mask_by_direction(left, S)
  cnn1 = gt + 2.0
  cnn = np.where(sl[..., None], gt + np.array([1.0, 0.0, 3.0])[:, None, None], cnn1)
  r = report_lib.stage2_metrics(cnn, cnn1, gt, boxes, left, np.array([False, True, True]),
                                np.array([10.0, -40.0, 70.0]), S)
  e1 = np.sqrt(8.0) / 100
  e2 = np.sqrt(2.0) * np.array([1.0, 0.0, 3.0]) / 100    # the offset is on x and y
  assert r['stage2_gain'] == pytest.approx(1 - e2.mean() / e1)
  assert r['stage2_win_rate'] == pytest.approx(2 / 3)
  assert r['flip_accuracy'] == pytest.approx(2 / 3)
  by = {(b['yaw_min'], b['yaw_max']): b for b in r['flip_accuracy_by_yaw']}
  assert by[(60, 90)]['accuracy'] == 0.0 and by[(0, 30)]['accuracy'] == 1.0


def _tiny_pose_aware(**model):
  c = config_lib.base_config()
  c.model.depth = 'tiny'
  c.model.input_size = 32
  for k, v in model.items():
    c.model[k] = v
  return c


def test_stable_framing():
  c = _tiny_pose_aware(transform_points='stable')
  model = state_lib.create_model(c)
  w = np.asarray(model.transform_weights[...])
  np.testing.assert_array_equal(w > 0, S.stable_mask())
  shapes = np.random.default_rng(1).normal(0, 1, (5, 68, 2)) + aligner.default_shape(S, 32)
  canon = aligner.canonical_shape_from_training(shapes, 32, S, fill=0.9,
                                                frame_points=S.stable)
  framed = canon[list(S.stable)]
  assert np.max(framed.max(0) - framed.min(0)) == pytest.approx(0.9 * 32, rel=1e-4)


def test_holdout_split_is_deterministic_and_disjoint():
  from jaxalign.training import data_setup
  recs = list(range(50))
  a, ha = data_setup.split_holdout(recs, 0.1, 3)
  b, hb = data_setup.split_holdout(recs, 0.1, 3)
  assert (a, ha) == (b, hb) and len(ha) == 5 and not set(a) & set(ha)
  assert sorted(a + ha) == recs
  assert data_setup.split_holdout(recs, 0.0, 3) == (recs, [])
  with pytest.raises(ValueError, match='holdout_fraction'):
    data_setup.split_holdout(recs, 1.0, 3)


def test_synthetic_validation_faces_are_rendered_once_with_their_own_seed(tmp_path):
  from jaxalign.training import data_setup
  c = config_lib.base_config()
  c.data.synthetic.enabled = True
  c.data.synthetic.root = str(tmp_path)
  c.data.synthetic.image_size = 48
  c.data.synthetic.num_val = 3
  train = [object()] * 4
  kept, val = data_setup.validation_records(c, train)
  assert kept == train and len(val) == 3
  folder = data_setup.ensure_synthetic_val(c)
  assert folder.endswith('val-3') and os.path.isfile(os.path.join(folder, 'COMPLETE'))
  assert np.isfinite(np.stack([r.points for r in val])).all()
  c.data.holdout_fraction = 0.5
  kept, held = data_setup.validation_records(c, list(range(4)))
  assert len(kept) == len(held) == 2
  # A folder of validation faces (data.val_dir) instead of the synthetic render.
  c.data.holdout_fraction = 0.0
  c.data.val_dir = folder
  kept, val = data_setup.validation_records(c, train)
  assert kept == train and len(val) == 3
  c.data.val_dir = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='data.val_dir'):
    data_setup.validation_records(c, train)
