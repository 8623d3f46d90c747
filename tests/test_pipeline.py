"""Input pipeline: host crop agrees with the warp primitive, augmentation, bad files."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxalign import io, transforms
from jaxalign.data import pipeline, records, sampling
from jaxalign.training import config as config_lib


def _config(size=32):
  """The base config (every key, as a run's) with a small plain model's input."""
  c = config_lib.base_config()
  c.model.kind = 'plain'
  c.model.input_size = size
  c.data.update({'box_margin': 0.1, 'crop_context': 1.25, 'num_workers': 0, 'prefetch': 2})
  return c


def write_fixture(folder, num=6, size=64, seed=0):
  """Random RGB PNGs with a random 68-point shape each (returns the folder)."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for i in range(num):
    img = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
    Image.fromarray(img).save(os.path.join(folder, f'face{i:03d}.png'))
    pts = rng.uniform(size * 0.2, size * 0.8, (68, 2)).astype(np.float32)
    io.write_pts(os.path.join(folder, f'face{i:03d}.pts'), pts)
  return folder


def test_host_crop_matches_warp_primitive(tmp_path):
  folder = write_fixture(str(tmp_path / 'f'), num=1)
  (rec,), _ = records.scan_folder(folder)
  spec = pipeline.CropSpec(input_size=24, box_margin=0.1, crop_context=1.25)
  ex = pipeline.load_example(rec, spec)
  image = pipeline.decode_image(rec.image)
  ref = transforms.warp_image(image, ex['crop_from_image'], spec.crop_size)
  diff = np.abs(np.asarray(ref) - ex['image'].astype(np.float32))
  # PIL interpolates in 8-bit fixed point; the geometry must agree exactly (no half-pixel shift).
  assert diff.mean() < 1.0 and diff.max() <= 3.0
  np.testing.assert_allclose(
      ex['points'], transforms.warp_points(rec.points, ex['crop_from_image']), atol=1e-3)
  # The network-input square lands on the box square: crop then crop_matrix == one crop.
  m = transforms.compose(ex['crop_from_image'], transforms.crop_matrix(ex['box'], 24))
  center, side = pipeline.input_square(rec.box, 0.1)
  corners = np.array([[center[0] - side / 2 + 0.5, center[1] - side / 2 + 0.5]], np.float32)
  np.testing.assert_allclose(transforms.warp_points(corners - 0.5, m), [[-0.5, -0.5]],
                             atol=1e-3)


def test_prepare_batch_eval_and_augmented():
  rng = np.random.default_rng(0)
  spec = pipeline.CropSpec(32, 0.1, 1.25)
  s = spec.crop_size
  batch = {'image': rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8),
           'points': rng.uniform(5, 30, (4, 68, 2)).astype(np.float32),
           'box': np.tile(pipeline.crop_box(spec), (4, 1))}
  cfg = _config()
  img0, pts0, m0 = pipeline.prepare_batch(batch, cfg, None)
  assert img0.shape == (4, 32, 32, 3) and pts0.shape == (4, 68, 2)
  assert float(img0.min()) >= 0 and float(img0.max()) <= 255   # the model normalises
  img1, pts1, m1 = pipeline.prepare_batch(batch, cfg, jax.random.key(1))
  img1b, _, m1b = pipeline.prepare_batch(batch, cfg, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(img1), np.asarray(img1b))   # deterministic
  _, _, m2 = pipeline.prepare_batch(batch, cfg, jax.random.key(2))
  assert not np.allclose(np.asarray(m1), np.asarray(m2))
  # Points follow the image: they are the same matrix applied.
  np.testing.assert_allclose(pts1, transforms.warp_points(batch['points'], m1), atol=1e-4)
  # Per-example draws stay within the configured ranges (many examples).
  keys = jax.random.split(jax.random.key(0), 2000)
  boxes = np.tile(pipeline.crop_box(spec), (2000, 1))
  m = np.asarray(pipeline.input_matrices(boxes, 32, keys, 10.0, 0.05, 0.07))
  base = np.asarray(pipeline.input_matrices(boxes[:1], 32))[0]
  angle = np.degrees(np.arctan2(m[:, 0, 1], m[:, 0, 0]))
  zoom = np.hypot(m[:, 0, 0], m[:, 0, 1]) / base[0, 0]
  assert np.abs(angle).max() <= 10.0 + 1e-3 and np.abs(angle).max() > 9.0
  assert 1 / 1.07 - 1e-4 <= zoom.min() and zoom.max() <= 1 / 0.93 + 1e-4


def test_gaussian_blur_preserves_mean_and_smooths():
  rng = np.random.default_rng(0)
  img = rng.uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
  out = np.asarray(pipeline.gaussian_blur(img, jnp.array([1e-4, 2.0])))
  np.testing.assert_allclose(out[0], img[0], atol=1e-3)     # sigma ~ 0: unchanged
  assert out[1].std() < 0.5 * img[1].std()
  np.testing.assert_allclose(out[1].mean(), img[1].mean(), rtol=0.02)


def test_corrupt_image_is_skipped_and_counted(tmp_path, caplog):
  folder = write_fixture(str(tmp_path / 'f'), num=4)
  with open(os.path.join(folder, 'face001.png'), 'wb') as f:
    f.write(b'not a png at all')
  with open(os.path.join(folder, 'face003.pts'), 'w') as f:
    f.write('version: 1\nn_points: 68\n{\n1 2\n}\n')           # malformed annotation
  recs, invalid = records.scan_folder(folder)
  assert len(recs) == 3 and len(invalid) == 1
  sampler = sampling.BalancedSampler(np.zeros(len(recs), int), 6, seed=0)
  fn = pipeline.TrainBatches(recs, sampler, pipeline.CropSpec(16, 0.1, 1.25))
  batch = fn(0)
  assert batch['image'].shape == (6, 20, 20, 3)
  assert int(batch['num_skipped']) == 2     # the bad image appears twice in a 6-of-3 batch
  assert 1 not in batch['index'].tolist()
  assert 'cannot decode image' in caplog.text and 'face001.png' in caplog.text


def test_train_iterator_resumes_and_eval_batches_pad(tmp_path):
  folder = write_fixture(str(tmp_path / 'f'), num=5)
  recs, _ = records.scan_folder(folder)
  sampler = sampling.BalancedSampler(np.arange(5) % 2, 4, seed=0)
  cfg = _config(16)
  full = [b['index'].tolist() for b in pipeline.train_iterator(recs, sampler, cfg, 0, 5)]
  tail = [b['index'].tolist() for b in pipeline.train_iterator(recs, sampler, cfg, 3, 5)]
  assert tail == full[3:]
  # The config's appearance augmentation reaches the batches, the same after a resume.
  cfg.augment.brightness = 0.4
  bright = [b['image'] for b in pipeline.train_iterator(recs, sampler, cfg, 0, 5)]
  resumed = [b['image'] for b in pipeline.train_iterator(recs, sampler, cfg, 3, 5)]
  cfg.augment.brightness = 0.0
  plain = [b['image'] for b in pipeline.train_iterator(recs, sampler, cfg, 0, 5)]
  assert all(np.any(a != p) for a, p in zip(bright, plain))
  np.testing.assert_array_equal(np.stack(resumed), np.stack(bright[3:]))
  spec = pipeline.CropSpec(16, 0.1, 1.25)
  batches = list(pipeline.eval_batches(recs, spec, 4))
  assert len(batches) == 2
  assert batches[1]['valid'].tolist() == [True, False, False, False]
  assert batches[1]['index'].tolist() == [4, -1, -1, -1]


def test_bad_box_raises():
  with pytest.raises(ValueError, match='degenerate'):
    pipeline.host_crop_matrix([5, 5, 5, 5], pipeline.CropSpec(16))


def test_gaussian_blur_with_a_radius_matches_the_exact_blur_inside():
  rng = np.random.default_rng(1)
  img = rng.uniform(0, 255, (3, 20, 24, 3)).astype(np.float32)
  sigma = jnp.array([1e-4, 0.6, 1.3])
  exact = np.asarray(pipeline.gaussian_blur(img, sigma))
  fast = np.asarray(pipeline.gaussian_blur(img, sigma, radius=4))
  # Away from the border (where the two treat the edge differently) they agree.
  np.testing.assert_allclose(fast[:, 5:-5, 5:-5], exact[:, 5:-5, 5:-5], atol=0.5)
  np.testing.assert_allclose(fast[0], img[0], atol=1e-3)


def test_gaussian_blur_with_a_radius_replicates_the_edges_exactly():
  """The tap version is a truncated separable Gaussian with replicated edges, border included:
  scipy's ``gaussian_filter1d(mode='nearest')`` with the same radius, per example."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  img = rng.uniform(0, 255, (3, 11, 13, 2)).astype(np.float32)
  sigma = np.array([0.4, 1.0, 2.2], np.float32)
  fast = np.asarray(pipeline.gaussian_blur(img, jnp.asarray(sigma), radius=3))
  for i, s in enumerate(sigma):
    ref = ndimage.gaussian_filter1d(img[i].astype(np.float64), s, axis=0, mode='nearest',
                                    radius=3)
    ref = ndimage.gaussian_filter1d(ref, s, axis=1, mode='nearest', radius=3)
    np.testing.assert_allclose(fast[i], ref, atol=2e-3)


def test_mirror_augmentation_flips_image_and_permutes_points():
  """augment.mirror_prob=1 gives exactly the mirror of the unmirrored view (same key): the
  image flipped left-right, the points mirrored with the scheme's flip permutation, and the
  matrices (which CNN2 samples the host crop through) carrying the same flip."""
  from jaxalign import schemes
  c = config_lib.base_config()
  c.model.input_size = 32
  c.augment.blur_prob = 0.0
  spec = pipeline.CropSpec.from_config(c)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (2, spec.crop_size, spec.crop_size, 3)).astype(np.uint8)
  points = rng.uniform(10, spec.crop_size - 10, (2, 68, 2)).astype(np.float32)
  batch = {'image': image, 'points': points, 'box': np.tile(pipeline.crop_box(spec), (2, 1))}
  key = jax.random.PRNGKey(3)
  plain = pipeline.prepare_views(batch, c, key)
  c.augment.mirror_prob = 1.0
  mirrored = pipeline.prepare_views(batch, c, key)
  np.testing.assert_allclose(mirrored['images'], plain['images'][:, :, ::-1], atol=1e-3)
  expected = transforms.flip_landmarks(plain['points'], 32, schemes.IBUG68)
  np.testing.assert_allclose(mirrored['points'], expected, atol=1e-4)
  np.testing.assert_allclose(
      mirrored['matrices'],
      transforms.compose(plain['matrices'], transforms.hflip_matrix(32.0)), atol=1e-5)
  # The viewer's-left eye's outer corner (36) of the mirror is the original's 45, mirrored.
  np.testing.assert_allclose(mirrored['points'][:, 36, 0], 31.0 - plain['points'][:, 45, 0],
                             atol=1e-4)
  c.augment.mirror_prob = 0.5
  half = pipeline.prepare_views({k: np.repeat(v, 16, 0) for k, v in batch.items()}, c, key)
  flipped = np.asarray(half['matrices'][:, 0, 0]) < 0    # rotations of at most 10 degrees
  assert 0 < flipped.sum() < 32     # some faces mirrored, not all
  # The views say which (the networks' mirror offsets apply to them); none without mirroring.
  np.testing.assert_array_equal(np.asarray(half['mirrored']), flipped)
  assert np.asarray(mirrored['mirrored']).all() and 'mirrored' not in plain


def test_mirror_prob_is_validated():
  c = config_lib.base_config()
  c.augment.mirror_prob = 1.5
  with pytest.raises(ValueError, match='augment.mirror_prob'):
    config_lib.validate(c, 1)


def _unblurred_config_and_batch(n, seed, low=0, high=255):
  """The base config at 32 px without the augmentation blur, and ``n`` random host crops with
  random points and the crop's input box."""
  c = config_lib.base_config()
  c.model.input_size = 32
  c.augment.blur_prob = 0.0
  spec = pipeline.CropSpec.from_config(c)
  rng = np.random.default_rng(seed)
  image = rng.integers(low, high, (n, spec.crop_size, spec.crop_size, 3)).astype(np.uint8)
  points = rng.uniform(10, spec.crop_size - 10, (n, 68, 2)).astype(np.float32)
  return c, {'image': image, 'points': points, 'box': np.tile(pipeline.crop_box(spec), (n, 1))}


def test_cnn2_jitter_is_drawn_only_in_training_within_its_ranges():
  """``augment.cnn2_*`` give CNN2's own view jitter (maps within its frame) in training only;
  CNN1's view and points are the same with and without it (same key)."""
  n = 64
  c, batch = _unblurred_config_and_batch(n, seed=0)
  key = jax.random.PRNGKey(5)
  plain = pipeline.prepare_views(batch, c, key)
  assert 'cnn2_jitter' not in plain
  c.augment.update({'cnn2_rotation_deg': 6.0, 'cnn2_translation': 0.04, 'cnn2_scale': 0.05})
  views = pipeline.prepare_views(batch, c, key)
  np.testing.assert_array_equal(views['images'], plain['images'])
  np.testing.assert_array_equal(views['points'], plain['points'])
  m = np.asarray(views['cnn2_jitter'])
  assert m.shape == (n, 2, 3)
  angle = np.degrees(np.arctan2(m[:, 0, 1], m[:, 0, 0]))
  zoom = np.hypot(m[:, 0, 0], m[:, 0, 1])
  assert 4.0 < np.abs(angle).max() <= 6.0 + 1e-3
  assert 1 / 1.05 - 1e-4 <= zoom.min() and zoom.max() <= 1 / 0.95 + 1e-4
  # The frame's centre moves by at most the translation (plus what the turn and zoom move it).
  centre = np.array([16.0, 16.0])
  moved = np.einsum('nij,j->ni', m[:, :, :2], centre) + m[:, :, 2] - centre
  assert np.abs(moved).max() <= 0.04 * 32 * 1.1 + 1e-3 and np.abs(moved).max() > 0.5
  # Not at evaluation (no key), nor for a plain network (no CNN2).
  assert 'cnn2_jitter' not in pipeline.prepare_views(batch, c)
  c.model.kind = 'plain'
  assert 'cnn2_jitter' not in pipeline.prepare_views(batch, c, key)


def test_cnn2_jitter_config_is_validated():
  c = config_lib.base_config()
  c.augment.cnn2_translation = -0.1
  with pytest.raises(ValueError, match='augment.cnn2_translation'):
    config_lib.validate(c, 1)


def _appearance(**kw):
  c = config_lib.base_config()
  c.augment.update(kw)
  return pipeline.appearance_on(c)


def test_appearance_augmentation_changes_pixels_as_asked():
  """``augment.brightness/contrast/grey_prob/occlusion_prob`` on host crops: grey faces have
  equal channels (the BT.601 luma), gains are drawn both ways, an occluder is one flat-coloured
  rectangle of the asked size centred in the face box; all off: no augmentation."""
  n = 32
  _, batch = _unblurred_config_and_batch(n, seed=1, low=30, high=220)
  image, box = batch['image'], batch['box']

  def run(ranges):
    return np.stack([pipeline.appearance_augment(image[i], box[i], np.random.default_rng(i),
                                                  ranges) for i in range(n)])

  assert _appearance() is None
  grey = run(_appearance(grey_prob=1.0))
  assert grey.dtype == np.uint8
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  np.testing.assert_allclose(grey[..., 1], image @ np.array([0.299, 0.587, 0.114]), atol=0.51)

  source = run(_appearance(brightness=0.3, contrast=0.3)).astype(np.float64)
  ratio = source.mean(axis=(1, 2, 3)) / image.mean(axis=(1, 2, 3))
  assert 0.65 < ratio.min() < 0.95 and 1.05 < ratio.max() < 1.35   # gains drawn both ways

  changed = np.any(run(_appearance(occlusion_prob=1.0, occlusion_size=(0.2, 0.3))) != image,
                   axis=-1)                                              # (n, S, S)
  side = box[0, 2] - box[0, 0]
  for i in range(n):
    ys, xs = np.nonzero(changed[i])
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert 0.2 * side - 2 <= width <= 0.3 * side + 2 and 0.2 * side - 2 <= height <= 0.3 * side + 2
    assert changed[i].sum() >= 0.9 * width * height
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    assert box[i, 0] - 1 <= cx <= box[i, 2] + 1 and box[i, 1] - 1 <= cy <= box[i, 3] + 1


def test_appearance_augmentation_is_drawn_per_step_in_training_batches(tmp_path):
  """TrainBatches draws the appearance per (seed, step, slot): the same step gives the same
  batch (resuming), other steps and seeds other draws; indices and points are untouched; the
  augmentation is off when ``augment.enabled`` is."""
  folder = write_fixture(str(tmp_path / 'f'), num=4)
  recs, _ = records.scan_folder(folder)
  sampler = sampling.BalancedSampler(np.zeros(len(recs), int), 6, seed=0)
  spec = pipeline.CropSpec(16, 0.1, 1.25)
  ranges = _appearance(brightness=0.3, occlusion_prob=0.5)
  plain = pipeline.TrainBatches(recs, sampler, spec)
  aug = pipeline.TrainBatches(recs, sampler, spec, appearance=ranges, seed=3)
  a0, p0 = aug(0), plain(0)
  np.testing.assert_array_equal(a0['index'], p0['index'])
  np.testing.assert_array_equal(a0['points'], p0['points'])
  assert a0['image'].dtype == np.uint8 and np.any(a0['image'] != p0['image'])
  np.testing.assert_array_equal(aug(0)['image'], a0['image'])
  other_seed = pipeline.TrainBatches(recs, sampler, spec, appearance=ranges, seed=4)(0)
  assert np.any(other_seed['image'] != a0['image'])
  # Each slot has its own draw: the same face twice in a batch is augmented differently.
  gains = a0['image'].reshape(6, -1).mean(1) / p0['image'].reshape(6, -1).mean(1)
  assert len(np.unique(np.round(gains, 3))) > 1
  c = config_lib.base_config()
  c.augment.brightness = 0.3
  assert pipeline.appearance_on(c) is not None
  c.augment.enabled = False
  assert pipeline.appearance_on(c) is None


@pytest.mark.parametrize('key,value', [('brightness', 1.0), ('contrast', -0.1),
                                       ('grey_prob', 1.5), ('occlusion_prob', -0.5),
                                       ('occlusion_size', (0.5, 0.2))])
def test_appearance_augmentation_is_validated(key, value):
  c = config_lib.base_config()
  c.augment[key] = value
  with pytest.raises(ValueError, match=f'augment.{key}'):
    config_lib.validate(c, 1)
