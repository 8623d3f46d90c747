"""Tests for jaxalign.models.aligner: the spatial transform, flips, outputs, losses, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign import geometry
from jaxalign import losses
from jaxalign import schemes
from jaxalign import transforms
from jaxalign.models import aligner as aligner_lib
from jaxalign.models import resnet as resnet_lib
from jaxalign.models.resnet import ModelConstant

IBUG = schemes.IBUG68
SIZE = 32


def _similarity(points, angle, scale, shift, center):
  c, s = np.cos(angle), np.sin(angle)
  rot = np.array([[c, -s], [s, c]])
  return ((points - center) @ rot.T * scale + center + shift).astype(np.float32)


def _turned(shape, amount):
  """The shape with its nose (27-35) moved by ``amount`` x inter-ocular along x: a crude yaw
  (amount > 0: right-looking, < 0: left-looking)."""
  shape = np.array(shape, np.float32)
  iod = np.linalg.norm(shape[45] - shape[36])
  shape[27:36, 0] += amount * iod
  return shape


class _Oracle(nnx.Module):
  """Stands in for a CNN: returns fixed points whatever the images."""

  def __init__(self, points):
    self.points = ModelConstant(jnp.asarray(points, jnp.float32))
    self.mean_shape = ModelConstant(self.points[...][0])

  def __call__(self, images):
    del images
    return self.points[...]


@pytest.fixture(scope='module')
def reference(sfm_dir):
  from jaxalign.morphable import pose
  return pose.reference_points()


@pytest.fixture(scope='module')
def model(reference):
  return aligner_lib.PoseAwareAligner(depth='tiny', image_size=SIZE, pose_reference=reference,
                                      rngs=nnx.Rngs(0))


def test_constructing_a_model_reads_no_model_file(reference, monkeypatch):
  from jaxalign.morphable import model as model_files
  monkeypatch.setattr(model_files, 'load_model', lambda *a, **k: (_ for _ in ()).throw(
      AssertionError('the model files were read')))
  aligner_lib.PoseAwareAligner(depth='tiny', image_size=SIZE, pose_reference=reference,
                               rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='pose_reference'):
    aligner_lib.PoseAwareAligner(depth='tiny', image_size=SIZE, rngs=nnx.Rngs(0))


@pytest.fixture(scope='module')
def images():
  return jnp.asarray(np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)), jnp.float32)


def test_default_shape_is_the_sfm_derivation(sfm_model):
  derived = aligner_lib.frontal_shape_from_sfm(sfm_model)
  np.testing.assert_allclose(derived, aligner_lib._SFM_FRONTAL_IBUG68, atol=0.051)
  shape = aligner_lib.default_shape(IBUG, 224)
  lo, hi = shape.min(0), shape.max(0)
  assert np.isclose(np.max(hi - lo), 0.7 * 224) and np.allclose((lo + hi) / 2, 111.5)
  # Frontal and symmetric: mirroring gives the same shape back.
  np.testing.assert_allclose(transforms.flip_landmarks(shape, 224, IBUG), shape, atol=1e-4)
  assert abs(float(geometry.estimate_yaw(shape, IBUG))) < 1.0
  # AFLW-19 defaults come from the iBUG equivalents.
  aflw = aligner_lib.default_shape(schemes.AFLW19, 64)
  assert aflw.shape == (19, 2) and np.all(np.isfinite(aflw))


def test_outputs_shapes_and_dtypes(model, images):
  out = nnx.jit(lambda m, x: m(x, return_warped=True))(model, images)
  k = IBUG.num_stable
  assert out['rough'].shape == (4, 68, 2) and out['rough'].dtype == jnp.float32
  assert out['stable'].shape == (4, k, 2) and out['stable'].dtype == jnp.float32
  assert out['stable_indices'].shape == (4, k) and out['stable_indices'].dtype == jnp.int32
  assert out['matrix'].shape == (4, 2, 3)
  assert out['flipped'].shape == (4,) and out['flipped'].dtype == jnp.bool_
  assert out['points'].shape == (4, 68, 2)
  assert out['warped'].shape == (4, SIZE, SIZE, 3)
  idx = np.asarray(out['stable_indices'])
  for b in range(4):
    np.testing.assert_array_equal(out['points'][b, idx[b]], out['stable'][b])
    ul = np.setdiff1d(np.arange(68), idx[b])
    np.testing.assert_array_equal(out['points'][b, ul], out['rough'][b, ul])
    assert np.all(np.isnan(np.asarray(out['sl_points'][b, ul])))
    np.testing.assert_array_equal(out['sl_points'][b, idx[b]], out['stable'][b])
  # The fixed shapes are ModelConstants: in the state, not parameters.
  constants = nnx.state(model, ModelConstant)
  assert set(constants) == {'canonical_shape', 'transform_weights', 'pose_reference', 'cnn1',
                            'cnn2'}
  assert 'canonical_shape' not in nnx.state(model, nnx.Param)
  # bfloat16 compute: same output dtypes (shape evaluation only, no compilation).
  bf16 = nnx.eval_shape(lambda: aligner_lib.PoseAwareAligner(
      depth='tiny', image_size=SIZE, dtype=jnp.bfloat16, pose_reference=model.pose_reference[...],
      rngs=nnx.Rngs(0)))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  assert bf16.cnn2.backbone.conv1.dtype == jnp.bfloat16
  shapes = nnx.eval_shape(lambda m, x: m(x), bf16, images)
  assert all(shapes[key].dtype == jnp.float32 for key in ('rough', 'stable', 'points'))


def test_spatial_transform_normalises_similarity(model):
  canon = np.asarray(model.canonical_shape[...])
  face = _turned(canon, 0.3)  # right-looking: never mirrored
  center = np.array([15.5, 15.5])
  rough = np.stack([_similarity(face, 0.4, 0.6, (2.0, -3.0), center),
                    _similarity(face, -0.7, 1.3, (-1.0, 1.0), center),
                    _similarity(face, 0.0, 1.0, (0.0, 0.0), center)])
  matrix, flipped = nnx.jit(lambda m, r: m.spatial_transform(r))(model, jnp.asarray(rough))
  assert not np.any(flipped)
  # Every face lands on the same canonical placement (that of the unrotated one), which is
  # the least-squares fit of the turned face to the canonical shape.
  warped = np.asarray(transforms.warp_points(rough, matrix))
  best = np.asarray(transforms.warp_points(face, geometry.estimate_similarity(face, canon)))
  for b in range(3):
    np.testing.assert_allclose(warped[b], best, atol=2e-3)
  # A rotated, scaled, shifted copy of the canonical shape lands exactly on it (in the
  # scheme's indexing of the warped face: the symmetric template may count as either side).
  rough = jnp.asarray(np.stack([_similarity(canon, 0.5, 0.5, (3.0, 1.0), center),
                                _similarity(canon, -1.0, 1.5, (-2.0, 0.0), center)]))
  matrix, flipped = model.spatial_transform(rough)
  warped = transforms.warp_points(rough, matrix)
  frame = jnp.where(flipped[:, None, None], warped[:, IBUG.flip_index_array()], warped)
  np.testing.assert_allclose(frame, np.stack([canon, canon]), atol=2e-3)


def test_degenerate_rough_shape_falls_back_to_the_mean_shape_transform(model):
  rough = np.full((2, 68, 2), 10.0, np.float32)  # all points coincident
  rough[1] = np.nan  # or all missing
  matrix, flipped = model.spatial_transform(jnp.asarray(rough))
  expected = geometry.estimate_similarity(model.cnn1.mean_shape[...], model.canonical_shape[...])
  np.testing.assert_allclose(matrix, np.stack([expected, expected]), atol=1e-6)
  assert not np.any(flipped)


def test_flip_path_mirrors_left_looking_faces_in_image_and_indices(model):
  size = SIZE
  canon = np.asarray(model.canonical_shape[...])
  left = _similarity(_turned(canon, -0.3), 0.3, 0.8, (1.0, 1.0), np.array([15.5, 15.5]))
  right = _similarity(_turned(canon, 0.3), -0.2, 0.9, (0.0, -1.0), np.array([15.5, 15.5]))
  rough = jnp.asarray(np.stack([left, right]))
  matrix, flipped = model.spatial_transform(rough)
  np.testing.assert_array_equal(flipped, [True, False])
  # One matrix = mirror, then the similarity of the mirrored shape onto the canonical one.
  sim = geometry.estimate_similarity(transforms.flip_landmarks(left, size, IBUG), canon)
  np.testing.assert_allclose(matrix[0], transforms.compose(transforms.hflip_matrix(size), sim),
                             atol=1e-5)
  assert np.linalg.det(np.asarray(matrix[0, :, :2])) < 0  # a reflection
  # In the warped frame the mirrored face is right-looking, in the scheme's own indexing.
  warped = transforms.warp_points(rough, matrix)
  frame = jnp.where(flipped[:, None, None], warped[:, IBUG.flip_index_array()], warped)
  assert np.all(np.asarray(geometry.estimate_yaw(frame, IBUG)) > 0)

  # Image check: a bright dot on the viewer's-left outer eye corner (36) of the left-looking
  # face shows up where the warped point 36 is, near the canonical position of 45 (the
  # mirror's viewer's-right eye corner), and vice versa.
  yy, xx = np.mgrid[0:size, 0:size]

  def dot(p):
    return np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / 2.0)

  image = np.zeros((1, size, size, 3), np.float32)
  image[0, ..., 0] = 255 * dot(left[36])
  image[0, ..., 1] = 255 * dot(left[45])
  out = np.asarray(transforms.warp_images(image, matrix[:1], size))[0]
  for channel, source, target in ((0, 36, 45), (1, 45, 36)):
    weight = out[..., channel] / out[..., channel].sum()
    blob = np.array([(weight * xx).sum(), (weight * yy).sum()])
    np.testing.assert_allclose(blob, warped[0, source], atol=0.1)
    assert np.linalg.norm(blob - canon[target]) < 1.0
    assert np.linalg.norm(blob - canon[source]) > 10.0


def test_inverse_transform_and_unflip_recover_the_points(model, images):
  """With oracle CNNs (CNN1 = ground truth, CNN2 = ground truth in its own frame), the model
  must return the ground truth: this checks the inverse warp and the index un-flip."""
  canon = np.asarray(model.canonical_shape[...])
  center = np.array([15.5, 15.5])
  gt = np.stack([_similarity(_turned(canon, -0.35), 0.2, 0.9, (1.0, 0.0), center),
                 _similarity(_turned(canon, 0.35), -0.3, 0.8, (0.0, 1.0), center),
                 _similarity(_turned(canon, -0.5), 0.5, 0.7, (-1.0, 2.0), center),
                 _similarity(canon, 0.1, 1.1, (0.5, 0.5), center)])
  gt[..., 1] += np.linspace(0, 1, 68)  # break the symmetry of the template a little
  gt = jnp.asarray(gt)
  matrix, flipped = model.spatial_transform(gt)
  targets = model.cnn2_targets(gt, matrix, flipped)
  oracle = nnx.clone(model)
  oracle.cnn1 = _Oracle(gt)
  oracle.cnn2 = _Oracle(targets)
  out = nnx.jit(lambda m, x: m(x))(oracle, images)
  assert bool(out['flipped'][0]) and bool(out['flipped'][2]) and not bool(out['flipped'][1])
  np.testing.assert_allclose(out['points'], gt, atol=1e-3)
  idx = np.asarray(out['stable_indices'])
  np.testing.assert_array_equal(idx[0], IBUG.flip_index_array()[list(IBUG.stable)])
  np.testing.assert_array_equal(idx[1], IBUG.stable)
  for b in range(4):
    np.testing.assert_allclose(out['stable'][b], np.asarray(gt)[b, idx[b]], atol=1e-3)
  # The targets of a mirrored face are the mirrored shape in its own indexing: its stable
  # points are the viewer's-left half (the brow point 17 sits left of 22 after mirroring).
  assert float(targets[0, 0, 0]) < float(targets[0, IBUG.stable.index(22), 0])


def test_losses_and_gradient_isolation(model, images):
  canon = np.asarray(model.canonical_shape[...])
  center = np.array([15.5, 15.5])
  gt = jnp.asarray(np.stack([
      _similarity(_turned(canon, s), a, 0.9, (0.5, -0.5), center)
      for s, a in ((-0.4, 0.2), (0.4, -0.2), (0.0, 0.1), (-0.4, 0.0))]))
  grad_fn = nnx.jit(nnx.value_and_grad(
      lambda m, x, p, w1, w2: aligner_lib.compute_losses(m, x, p, cnn1_weight=w1, cnn2_weight=w2),
      has_aux=True))

  (loss, aux), grads = grad_fn(model, images, gt, 0.0, 1.0)
  assert set(aux) >= {'loss', 'loss_cnn1', 'loss_cnn2', 'flipped_fraction', 'points'}
  assert float(loss) == pytest.approx(float(aux['loss_cnn2']))
  # CNN2's loss reaches no CNN1 parameter through the spatial transform.
  cnn1 = jax.tree.leaves(grads['cnn1'])
  cnn2 = jax.tree.leaves(grads['cnn2'])
  assert cnn1 and all(float(jnp.max(jnp.abs(g))) == 0.0 for g in cnn1)
  assert max(float(jnp.max(jnp.abs(g))) for g in cnn2) > 0
  # ... although the warp itself is differentiable in the matrix: without stop_gradient it would.
  matrix, _ = model.spatial_transform(aux['points'])
  dwarp = jax.grad(lambda m: jnp.sum(transforms.warp_images(images, m, SIZE) ** 2))(matrix)
  assert float(jnp.max(jnp.abs(dwarp))) > 0

  (loss, aux1), grads = grad_fn(model, images, gt, 1.0, 0.0)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads['cnn2']))
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads['cnn1'])) > 0
  # CNN1's term is the wing loss of its predictions on the input-pixel ground truth.
  np.testing.assert_allclose(aux1['loss_cnn1'], losses.landmark_loss(aux1['points'], gt),
                             rtol=1e-5)
  assert 0.0 <= float(aux1['flipped_fraction']) <= 1.0


def test_cnn2_jitter_moves_cnn2_view_and_targets_only(model, images):
  """An identity jitter changes nothing; a turn of CNN2's frame changes CNN2's loss only."""
  canon = np.asarray(model.canonical_shape[...])
  gt = jnp.asarray(np.stack([_similarity(_turned(canon, 0.2), 0.1 * i, 1.0, (0, 0),
                                         np.array([15.5, 15.5])) for i in range(4)]))
  loss_fn = nnx.jit(lambda m, x, p, j: aligner_lib.compute_losses(
      m, x, p, transform_from='ground_truth', cnn2_jitter=j)[1])
  base = aligner_lib.compute_losses(model, images, gt, transform_from='ground_truth')[1]
  same = loss_fn(model, images, gt, jnp.tile(jnp.eye(2, 3)[None], (4, 1, 1)))
  np.testing.assert_allclose(same['loss_cnn2'], base['loss_cnn2'], rtol=1e-5)
  turn = transforms.similarity_matrix(jnp.full((4,), 0.3), 1.0, jnp.full((4, 2), 15.5))
  moved = loss_fn(model, images, gt, turn)
  np.testing.assert_allclose(moved['loss_cnn1'], base['loss_cnn1'], rtol=1e-6)
  assert abs(float(moved['loss_cnn2']) - float(base['loss_cnn2'])) > 1e-3


def test_cnn2_weights_follow_the_mirror(model, images):
  canon = np.asarray(model.canonical_shape[...])
  center = np.array([15.5, 15.5])
  loss_fn = nnx.jit(lambda m, x, p, w: aligner_lib.compute_losses(
      m, x, p, w, transform_from='ground_truth')[1])
  # Only original point 26 (viewer's-right brow end, an UL) has weight: it is CNN2's target
  # only for a mirrored face (as the mirror of SL 17).
  w = np.zeros((4, 68), np.float32)
  w[:, 26] = 1.0
  for amount, expect_loss in ((-0.4, True), (0.4, False)):
    gt = jnp.asarray(np.stack([_similarity(_turned(canon, amount), 0.1 * i, 1.0, (0, 0), center)
                               for i in range(4)]))
    aux = loss_fn(model, images, gt, jnp.asarray(w))
    assert (float(aux['flipped_fraction']) == 1.0) == expect_loss
    assert (float(aux['loss_cnn2']) > 0) == expect_loss
  # Missing (NaN) ground truth points contribute nothing and no NaN.
  gt_nan = np.array(gt)
  gt_nan[:, 30:40] = np.nan
  aux = loss_fn(model, images, jnp.asarray(gt_nan), jnp.ones((4, 68)))
  assert np.isfinite(float(aux['loss']))


def test_plain_baseline(images):
  plain = aligner_lib.make_aligner('plain', depth='tiny', image_size=SIZE, cnn2_depth=18,
                                   canonical_shape=None, rngs=nnx.Rngs(0))
  assert isinstance(plain, aligner_lib.PlainAligner)
  mean = aligner_lib.default_shape(IBUG, SIZE)
  out = nnx.jit(lambda m, x: m(x))(plain, images)
  assert set(out) == {'points'} and out['points'].shape == (4, 68, 2)
  assert np.abs(np.asarray(out['points']) - mean).max() < 3.0  # starts near the mean shape
  gt = jnp.asarray(mean)[None].repeat(4, 0) + 1.0
  (loss, aux), grads = nnx.jit(nnx.value_and_grad(aligner_lib.compute_losses, has_aux=True))(
      plain, images, gt)
  np.testing.assert_allclose(loss, losses.landmark_loss(aux['points'], gt), rtol=1e-5)
  assert set(grads) == {'net'}
  with pytest.raises(ValueError, match='unknown aligner kind'):
    aligner_lib.make_aligner('fancy', rngs=nnx.Rngs(0))


def test_canonical_and_mean_shape_from_training():
  base = aligner_lib.default_shape(IBUG, 100)
  right = _turned(base, 0.3)
  rng = np.random.default_rng(0)
  shapes = []
  for i in range(12):
    s = _similarity(right, rng.uniform(-0.5, 0.5), rng.uniform(0.5, 2), rng.normal(0, 5, 2),
                    np.array([50.0, 50.0]))
    if i % 2:  # half of them left-looking: the mirror image
      s = np.asarray(transforms.flip_landmarks(s, 100, IBUG))
    shapes.append(s)
  shapes = np.stack(shapes)
  canonical = aligner_lib.canonical_shape_from_training(shapes, 64, IBUG)
  np.testing.assert_allclose(canonical, aligner_lib.place_shape(right, 64), atol=2e-3)
  mean = aligner_lib.mean_shape_from_training(shapes)
  np.testing.assert_allclose(mean, shapes.mean(0), rtol=1e-5)
  shapes[:, 3] = np.nan
  with pytest.raises(ValueError, match='missing'):
    aligner_lib.mean_shape_from_training(shapes)


def test_input_errors(model):
  with pytest.raises(ValueError, match=r'images must be \(B, 32, 32, 3\)'):
    model(jnp.zeros((1, 40, 40, 3)))
  with pytest.raises(ValueError, match='canonical_shape'):
    aligner_lib.PoseAwareAligner(depth='tiny', image_size=SIZE, canonical_shape=np.zeros((5, 2)),
                                 rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='transform_weights'):
    aligner_lib.PoseAwareAligner(depth='tiny', image_size=SIZE,
                                 transform_weights=np.zeros(68), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='transform_from'):
    aligner_lib.compute_losses(model, jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1, 68, 2)),
                               transform_from='oracle')


def test_flip_decision_holds_near_profile(model, sfm_model):
  """The flip follows the sign of the yaw up to profile: random Surrey faces posed at 60-89
  degrees of yaw (eos sign), projected orthographically with 1.5 mm of landmark noise. (On these
  60 faces the 2D nose-ratio yaw of jaxalign.geometry gets the sign wrong for 5.)"""
  from jaxalign.morphable import contour  # pylint: disable=g-import-not-at-top
  verts = np.asarray(contour.landmark_vertices(sfm_model))
  rng = np.random.default_rng(0)
  yaws, shapes = [], []
  for _ in range(60):
    v = sfm_model.vertices(rng.normal(0, 1, 63), np.clip(rng.normal(0, 0.5, 6), 0, None))
    ref = v[verts].astype(np.float64)
    yaw = rng.choice([-1, 1]) * rng.uniform(60, 89)
    t = np.deg2rad(yaw)
    x = ref[:, 0] * np.cos(t) + ref[:, 2] * np.sin(t)   # nose (z > 0) to +x for yaw > 0
    pts = np.stack([x, -ref[:, 1]], -1) + rng.normal(0, 1.5, (68, 2))
    pts = (pts - pts.mean(0)) / np.ptp(pts[:, 1]) * SIZE * 0.6 + SIZE / 2
    yaws.append(yaw)
    shapes.append(pts)
  _, flipped = model.spatial_transform(jnp.asarray(np.stack(shapes), jnp.float32))
  np.testing.assert_array_equal(np.asarray(flipped), np.asarray(yaws) < 0)


def test_mirror_tta_averages_cnn1_over_the_mirror(reference):
  """eval.mirror_tta: CNN1's points are the mean of its points on the face and on the mirrored
  face mapped back; so they are mirror-equivariant (the mirrored face gives the mirrored
  points), which CNN1 alone, untrained, is not."""
  model = aligner_lib.PoseAwareAligner(depth='tiny', image_size=SIZE, pose_reference=reference,
                                       rngs=nnx.Rngs(0))
  model.eval()
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, SIZE, SIZE, 3)) * 255.0
  mirrored = images[:, :, ::-1]
  out = model(images, mirror_tta=True)
  expected = 0.5 * (model.cnn1(images) + transforms.flip_landmarks(
      model.cnn1(mirrored), SIZE, schemes.IBUG68))
  np.testing.assert_allclose(out['rough'], expected, atol=1e-4)
  back = transforms.flip_landmarks(model(mirrored, mirror_tta=True)['rough'], SIZE,
                                   schemes.IBUG68)
  np.testing.assert_allclose(back, out['rough'], atol=1e-3)
  plain_back = transforms.flip_landmarks(model(mirrored)['rough'], SIZE, schemes.IBUG68)
  assert not np.allclose(plain_back, model(images)['rough'], atol=1e-3)
  plain = aligner_lib.PlainAligner(depth='tiny', image_size=SIZE, rngs=nnx.Rngs(0))
  plain.eval()
  np.testing.assert_allclose(
      plain(images, mirror_tta=True)['points'],
      aligner_lib.mirror_averaged(plain.net, images, schemes.IBUG68), atol=1e-5)


@pytest.mark.parametrize('kind', ['pose_aware', 'plain'])
def test_cnn1_mirror_offset_on_mirrored_faces_and_the_mirrored_pass(reference, kind):
  """``cnn1_mirror_offset``: zero at the start; set, it moves CNN1's points only on the faces
  the augmentation mirrored (the loss's ``mirrored``) and on the mirrored pass of the test-time
  average (added there before mapping back); the loss trains it through those faces only; and
  CNN2 sees a face mirrored against its annotation where exactly one of the augmentation and
  the spatial transform mirrored it."""
  kwargs = dict(depth='tiny', image_size=SIZE, cnn1_mirror_offset=True, rngs=nnx.Rngs(0))
  if kind == 'pose_aware':
    kwargs.update(pose_reference=reference, mirror_offset=True)
  model = aligner_lib.make_aligner(kind, **kwargs)
  net = model.cnn1 if kind == 'pose_aware' else model.net
  key = 'rough' if kind == 'pose_aware' else 'points'
  model.eval()
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, SIZE, SIZE, 3)) * 255.0
  before = np.asarray(model(images, mirror_tta=True)[key])
  np.testing.assert_allclose(before, aligner_lib.mirror_averaged(net, images, schemes.IBUG68),
                             atol=1e-5)
  offset = np.zeros((68, 2), np.float32)
  offset[36] = (2.0, 0.5)      # the viewer's left outer eye corner of the mirrored face
  model.cnn1_mirror_offset[...] = jnp.asarray(offset)
  np.testing.assert_array_equal(np.asarray(model(images)[key]), np.asarray(net(images)))
  after = np.asarray(model(images, mirror_tta=True)[key])
  # Mapped back, mirrored point 36 is point 45, its x mirrored: half the offset moves it.
  change = after - before
  np.testing.assert_allclose(change[:, 45], np.broadcast_to([-1.0, 0.25], (2, 2)), atol=1e-4)
  np.testing.assert_allclose(np.delete(change, 45, axis=1), 0.0, atol=1e-4)
  # Training: the gradient reaches the offset only through the mirrored faces.
  model.train()
  truth = jnp.asarray(np.asarray(net(images)) + 1.0)

  def grads_of(mirrored):
    return nnx.grad(lambda m: aligner_lib.compute_losses(
        m, images, truth, transform_from='ground_truth',
        mirrored=jnp.asarray(mirrored))[0])(model)

  def reached(offset):
    return bool(np.abs(np.asarray(offset[...])).max() > 0)

  assert reached(grads_of((True, False)).cnn1_mirror_offset)
  assert not reached(grads_of((False, False)).cnn1_mirror_offset)
  if kind == 'pose_aware':
    # CNN2's offset: only on the faces that exactly one of the augmentation and the spatial
    # transform mirrored (a face mirrored twice is back in its annotated orientation).
    flipped = np.asarray(model.spatial_transform(truth)[1])
    assert not reached(grads_of(tuple(flipped)).mirror_offset)
    assert reached(grads_of(tuple(~flipped)).mirror_offset)


@pytest.mark.parametrize('kind', ['pose_aware', 'plain'])
def test_heatmap_loss_adds_each_networks_divergence(reference, kind):
  """``heatmap_weight``: the loss is the coordinates' loss plus the weight times each network's
  heatmap divergence (reported as ``loss_heatmap``), and it trains the logits; without the
  weight the loss is the coordinates' alone; a pooled head has no heatmap to read."""
  kwargs = dict(depth='tiny', image_size=SIZE, head='heatmap', heatmap_stride=4,
                rngs=nnx.Rngs(0))
  net = (aligner_lib.PoseAwareAligner(pose_reference=reference, **kwargs) if kind == 'pose_aware'
         else aligner_lib.PlainAligner(**kwargs))
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)), jnp.float32)
  first = net.cnn1 if kind == 'pose_aware' else net.net
  mean = np.asarray(first.mean_shape[...])
  gt = jnp.asarray(np.stack([mean + 1.5, mean - 2.0]), jnp.float32)
  plain_loss, plain_aux = aligner_lib.compute_losses(net, images, gt,
                                                     transform_from='ground_truth')
  assert 'loss_heatmap' not in plain_aux
  loss, aux = aligner_lib.compute_losses(net, images, gt, transform_from='ground_truth',
                                         heatmap_weight=0.5, heatmap_sigma=1.0)
  assert float(aux['loss_heatmap']) > 0
  np.testing.assert_allclose(float(loss), float(plain_loss) + 0.5 * float(aux['loss_heatmap']),
                             rtol=1e-5)
  grads = nnx.grad(lambda m: aligner_lib.compute_losses(
      m, images, gt, transform_from='ground_truth', heatmap_weight=0.5)[1]['loss_heatmap'])(net)
  kernel = (grads.cnn1 if kind == 'pose_aware' else grads.net).heatmap.logits.kernel[...]
  assert np.abs(np.asarray(kernel)).max() > 0
  assert first.heatmap.stride == 4
  pooled = resnet_lib.LandmarkRegressor(68, depth='tiny', image_size=SIZE, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs head='heatmap'"):
    pooled.points_and_heatmap(images)


def test_heatmap_target_leaves_the_mirror_offset_out():
  """The learned mirror offset is added after the head, so on a mirrored face the heatmap's
  target is the annotation minus the offset: the same losses as a network without the offset
  trained towards the moved annotation."""
  kwargs = dict(depth='tiny', image_size=SIZE, head='heatmap', heatmap_stride=4)
  with_offset = aligner_lib.PlainAligner(cnn1_mirror_offset=True, rngs=nnx.Rngs(0), **kwargs)
  without = aligner_lib.PlainAligner(rngs=nnx.Rngs(0), **kwargs)
  offset = np.full((68, 2), 3.0, np.float32)
  with_offset.cnn1_mirror_offset[...] = jnp.asarray(offset)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)), jnp.float32)
  mean = np.asarray(without.net.mean_shape[...])
  gt = jnp.asarray(np.stack([mean + 1.5, mean - 2.0]), jnp.float32)
  _, a = aligner_lib.compute_losses(with_offset, images, gt, heatmap_weight=1.0,
                                    mirrored=jnp.asarray([True, True]))
  _, b = aligner_lib.compute_losses(without, images, gt - offset, heatmap_weight=1.0)
  for key in ('loss_heatmap', 'loss_cnn1'):
    np.testing.assert_allclose(float(a[key]), float(b[key]), rtol=1e-5, err_msg=key)


def test_mirror_offset_moves_cnn2s_points_on_mirrored_faces_only(reference):
  """``mirror_offset``: zero at the start (the model's outputs as without it); set, it moves
  CNN2's points of the mirrored faces, in its frame, and nothing else; the loss trains it
  through the mirrored faces only."""
  kwargs = dict(depth='tiny', image_size=SIZE, pose_reference=reference)
  with_offset = aligner_lib.PoseAwareAligner(mirror_offset=True, rngs=nnx.Rngs(0), **kwargs)
  without = aligner_lib.PoseAwareAligner(rngs=nnx.Rngs(0), **kwargs)
  with_offset.eval()
  without.eval()
  canon = np.asarray(without.canonical_shape[...])
  centre = np.array([SIZE / 2 - 0.5] * 2)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)), jnp.float32)
  a, b = with_offset(images), without(images)
  np.testing.assert_array_equal(np.asarray(a['points']), np.asarray(b['points']))
  with_offset.mirror_offset[...] = jnp.full_like(with_offset.mirror_offset[...], 1.0)
  moved = with_offset(images)
  flipped = np.asarray(moved['flipped'])
  change = np.abs(np.asarray(moved['stable']) - np.asarray(a['stable'])).max(axis=(1, 2))
  assert ((change > 0.1) == flipped).all()
  np.testing.assert_array_equal(np.asarray(moved['rough']), np.asarray(a['rough']))
  # The loss's gradient reaches the offset only through mirrored faces.
  with_offset.train()
  for amounts, reaches in (((-0.4, -0.3), True), ((0.4, 0.3), False)):
    truth = jnp.asarray(np.stack([_similarity(_turned(canon, t), 0.0, 1.0, (0, 0), centre)
                                  for t in amounts]), jnp.float32)
    grads = nnx.grad(lambda m: aligner_lib.compute_losses(
        m, images, truth, transform_from='ground_truth')[0])(with_offset)
    assert bool(np.abs(np.asarray(grads.mirror_offset[...])).max() > 0) == reaches
