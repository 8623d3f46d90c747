"""The decode-once crop cache (jaxalign.data.crop_cache), JPEG draft decoding, and their CLI."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from jaxalign import datasets, io
from jaxalign.data import crop_cache, pipeline, records, sampling
from jaxalign.training import config as config_lib
from tests.test_pipeline import write_fixture

SPEC = pipeline.CropSpec(input_size=24, box_margin=0.1, crop_context=1.3, host_scale=1.5)


def write_photos(folder, num=2, size=(960, 720), seed=0, face=360):
  """Large JPEG 'photos' (smooth colour fields plus texture) with one face box each."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  w, h = size
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  for i in range(num):
    a = rng.uniform(0.005, 0.02, 3)
    img = 127 + 60 * np.sin(xx[..., None] * a + yy[..., None] * a[::-1] + rng.uniform(0, 6, 3))
    img += rng.normal(0, 8, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
        os.path.join(folder, f'photo{i}.jpg'), quality=90)
    x0, y0 = rng.uniform(0.1, 0.5) * w, rng.uniform(0.1, 0.4) * h
    pts = np.stack([rng.uniform(x0, x0 + face, 68), rng.uniform(y0, y0 + face, 68)], -1)
    io.write_pts(os.path.join(folder, f'photo{i}.pts'), pts.astype(np.float32))
  return folder


def _faces(tmp_path):
  """A few small PNG faces and two large JPEG photos (where draft decoding applies)."""
  folder = write_fixture(str(tmp_path / 'faces'), num=3)
  write_photos(str(tmp_path / 'faces' / 'photos'))
  recs, _ = records.scan_folder(folder)
  assert len(recs) == 5
  return recs


def _spec(tmp_path):
  return dataclasses.replace(SPEC, cache_dir=str(tmp_path / 'cache'))


def _assert_same(a, b):
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_cache_batches_equal_photo_batches(tmp_path):
  recs = _faces(tmp_path)
  spec = _spec(tmp_path)
  summary = crop_cache.build(recs, spec, spec.cache_dir, workers=2)
  assert summary.written == 5 and not summary.skipped
  cache = crop_cache.CropCache(spec.cache_dir, spec)
  positions, _ = cache.locate(recs)
  assert (positions >= 0).all()
  sampler = sampling.BalancedSampler.from_shapes(
      pipeline.points_in_input(recs, SPEC), 4, 0, 1, False)
  photos = pipeline.TrainBatches(recs, sampler, SPEC)
  cached = pipeline.TrainBatches(recs, sampler, spec, cache=cache)
  assert cached.crops.num_cached == 5
  for step in range(2):
    _assert_same(photos(step), cached(step))
  # Evaluation reads it too (spec.cache_dir), batch for batch.
  for a, b in zip(pipeline.eval_batches(recs, SPEC, 4), pipeline.eval_batches(recs, spec, 4)):
    _assert_same(a, b)


def test_train_iterator_builds_the_cache_on_the_first_run(tmp_path):
  recs = _faces(tmp_path)
  config = config_lib.base_config()
  config.model.input_size = 24
  config.data.num_workers = 0
  config.data.crop_cache.enabled = True
  config.data.crop_cache.dir = str(tmp_path / 'cache')
  config.batch_size = 4
  spec = pipeline.CropSpec.from_config(config)
  assert spec.cache_dir == str(tmp_path / 'cache')
  sampler = sampling.BalancedSampler.from_shapes(
      pipeline.points_in_input(recs, spec), 4, 0, 1, False)
  first = next(pipeline.train_iterator(recs, sampler, config, 0, 1))
  folder = crop_cache.spec_dir(spec.cache_dir, spec)
  assert len(list(folder.glob('part-*.array_record'))) == 1
  photos = pipeline.TrainBatches(recs, sampler, dataclasses.replace(spec, cache_dir=''))(0)
  _assert_same(first, photos)
  # A second run finds every face: nothing is built again.
  assert crop_cache.build(recs, spec, spec.cache_dir).written == 0
  # A config that refuses to build, and a cache missing a face: a clear error naming the folder.
  config.data.crop_cache.build = False
  config.data.crop_cache.dir = str(tmp_path / 'other')
  with pytest.raises(crop_cache.CacheError, match='other.*5 of 5 faces'):
    pipeline.train_iterator(recs, sampler, config, 0, 1)


def test_changed_photo_is_stale_and_rebuilt(tmp_path):
  recs = _faces(tmp_path)
  spec = _spec(tmp_path)
  crop_cache.build(recs, spec, spec.cache_dir)
  # Rewrite one photo (new content, new mtime): its old crop must not be served.
  path = recs[0].image
  Image.fromarray(np.full((64, 72, 3), 200, np.uint8)).save(path)
  os.utime(path, ns=(1, 1))
  cache = crop_cache.CropCache(spec.cache_dir, spec)
  assert cache.missing(recs) == [0]
  with pytest.raises(crop_cache.CacheError, match=r'crops-.*1 of 5 faces.*face000\.png'):
    crop_cache.ensure(recs, spec, build_missing=False)
  cache = crop_cache.ensure(recs, spec)
  assert not cache.missing(recs)
  ex = pipeline.Crops(recs, spec, cache)(0)
  _assert_same(ex, pipeline.load_example(recs[0], SPEC))
  assert ex['image'].min() > 150     # the new photo's pixels, not the old ones


def test_damaged_cache_detected_and_rebuilt(tmp_path):
  recs = _faces(tmp_path)
  spec = _spec(tmp_path)
  crop_cache.build(recs, spec, spec.cache_dir)
  (part,) = crop_cache.spec_dir(spec.cache_dir, spec).glob('part-*.array_record')
  with open(part, 'r+b') as f:
    f.truncate(part.stat().st_size // 2)
  cache = crop_cache.CropCache(spec.cache_dir, spec)
  assert cache.problems and str(part.with_suffix('.json')) in cache.problems[0]
  assert len(cache.missing(recs)) == 5
  with pytest.raises(crop_cache.CacheError, match=re.escape(str(part.with_suffix('.json')))):
    crop_cache.ensure(recs, spec, build_missing=False)
  cache = crop_cache.ensure(recs, spec)
  assert not cache.problems and not cache.missing(recs)
  crops = pipeline.Crops(recs, spec, cache)
  for i, r in enumerate(recs):
    _assert_same(crops(i), pipeline.load_example(r, SPEC))


def test_record_of_another_face_is_detected_at_read_time(tmp_path):
  recs = _faces(tmp_path)
  spec = _spec(tmp_path)
  crop_cache.build(recs, spec, spec.cache_dir)
  cache = crop_cache.CropCache(spec.cache_dir, spec)
  positions, keys = cache.locate(recs)
  with pytest.raises(crop_cache.CacheError, match='crops-'):
    cache.read(positions[1], keys[0])
  # The pipeline falls back to the photo for that face.
  crops = pipeline.Crops(recs, spec, cache)
  crops.keys[1] = keys[0]
  _assert_same(crops(1), pipeline.load_example(recs[1], SPEC))
  assert crops.positions[1] == -1


def test_unreadable_images_are_skipped_and_counted(tmp_path):
  recs = _faces(tmp_path)
  with open(recs[1].image, 'wb') as f:
    f.write(b'not an image')
  spec = _spec(tmp_path)
  summary = crop_cache.build(recs, spec, spec.cache_dir)
  assert summary.written == 4 and list(summary.skipped) == [recs[1].image]
  assert 'cannot decode' in summary.skipped[recs[1].image]
  # Remembered: the next build does not retry it, and ensure() does not call the cache stale.
  again = crop_cache.build(recs, spec, spec.cache_dir)
  assert again.written == 0 and again.cached == 5
  cache = crop_cache.ensure(recs, spec, build_missing=False)
  assert cache.locate(recs)[0][1] == -1
  # Training replaces it as it does without a cache.
  sampler = sampling.BalancedSampler.from_shapes(
      pipeline.points_in_input(recs, SPEC), 5, 0, 1, False)
  batch = pipeline.TrainBatches(recs, sampler, spec, cache=cache)(0)
  assert batch['num_skipped'] >= 1 and 1 not in batch['index']


def test_cli_builds_every_split_and_reports(tmp_path, capsys):
  recs = _faces(tmp_path)
  out = tmp_path / 'cli'
  argv = ['cache', '--dataset', 'folder', str(tmp_path / 'faces'), '--out', str(out), '--json',
          '--config.model.input_size=24', '--config.data.host_scale=1.5', '--workers', '1']
  assert datasets.main(argv) == 0
  report = json.loads(capsys.readouterr().out)
  assert report['faces'] == 5 and report['written'] == 5 and report['skipped'] == []
  assert report['crop_size'] == SPEC.crop_size == 47
  assert report['bytes_per_face'] > 47 * 47 * 3
  spec = dataclasses.replace(SPEC, cache_dir=str(out))
  assert report['folder'] == str(crop_cache.spec_dir(out, spec))
  assert not crop_cache.CropCache(out, spec).missing(recs)
  assert datasets.main(argv) == 0
  assert json.loads(capsys.readouterr().out)['cached'] == 5
  assert datasets.main(['cache', '--dataset', 'folder', str(tmp_path / 'nope'), '--out',
                        str(out)]) == 2
  assert 'error:' in capsys.readouterr().err


def _dot_photo(path, size=(1600, 1200), at=(701.0, 433.0), quality=95):
  """A grey JPEG with a bright Gaussian dot (sigma 6 px) centred at ``at`` (photo pixels)."""
  w, h = size
  yy, xx = np.mgrid[0:h, 0:w]
  dot = np.exp(-((xx - at[0]) ** 2 + (yy - at[1]) ** 2) / (2 * 6.0 ** 2))
  img = (60 + 180 * dot)[..., None].repeat(3, -1)
  Image.fromarray(img.astype(np.uint8)).save(path, quality=quality)


def _centroid(image):
  v = image[..., 0].astype(np.float64) - 60
  v[v < 20] = 0
  yy, xx = np.mgrid[0:v.shape[0], 0:v.shape[1]]
  return np.array([(v * xx).sum(), (v * yy).sum()]) / v.sum()


def test_decode_photo_draft_scale_and_geometry(tmp_path):
  path = str(tmp_path / 'dot.jpg')
  _dot_photo(path)
  full, f1, hw = pipeline.decode_photo(path)
  assert f1 == 1 and full.shape == (1200, 1600, 3) and hw == (1200, 1600)
  for resolution, factor in ((0.6, 1), (0.5, 2), (0.3, 2), (0.25, 4), (0.2, 4), (0.05, 8)):
    image, f, hw = pipeline.decode_photo(path, resolution)
    assert f == factor and hw == (1200, 1600)
    assert image.shape == (-(-1200 // f), -(-1600 // f), 3)
    # Photo pixel centre x maps to draft pixel (x + 0.5) / f - 0.5.
    inv = pipeline.photo_from_draft(f)
    np.testing.assert_allclose(_centroid(image) @ inv[:, :2].T + inv[:, 2], [701, 433],
                               atol=0.15 * f)
  png = str(tmp_path / 'dot.png')
  Image.fromarray(full).save(png)
  assert pipeline.decode_photo(png, 0.1)[1] == 1     # only JPEGs have draft scales


def test_load_example_with_draft_matches_full_decode(tmp_path):
  path = str(tmp_path / 'dot.jpg')
  _dot_photo(path)
  pts = np.random.default_rng(0).uniform(500, 900, (68, 2)).astype(np.float32)
  rec = records.FaceRecord(image=path, points=pts,
                           box=np.array([500, 250, 900, 650], np.float32))
  spec = pipeline.CropSpec(input_size=32, host_scale=1.5)   # 62 px crop of a 572 px region
  assert np.abs(pipeline.host_crop_matrix(rec.box, spec)[0, 0]) < 0.125
  draft = pipeline.load_example(rec, spec)
  full = pipeline.load_example(rec, dataclasses.replace(spec, jpeg_draft=False))
  for k in ('points', 'box', 'crop_from_image', 'image_hw'):
    np.testing.assert_array_equal(draft[k], full[k], err_msg=k)
  np.testing.assert_array_equal(draft['image_hw'], [1200, 1600])
  # The dot lands where crop_from_image puts it, in both decodes (within a tenth of a pixel
  # of the 1/8 draft's scale); the pixels agree within rounding and aliasing.
  m = draft['crop_from_image'].astype(np.float64)
  expect = m[:, :2] @ [701.0, 433.0] + m[:, 2]
  np.testing.assert_allclose(_centroid(draft['image']), expect, atol=0.1)
  np.testing.assert_allclose(_centroid(full['image']), expect, atol=0.25)
  diff = np.abs(draft['image'].astype(np.float32) - full['image'])
  assert diff.mean() < 1.5


def test_augmentation_reach_bounds_the_augmented_views():
  import jax
  import jax.numpy as jnp
  from jaxalign import transforms
  rotation, translation, scale = 10.0, 0.05, 0.07
  reach = crop_cache.augmentation_reach(rotation, translation, scale)
  assert 1.33 < reach < 1.35
  spec = pipeline.CropSpec(input_size=64, crop_context=reach)
  box = jnp.asarray(pipeline.crop_box(spec))[None].repeat(256, 0)
  keys = jax.random.split(jax.random.PRNGKey(0), 256)  # the bound holds for every draw
  m = pipeline.input_matrices(box, 64, keys, rotation, translation, scale)
  corners = jnp.array([[-0.5, -0.5], [63.5, -0.5], [-0.5, 63.5], [63.5, 63.5]])
  inside = transforms.warp_points(corners[None].repeat(256, 0), transforms.invert(m))
  lo, hi = -0.5 - 1e-3, spec.crop_size - 0.5 + 1e-3
  assert float(inside.min()) >= lo and float(inside.max()) <= hi


def test_bench_train_photos_reports_both_pipelines(tmp_path, capsys, monkeypatch):
  from jaxalign.benchmarks import train as bench_train
  seen = {}

  def step_figures(config, data, steps, warmup, rounds):
    # The model's compilation is the slow part, and bench train's own; here the batches the
    # timed pipeline would feed it: from the cache the bench built, equal to the photos'.
    from jaxalign.data import crop_cache  # pylint: disable=g-import-not-at-top
    spec = pipeline.CropSpec.from_config(config)
    cache = crop_cache.ensure(data['records'], spec, build_missing=False)
    seen['cached'] = pipeline.Crops(data['records'], spec, cache).num_cached
    batch = next(pipeline.train_iterator(data['records'], data['sampler'], config, 0, 1))
    photos = pipeline.TrainBatches(data['records'], data['sampler'],
                                   dataclasses.replace(spec, cache_dir=''))(0)
    _assert_same(batch, photos)
    return 100.0, 95.0

  monkeypatch.setattr(bench_train, 'step_figures', step_figures)
  folder = bench_train.render_photos(tmp_path / 'photos', num=2, size=(1600, 1200))
  photos = sorted(folder.glob('*.jpg'))
  assert photos and Image.open(photos[0]).size == (1600, 1200)
  assert bench_train.render_photos(tmp_path / 'photos', num=2, size=(1600, 1200)) == folder
  argv = ['--config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'smoke.py'),
          '--photos', str(folder), '--steps', '1', '--warmup', '1', '--json',
          '--config.batch_size=2', '--config.cpu_devices=1', '--rounds', '1']
  assert bench_train.main(argv) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  for key in ('photos_images_per_s_per_core', 'cache_images_per_s_per_core',
              'bare_step_images_per_s', 'cache_pipeline_images_per_s'):
    assert result[key] > 0, key
  assert result['faces'] == len(photos) and result['cache_max_abs_diff'] == 0
  assert seen['cached'] == len(photos) and result['cache_pipeline_vs_bare'] == 0.95
