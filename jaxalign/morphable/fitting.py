"""Batched, jit-compiled 3DMM fitting in JAX: eos's ``fit_shape_and_pose`` algorithm.

Per face and iteration (as eos 1.5.0 ``fitting.hpp``): (1) a linear scaled-orthographic camera
from the current 2D-3D correspondences (affine least squares, rows orthonormalised by SVD,
``estimate_orthographic_projection_linear``); (2) the shape coefficients by Tikhonov-regularised
linear least squares with the expressions fixed (``fit_shape_to_landmarks_linear``: residual
variance 3 px^2, prior weight ``lambda_identity``); (3) the blendshape weights by non-negative
least squares with the shape fixed (``fit_blendshapes_to_landmarks_nnls``). The initial camera
and expressions come from the mean shape, then ``num_iterations`` rounds of (1)-(3).

Differences from eos, all opt-in through :class:`FitConfig` except the first:

* Per-point weights (0 = ignored): one compiled function serves any subset of the 68 points
  (masks instead of shapes); NaN points get weight 0.
* Jaw points in the input (which eos matches with its contour and occluding-edge search) are
  matched to the vertices of the '2d' convention of :mod:`jaxalign.morphable.contour`: the
  near-side contour vertex, or on the far side the silhouette vertex of the jaw point's slice,
  re-chosen every iteration from the current pose and shape.
* ``lambda_expression`` (default 0, as eos): a ridge prior on the blendshape weights.

The landmark set is the same for all faces, so the model rows of the fixed-vertex points
(mean, shape basis, blendshapes: (68, 3, .)) are gathered once at build time.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.morphable import contour

_SIGMA2 = 3.0      # eos's detector variance sqrt(3)^2 in fit_shape_to_landmarks_linear


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Fitting parameters (hashable: a static argument of the jitted fit).

  Attributes:
    num_iterations: rounds of pose, shape, expression (eos default 5).
    lambda_identity: Tikhonov weight on the shape coefficients (eos default 30 in eos-py).
    lambda_expression: ridge weight on the blendshape weights (eos: 0, plain NNLS).
    num_shape: leading shape components fitted (None = all 63).
    nnls_sweeps: projected Gauss-Seidel sweeps of the 6-variable NNLS.
    dynamic_contour: match input jaw points to the '2d' silhouette vertices (otherwise to the
      fixed '3d' vertices).
    noise_mm: None = eos's noise model (residual variance 3 px^2 whatever the face size); a
      value = residual standard deviation in model millimetres (scale-invariant: residuals are
      divided by the camera scale), so ``lambda_identity`` means the same at any resolution.
    noise_px: with ``noise_mm``, a second, resolution-bound part of the landmark noise: a
      standard deviation in image pixels whose variance adds to ``noise_mm``'s (scaled to
      pixels), ``(s noise_mm)^2 + noise_px^2`` per coordinate. A landmark's error has a part
      that grows with the face (where a point lies on it is ambiguous: ``noise_mm``) and a
      part that does not (the pixel grid, a detector's resolution: ``noise_px``); eos models
      only the second, ``noise_mm`` alone only the first. 0 = off.
    solver: 'cg' (preconditioned conjugate gradients, warm-started; fast on the CPU) or
      'direct' (LU solve of the normal equations, as eos).
    cg_steps: CG steps per shape solve.
    adaptive_noise: after ``num_iterations`` rounds, estimate each face's residual noise level
      (model mm, degrees-of-freedom corrected) and, where it exceeds ``noise_mm``, fit
      ``num_iterations`` more rounds with it as the noise model (a stronger shape prior for
      noisy landmarks). Needs ``noise_mm``.
    huber: with ``adaptive_noise``, down-weight in the second pass the points whose first-pass
      residual exceeds ``huber`` times the face's noise level (Huber weights ``min(1, huber *
      noise / residual)``), so that a few wild points do not bend the shape. None = off (the
      default: it helps against outliers, 25 % lower UL error with 3 SLs per face displaced by
      15 % of the box, but changes nothing on Gaussian noise or on CNN2's SLs here, and costs
      about 3x, as the batch can no longer share the Gram matrices).
  """

  num_iterations: int = 5
  lambda_identity: float = 30.0
  lambda_expression: float = 0.0
  num_shape: int | None = None
  nnls_sweeps: int = 12
  dynamic_contour: bool = True
  noise_mm: float | None = None
  noise_px: float = 0.0
  solver: str = 'cg'
  cg_steps: int = 8
  adaptive_noise: bool = False
  huber: float | None = None


EOS_DEFAULTS = FitConfig()
# The JAX backend's completion defaults, chosen on synthetic faces (``python -m jaxalign.bench
# completion --tune``: 128 faces from the model with 1 mm vertex mismatch and 1 % 2D noise):
# a scale-invariant noise model of 2 mm with a unit prior, and the 30 leading shape components
# (the remaining 33 change the ULs by < 0.05 % NME there, and halve the cost). The noise level
# adapts per face (3 rounds, then 3 more with the face's own residual noise level where it is
# above 2 mm): on validation faces (renderer seed 2024, not the reported ones) this keeps the
# clean-SL accuracy of 5 plain rounds and cuts the UL error under SL noise of 4 % of the face
# box (CNN2's level) by 4 % (inner) and 11 % (jaw); the fit alone runs at about 0.6x the speed
# of 5 plain rounds (8.2k vs 14.3k faces/s on the shared 2-core CPU).
TUNED_SYNTHETIC = FitConfig(num_iterations=3, lambda_identity=1.0, noise_mm=2.0, num_shape=30,
                            adaptive_noise=True)
# The prior chosen on real annotations (issue 21; docs/method.md, "Choosing the 3DMM prior on
# real annotations"; ``python -m jaxalign.bench completion --prior-grid``): on the 2,012 300-W
# training faces, from ground-truth SLs, all 63 shape components and a ridge of 30 on the
# expression weights (eos and TUNED_SYNTHETIC: none) complete the ULs at 8.56 % inter-ocular NME
# (jaw 12.72 %) against TUNED_SYNTHETIC's 8.63 % (12.85 %) and eos's 8.86 % (12.98 %), and stay
# ahead of TUNED_SYNTHETIC with 1 % and 2 % box noise on the SLs and on the synthetic benchmarks.
# The fit costs about twice as much. (40 components score the same on real faces, but 8 CG
# steps do not converge there: the batch-shared and per-face solves differ by pixels.)
REAL_PRIOR_NUM_SHAPE = None
REAL_PRIOR_LAMBDA_EXPRESSION = 30.0
# The JAX backend's default (``completion.JAX_DEFAULTS``): TUNED_SYNTHETIC with the real prior.
TUNED = dataclasses.replace(TUNED_SYNTHETIC, num_shape=REAL_PRIOR_NUM_SHAPE,
                            lambda_expression=REAL_PRIOR_LAMBDA_EXPRESSION)


class Fit(dict):
  """Batched fit result (a dict of jnp arrays, attribute access), leading axis N:

  shape_coeffs (N, K), expression_coeffs (N, E), rotation (N, 3, 3), translation (N, 2) (model
  units), scale (N,), camera (N, 2, 4) affine camera to pixels, yaw / pitch / roll (N,) degrees
  (eos's convention), vertex_ids (N, 68) the vertex each point was matched to in the last round,
  noise_mm (N,) the noise model of the last round (model mm; NaN under eos's pixel model).
  """

  __getattr__ = dict.__getitem__


jax.tree_util.register_pytree_node(
    Fit, lambda f: (tuple(f.values()), tuple(f.keys())),
    lambda keys, values: Fit(zip(keys, values)))


def yaw_pitch_roll(rotation):
  """(..., 3) eos's Tait-Bryan angles in degrees from (..., 3, 3) rotations.

  eos (``RenderingParameters::get_yaw_pitch_roll``) decomposes R = R_y(yaw) R_x(pitch) R_z(roll):
  yaw = atan2(R02, R22), pitch = asin(-R12), roll = atan2(R10, R11).
  """
  r = rotation
  yaw = jnp.arctan2(r[..., 0, 2], r[..., 2, 2])
  pitch = jnp.arcsin(jnp.clip(-r[..., 1, 2], -1.0, 1.0))
  roll = jnp.arctan2(r[..., 1, 0], r[..., 1, 1])
  return jnp.degrees(jnp.stack([yaw, pitch, roll], -1))


# Small contractions (over 2, 3 or 4 entries, or the 6 blendshapes) are written below as
# elementwise products and sums rather than ``@`` / einsum: under ``vmap`` a tiny matrix product
# becomes a batched dot_general of tiny matrices, which XLA's CPU backend runs several times
# slower than the same arithmetic fused elementwise (the fit is mostly such products).


def _dot(a, b):
  """sum(a * b) over the last (short) axis, unrolled: a chain of fused multiply-adds (XLA's CPU
  backend runs a reduction over a handful of entries as a separate, slower kernel)."""
  p = a * b
  out = p[..., 0]
  for i in range(1, p.shape[-1]):
    out = out + p[..., i]
  return out


def _first_argmax(x):
  """jnp.argmax over the last axis (the first maximum) as two plain reductions (the CPU
  backend's variadic argmax reduction is several times slower)."""
  iota = jnp.arange(x.shape[-1], dtype=jnp.int32)
  top = jnp.max(x, axis=-1, keepdims=True)
  return jnp.minimum(jnp.min(jnp.where(x == top, iota, x.shape[-1]), axis=-1), x.shape[-1] - 1)


def _project(vertices, camera):
  """:func:`contour.project`, elementwise: (..., L, 3) under (..., 2, 4) -> (..., L, 2)."""
  v, c = vertices[..., :, None, :], camera[..., None, :, :]
  return (v[..., 0] * c[..., 0] + v[..., 1] * c[..., 1] + v[..., 2] * c[..., 2]) + c[..., 3]


def _gram_of_lin(lin):
  """(3, 3) C'C of a camera's linear part lin (2, 3), elementwise."""
  return lin[0][:, None] * lin[0][None, :] + lin[1][:, None] * lin[1][None, :]


def _times_lin(r, lin):
  """(L, 3) = r @ lin for r (L, 2) and a camera's linear part lin (2, 3), elementwise."""
  return r[:, 0:1] * lin[None, 0] + r[:, 1:2] * lin[None, 1]


def _weighted_solve(a, b, w):
  """min_x sum_i w_i |a_i x - b_i|^2 for a (L, 4), b (L,) or (L, M) (M right-hand sides at
  once), via the normal equations (+ tiny ridge)."""
  aw = a * w[:, None]
  ata = jnp.sum(aw[:, :, None] * a[:, None, :], axis=0)
  atb = jnp.sum(aw.reshape(aw.shape + (1,) * (b.ndim - 1)) * b[:, None], axis=0)
  return _small_spd_solve(ata + 1e-9 * jnp.trace(ata) * jnp.eye(4), atb)


def _small_spd_solve(a, b):
  """Solves a x = b for a small SPD matrix by an unrolled Cholesky factorisation.

  Vectorises across a vmapped batch as plain elementwise ops (LAPACK calls per 4x4 matrix cost
  more than the arithmetic on the CPU).
  """
  n = a.shape[0]
  l = [[None] * n for _ in range(n)]
  for j in range(n):
    d = a[j, j] - sum(l[j][k] * l[j][k] for k in range(j))
    l[j][j] = jnp.sqrt(jnp.maximum(d, 1e-30))
    for i in range(j + 1, n):
      l[i][j] = (a[i, j] - sum(l[i][k] * l[j][k] for k in range(j))) / l[j][j]
  y = [None] * n
  for i in range(n):
    y[i] = (b[i] - sum(l[i][k] * y[k] for k in range(i))) / l[i][i]
  x = [None] * n
  for i in reversed(range(n)):
    x[i] = (y[i] - sum(l[k][i] * x[k] for k in range(i + 1, n))) / l[i][i]
  return jnp.stack(x)


def estimate_camera(points, model_points, weights, image_height):
  """eos ``estimate_orthographic_projection_linear`` (weighted) for one face.

  Args:
    points: (L, 2) image pixels. model_points: (L, 3). weights: (L,). image_height: scalar.

  Returns:
    (rotation (3, 3), translation (2,) model units, scale, camera (2, 4)).
  """
  a = jnp.concatenate([model_points, jnp.ones_like(model_points[:, :1])], -1)
  # Both image rows share the design matrix: one factorisation, two right-hand sides.
  rhs = jnp.stack([points[:, 0], image_height - points[:, 1]], -1)   # eos flips y (viewport)
  k = _weighted_solve(a, rhs, weights)
  k1, k2 = k[:, 0], k[:, 1]
  r1, r2 = k1[:3], k2[:3]
  s = 0.5 * (jnp.linalg.norm(r1) + jnp.linalg.norm(r2))
  n1, n2 = r1 / jnp.linalg.norm(r1), r2 / jnp.linalg.norm(r2)
  r = jnp.stack([n1, n2, jnp.cross(n1, n2)])
  rot = _polar(r)
  t = jnp.stack([k1[3], k2[3]]) / s
  cam = contour.camera_from_pose(rot, t, s, image_height)
  return rot, t, s, cam


def _nnls(q, c, sweeps, x0=None):
  """min 1/2 x'Qx + c'x, x >= 0, by projected Gauss-Seidel (small dense Q, coordinates unrolled)."""
  n = q.shape[0]
  diag = jnp.maximum(jnp.diag(q), 1e-12)

  def sweep(_, x):
    for i in range(n):
      x = x.at[i].set(jnp.maximum(0.0, x[i] - (_dot(q[i], x) + c[i]) / diag[i]))
    return x

  return jax.lax.fori_loop(0, sweeps, sweep, jnp.zeros_like(c) if x0 is None else x0)


def _pcg(q, c, x0, precond, steps):
  """Solves q x = c (SPD) by ``steps`` of preconditioned conjugate gradients from x0.

  Batched small solves are cheaper as matrix-vector products than as per-matrix LAPACK calls on
  the CPU; with the model-derived preconditioner and a warm start a few steps reach float32
  accuracy (checked against a direct solve in the tests).
  """
  r = c - q @ x0
  z = precond(r)
  p = z
  rz = r @ z

  def step(_, state):
    x, r, p, rz = state
    qp = q @ p
    alpha = rz / jnp.maximum(p @ qp, 1e-30)
    x = x + alpha * p
    r = r - alpha * qp
    z = precond(r)
    rz_new = r @ z
    p = z + (rz_new / jnp.maximum(rz, 1e-30)) * p
    return x, r, p, rz_new

  x, *_ = jax.lax.fori_loop(0, steps, step, (x0, r, p, rz))
  return x


def _polar(r, steps=6):
  """Nearest rotation to a near-orthogonal 3x3 with det > 0 (Newton: X <- (X + X^-T) / 2).

  Equals eos's U V^T from the SVD; the input's rows are unit vectors and the third is their
  cross product, so det > 0 and the iteration converges quadratically.
  """
  def step(_, x):
    cof = jnp.stack([jnp.cross(x[1], x[2]), jnp.cross(x[2], x[0]), jnp.cross(x[0], x[1])])
    det = _dot(x[0], cof[0])
    return 0.5 * (x + cof / det)        # X^-T = cofactor matrix / det
  return jax.lax.fori_loop(0, steps, step, r)


class JaxFitter:
  """The Surrey Face Model as jnp arrays and a jitted, vmapped :meth:`fit`.

  Args:
    model: a :class:`~jaxalign.morphable.model.SurreyModel`.
  """

  def __init__(self, model):
    self.model = model
    geo = contour.landmark_geometry(model)
    self.geometry = geo
    ids = geo.vertices                                         # (68,) '3d' vertices
    self.landmark_vertices = ids
    self.jaw_points = np.asarray(geo.jaw_points)
    self._used = np.unique(np.concatenate([ids, geo.candidates.reshape(-1)]))
    # Positions of the '3d' vertices and the slice candidates among the used vertices.
    self._used_fixed = np.searchsorted(self._used, ids)
    self._used_cand = np.searchsorted(self._used, geo.candidates)
    # The model's rows the fit and the readout need: passed to the compiled functions as
    # arguments (not closed over, which would bake megabytes of constants into every program).
    # Only the vertices a point can use (the '3d' vertices and the jaw slices' candidates).
    cand_pos = self._used_cand
    self.arrays = {
        'lm_mean': jnp.asarray(model.mean[ids]),                     # (68, 3)
        'lm_shape': jnp.asarray(model.shape_basis[ids]),             # (68, 3, K)
        'lm_expr': jnp.asarray(model.expression_basis[ids]),         # (68, 3, E)
        'used_mean': jnp.asarray(model.mean[self._used]),            # (U, 3)
        'used_shape': jnp.asarray(model.shape_basis[self._used]),    # (U, 3, K)
        'used_expr': jnp.asarray(model.expression_basis[self._used]),  # (U, 3, E)
        'cand': jnp.asarray(geo.candidates),                         # (16, Kc) vertex ids
        'cand_pos': jnp.asarray(cand_pos),                           # (16, Kc) rows of used_*
    }
    self.jaw_side = np.asarray(geo.jaw_side, np.float32)
    self._jitted = {}
    # Distinct batch sizes compiled so far, per compiled function (for tests and diagnostics).
    self.compiled_sizes = {}

  # --- one face ---------------------------------------------------------------------------

  def _jaw_ids(self, arrs, a, b, cam):
    """(16,) current '2d' vertex of each jaw point (far side: slice silhouette), as positions
    in the used-vertex rows ``arrs['used_*']``."""
    pos = arrs['cand_pos']
    k = a.shape[-1]
    verts = (arrs['used_mean'][pos]
             + jnp.einsum('pkjn,n->pkj', arrs['used_shape'][pos][..., :k], a)
             + jnp.einsum('pkjm,m->pkj', arrs['used_expr'][pos], b))   # (16, Kc, 3)
    proj = contour.project(verts, cam)
    u = contour.marching_directions(cam, self.geometry)
    best = jnp.argmax(jnp.einsum('pkj,pj->pk', proj, u), axis=-1)
    marched = jnp.take_along_axis(pos, best[:, None], axis=1)[:, 0]
    far = contour.yaw_sign(cam) * jnp.asarray(self.jaw_side) > 0
    return jnp.where(far, marched, jnp.asarray(self._used_fixed[self.jaw_points]))

  def _rows(self, arrs, jaw_pos, k):
    """Model rows (68, 3, .) of the current correspondences (jaw rows from ``jaw_pos``)."""
    jp = self.jaw_points
    m = arrs['lm_mean'].at[jp].set(arrs['used_mean'][jaw_pos])
    s = arrs['lm_shape'][..., :k].at[jp].set(arrs['used_shape'][jaw_pos][..., :k])
    e = arrs['lm_expr'].at[jp].set(arrs['used_expr'][jaw_pos])
    return m, s, e

  def _fit_one(self, arrs, points, weights, image_height, pre_vecs, pre_vals, gram,
               config: FitConfig):
    k = self.model.num_shape if config.num_shape is None else config.num_shape
    finite = jnp.all(jnp.isfinite(points), axis=-1)
    w = jnp.where(finite, weights, 0.0)
    pts = jnp.where(finite[:, None], points, 0.0)
    use_jaw = config.dynamic_contour
    jaw_w = w[self.jaw_points].sum()
    m, sb, eb = arrs['lm_mean'], arrs['lm_shape'][..., :k], arrs['lm_expr']
    a = jnp.zeros(k, jnp.float32)
    b = jnp.zeros(eb.shape[-1], jnp.float32)
    eos_noise = config.noise_mm is None

    # ``noise`` is the residual standard deviation in model mm (traced: the adaptive pass
    # changes it per face); ignored under eos's pixel noise model.
    px2 = jnp.float32(config.noise_px) ** 2

    def noise_scale(scale, noise):
      if eos_noise:
        return 1.0 / _SIGMA2
      return 1.0 / ((scale * noise) ** 2 + px2)

    def fit_expr(cam, m, sb, eb, a, scale, noise, w, gram, b0=None):
      ne = eb.shape[-1]
      wf = w * noise_scale(scale, noise)
      base = m + sb @ a
      lin = cam[:, :3]
      r0 = _project(base, cam) - pts                                  # (L, 2)
      # c = A' W r0 with A = C E, as in fit_shape.
      c = jnp.einsum('lk,lkm->m', _times_lin(r0 * wf[:, None], lin), eb)
      if gram is None:
        ae = jnp.einsum('jk,lkm->ljm', lin, eb)                        # (L, 2, E)
        aw = (ae * wf[:, None, None]).reshape(-1, ne)
        q = aw.T @ ae.reshape(-1, ne)
      else:
        # Shared weights and fixed rows: A' W A = sum_ab (C'C)_ab G_ab, G precomputed.
        ctc = _gram_of_lin(lin).reshape(9)
        q = noise_scale(scale, noise) * _dot(ctc, gram[1].reshape(ne * ne, 9)).reshape(ne, ne)
      q = q + config.lambda_expression * jnp.eye(ne)
      # Warm start from the previous round's weights (Gauss-Seidel converges to the same
      # minimiser; the problem is strictly convex when the 6 blendshapes are observed).
      return _nnls(q, c, config.nnls_sweeps, b0)

    def gain_of(scale, noise):
      """Data-term weight per (model mm)^2 of residual, for the preconditioner and df."""
      return scale * scale / (_SIGMA2 if eos_noise else (scale * noise) ** 2 + px2)

    def fit_shape(cam, m, sb, eb, b, scale, noise, a0, w, gram):
      wf = w * noise_scale(scale, noise)
      base = m + eb @ b
      r0 = _project(base, cam) - pts
      lin = cam[:, :3]
      # c = A' W r0 without forming A = C V: (C' r0_l) first, then the basis rows.
      c = jnp.einsum('lk,lkn->n', _times_lin(r0 * wf[:, None], lin), sb)
      if gram is None:
        asb = jnp.einsum('jk,lkn->ljn', lin, sb)                       # (L, 2, K)
        aw = (asb * wf[:, None, None]).reshape(-1, k)
        q = aw.T @ asb.reshape(-1, k)
      else:
        # Shared weights: A' W A = sum_ab (C'C)_ab H_ab with H precomputed for the batch.
        ctc = _gram_of_lin(lin).reshape(1, 9)
        q = noise_scale(scale, noise) * (ctc @ gram[0].reshape(9, k * k)).reshape(k, k)
      q = q + config.lambda_identity * jnp.eye(k)
      if config.solver == 'direct':
        return jnp.linalg.solve(q, -c)
      # Preconditioner: the same system for a frontal camera with the batch's mean weights.
      inv = 1.0 / (config.lambda_identity + gain_of(scale, noise) * pre_vals)
      return _pcg(q, -c, a0, lambda r: pre_vecs @ (inv * (pre_vecs.T @ r)), config.cg_steps)

    # Initial pose on the mean (jaw points on their fixed vertices), then expressions.
    noise0 = jnp.float32(1.0 if eos_noise else config.noise_mm)
    w0 = w.at[self.jaw_points].set(0.0) if use_jaw else w
    rot, t, s, cam = estimate_camera(pts, m, w0, image_height)
    b = fit_expr(cam, m, sb, eb, a, s, noise0, w, gram)

    def rows_of(a, b, cam, ids):
      if use_jaw:
        ids = jnp.where(jaw_w > 0, self._jaw_ids(arrs, a, b, cam), ids)
        mm, ss, ee = self._rows(arrs, ids, k)
        return mm, ss, ee, ids
      return m, sb, eb, ids

    def rounds(state, w, gram):
      # w and gram are arguments (not closed over) so that a second call with other weights
      # traces a new loop body: JAX caches a loop body's trace by the function object.
      def body(_, state):
        a, b, rot, t, s, cam, ids, noise = state
        mm, ss, ee, ids = rows_of(a, b, cam, ids)
        shape_now = mm + ss @ a + ee @ b
        rot, t, s, cam = estimate_camera(pts, shape_now, w, image_height)
        a = fit_shape(cam, mm, ss, ee, b, s, noise, a, w, gram)
        b = fit_expr(cam, mm, ss, ee, a, s, noise, w, gram, b)
        return a, b, rot, t, s, cam, ids, noise
      return jax.lax.fori_loop(0, config.num_iterations, body, state)

    ids0 = jnp.asarray(self._used_fixed[self.jaw_points])
    state = rounds((a, b, rot, t, s, cam, ids0, noise0), w, gram)
    if config.adaptive_noise and not eos_noise:
      # Empirical noise level of this face: the residual variance of the fit per observed
      # coordinate, in model mm, corrected for the degrees of freedom the fit spent (the rigid
      # pose, the active blendshapes, and the shape's effective number of parameters under the
      # prior, from the frontal eigenvalues of the data term). Noisier SLs than the default
      # noise model assumes get a proportionally stronger shape prior; cleaner ones keep it.
      a, b, rot, t, s, cam, ids, noise = state
      mm, ss, ee, _ = rows_of(a, b, cam, ids)
      res = _project(mm + ss @ a + ee @ b, cam) - pts
      rss = (w @ _dot(res, res)) / (s * s)
      g = gain_of(s, noise) * pre_vals
      df = 6.0 + jnp.sum(b > 0) + jnp.sum(g / (g + config.lambda_identity))
      n_obs = 2.0 * jnp.sum(w)
      sigma = jnp.sqrt(rss / jnp.maximum(n_obs - df, 1.0))
      # sigma is the total noise (in mm); the pixel part stays, the rest is the mm part.
      noise = jnp.sqrt(jnp.maximum(noise0 ** 2, sigma ** 2 - px2 / (s * s))).astype(jnp.float32)
      if config.huber is not None:
        # Huber weights from the first pass's residuals: points further than huber * noise
        # from the fit count as outliers and are down-weighted in proportion.
        r = jnp.sqrt(jnp.sum(res * res, -1)) / s
        w = w * jnp.minimum(1.0, config.huber * noise / jnp.maximum(r, 1e-6))
        gram = None        # the batch-shared Gram matrices assume the shared weights
      state = rounds((a, b, rot, t, s, cam, ids, noise), w, gram)
    a, b, rot, t, s, cam, ids, noise = state
    vertex_ids = jnp.asarray(self.landmark_vertices).at[self.jaw_points].set(
        jnp.asarray(self._used)[ids])
    ypr = yaw_pitch_roll(rot)
    full_a = jnp.zeros(self.model.num_shape, jnp.float32).at[:k].set(a)
    return Fit(shape_coeffs=full_a, expression_coeffs=b, rotation=rot, translation=t, scale=s,
               camera=cam, yaw=ypr[0], pitch=ypr[1], roll=ypr[2], vertex_ids=vertex_ids,
               noise_mm=noise if not eos_noise else jnp.float32(jnp.nan))

  # --- batched, jitted --------------------------------------------------------------------

  def _compiled(self, config, convention=None):
    """The jitted batched fit; with a ``convention``, it also reads the 68 points off the fits
    in the same compiled call (no second dispatch, only the fitted shape components).

    Called as ``f(arrays, points, weights, heights)``: the model rows are an argument."""
    key = (config, convention)
    if key not in self._jitted:
      k = self.model.num_shape if config.num_shape is None else config.num_shape
      frontal = jnp.asarray([1.0, 1.0, 0.0])

      def batched(arrs, points, weights, heights):
        shared = weights.ndim == 1
        one = jax.vmap(functools.partial(self._fit_one, arrs, config=config),
                       in_axes=(0, None if shared else 0, 0, None, None, None))
        finite = jnp.all(jnp.isfinite(points), axis=-1)
        sb = arrs['lm_shape'][..., :k]
        wbar = weights if shared else jnp.mean(jnp.where(finite, weights, 0.0), axis=0)
        gram = None
        if shared and not config.dynamic_contour:
          # Gram matrices of the shape (9, K, K) and the expression rows (E, E, 9: laid out
          # for an elementwise contraction) at the points, shared by the whole batch. Not with
          # the dynamic contour: there the jaw points' rows move to per-face silhouette
          # vertices, so the fixed rows' Gram matrices would be wrong.
          eb = arrs['lm_expr']
          gram = (jnp.einsum('l,lan,lbm->abnm', weights, sb, sb),
                  jnp.einsum('l,lan,lbm->nmab', weights, eb, eb))
        m0 = jnp.einsum('l,lkn,k,lkm->nm', wbar, sb, frontal, sb)
        vals, vecs = jnp.linalg.eigh(m0)
        fit = one(points, weights, heights, vecs, jnp.maximum(vals, 0.0), gram)
        if convention is None:
          return fit
        return fit, self._landmarks(arrs, fit['shape_coeffs'][..., :k],
                                    fit['expression_coeffs'], fit['camera'], convention)

      self._jitted[key] = jax.jit(batched)
    return self._jitted[key]

  def _run(self, key_config, convention, args, n, single):
    """Runs the compiled fit on padded chunks of the batch; un-pads and concatenates."""
    fn = self._compiled(key_config, convention)
    pts, w, h = args
    outs = []
    for start in range(0, max(n, 1), MAX_CHUNK):
      m = min(n - start, MAX_CHUNK) if n else 0
      size = padded_size(m)
      sl = slice(start, start + m)
      # Pad with copies of the chunk's first face (well-posed; the copies are dropped).
      idx = np.concatenate([np.arange(m), np.zeros(size - m, np.int64)]) if m else (
          np.zeros(size, np.int64))
      cp = pts[sl] if m else np.zeros((1, 68, 2), np.float32)
      ch = h[sl] if m else np.ones(1, np.float32)
      cw = w if w.ndim == 1 else (w[sl] if m else np.zeros((1, 68), np.float32))
      cw = cw if cw.ndim == 1 else cw[idx]
      self.compiled_sizes.setdefault((key_config, convention), set()).add(size)
      out = fn(self.arrays, jnp.asarray(cp[idx]), jnp.asarray(cw), jnp.asarray(ch[idx]))
      outs.append(jax.tree_util.tree_map(lambda x, m=m: x[:m], out))
      if not n:
        break
    out = outs[0] if len(outs) == 1 else jax.tree_util.tree_map(
        lambda *xs: jnp.concatenate(xs), *outs)
    if single:
      out = jax.tree_util.tree_map(lambda x: x[0], out)
    return out

  def fit(self, points, weights=None, image_height=None, config: FitConfig = EOS_DEFAULTS) -> Fit:
    """Fits N faces at once.

    Args:
      points: (N, 68, 2) or (68, 2) iBUG points in image pixels; NaN = not given.
      weights: (68,) or (N, 68) per-point weights (0 = ignore); default 1 for every finite point.
        A point's weight divides its residual variance (weighted least squares).
      image_height: scalar or (N,) image heights in pixels (only fixes eos's y-flip; any value
        gives the same projections). Default: each face's max y + 1.
      config: :class:`FitConfig`.

    Returns:
      :class:`Fit` with leading axis N (no axis for a single (68, 2) input). The batch is padded
      to one of a few fixed sizes (:func:`padded_size`), so any N reuses a compiled program.
    """
    config, args, single, n = self._inputs(points, weights, image_height, config)
    return self._run(config, None, args, n, single)

  def fit_landmarks(self, points, weights=None, image_height=None,
                    config: FitConfig = EOS_DEFAULTS, convention: str = '2d'):
    """:meth:`fit` and :meth:`landmarks` of the fits in one compiled call.

    Returns:
      (:class:`Fit`, (N, 68, 2) jnp float32 iBUG points of the fitted meshes), no N axis for a
      single (68, 2) input.
    """
    if convention not in ('2d', '3d'):
      raise ValueError(f"convention must be '2d' or '3d', got {convention!r}")
    config, args, single, n = self._inputs(points, weights, image_height, config)
    return self._run(config, convention, args, n, single)

  def _inputs(self, points, weights, image_height, config):
    """(config, host arguments (points, weights, heights) of the compiled fit, single, N)."""
    pts = np.asarray(points, np.float32)
    single = pts.ndim == 2
    if single:
      pts = pts[None]
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
      raise ValueError(f'points must be (N, 68, 2) or (68, 2), got {np.shape(points)}')
    n = pts.shape[0]
    if weights is None:
      weights = np.ones(68, np.float32)
    w = np.broadcast_to(np.asarray(weights, np.float32), (n, 68))
    if not np.isfinite(w).all() or (w < 0).any():
      raise ValueError('weights must be finite and >= 0')
    # One weight vector for the whole batch (and no NaN where it is > 0): the Gram matrices of
    # the shape basis at the points are shared and precomputed once per call.
    shared_w = np.asarray(weights, np.float32)
    shared = (shared_w.ndim == 1 or (w == w[:1]).all()) and (
        np.isfinite(pts).all(-1) | (w <= 0)).all()
    if image_height is None:
      image_height = np.nan_to_num(np.nanmax(pts[..., 1], axis=1), nan=0.0) + 1.0
    h = np.broadcast_to(np.asarray(image_height, np.float32), (n,))
    if config.dynamic_contour:
      jaw = self.jaw_points
      given = np.isfinite(pts[:, jaw]).all(-1) & (w[:, jaw] > 0)
      if not given.any():   # no jaw point anywhere: compile the cheaper variant
        config = dataclasses.replace(config, dynamic_contour=False)
    wa = np.ascontiguousarray(w[0] if shared else w) if n else np.ones(68, np.float32)
    if shared:
      pts = np.where(w[..., None] > 0, pts, 0.0).astype(np.float32)
    return config, (pts, wa, np.asarray(h, np.float32)), single, n

  def landmarks(self, fit: Fit, convention: str = '2d'):
    """(..., 68, 2) the iBUG points of fitted meshes (:func:`contour.ibug_points`), jitted."""
    if convention not in ('2d', '3d'):
      raise ValueError(f"convention must be '2d' or '3d', got {convention!r}")
    key = ('landmarks', convention)
    if key not in self._jitted:
      self._jitted[key] = jax.jit(functools.partial(self._landmarks, convention=convention))
    return self._jitted[key](self.arrays, fit.shape_coeffs, fit.expression_coeffs, fit.camera)

  def _landmarks(self, arrs, a, b, cam, convention):
    """:func:`contour.ibug_points` of the meshes (a, b) under ``cam``, from the used vertices.

    Only the '3d' vertices and the jaw slices' candidates are built (a few hundred of the
    model's vertices, gathered once in ``__init__``), not the whole mesh: the same points, at
    a fraction of the cost of a full (N, V, 3) mesh.
    """
    geo = self.geometry
    # ``a`` may hold only the leading components (the fitted ones, in the fused readout).
    shape = arrs['used_shape'][..., :a.shape[-1]]
    part = (arrs['used_mean'] + jnp.einsum('ujk,...k->...uj', shape, a)
            + jnp.einsum('ujm,...m->...uj', arrs['used_expr'], b))        # (..., U, 3)
    fixed = _project(part[..., self._used_fixed, :], cam)                # (..., 68, 2)
    if convention == '3d':
      return fixed
    u = contour.marching_directions(cam, geo)                             # (..., 16, 2)
    cand = _project(part[..., self._used_cand.reshape(-1), :], cam)
    cand = cand.reshape(cand.shape[:-2] + self._used_cand.shape + (2,))
    best = _first_argmax(_dot(cand, u[..., None, :]))
    marched = jnp.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]
    far = (contour.yaw_sign(cam)[..., None] * jnp.asarray(geo.jaw_side, cand.dtype)) > 0
    jaw = jnp.where(far[..., None], marched, fixed[..., geo.jaw_points, :])
    return fixed.at[..., geo.jaw_points, :].set(jaw)

  def vertices(self, fit: Fit):
    """(..., V, 3) fitted meshes (model frame)."""
    m = self.model
    return (jnp.asarray(m.mean)
            + jnp.einsum('vjk,...k->...vj', jnp.asarray(m.shape_basis), fit.shape_coeffs)
            + jnp.einsum('vjm,...m->...vj', jnp.asarray(m.expression_basis),
                         fit.expression_coeffs))


# The compiled fit sees only these batch sizes (powers of 4; larger batches run in chunks of
# MAX_CHUNK): any number of faces reuses one of a handful of programs, at most 4x padding.
BATCH_SIZES = (4, 16, 64, 256, 1024)
MAX_CHUNK = BATCH_SIZES[-1]


def padded_size(n: int) -> int:
  """The compiled batch size for n <= :data:`MAX_CHUNK` faces: the smallest of
  :data:`BATCH_SIZES` that holds them."""
  for size in BATCH_SIZES:
    if n <= size:
      return size
  raise ValueError(f'a chunk holds at most {MAX_CHUNK} faces, got {n}')


@functools.lru_cache(maxsize=4)
def get_fitter(model) -> JaxFitter:
  """A cached :class:`JaxFitter` per model."""
  return JaxFitter(model)
