"""The base training configuration every ``configs/*.py`` file starts from.

``base_config()`` returns an ``ml_collections.ConfigDict`` holding every key the trainer reads,
with the paper's optimisation settings (Li et al., BMVC 2019: wing loss w = 18, epsilon = 3;
SGD momentum 0.9, weight decay 5e-4; learning rate 1e-5 dropping to 1e-7 at step 60,000;
180,000 steps; rotation +-10 degrees, translation +-5 %, scale +-7 % of the box, Gaussian blur
with probability 0.5). Config files override what differs and document the launch command in
their docstring; the command line overrides single keys with ``--config.key=value``.
"""

from __future__ import annotations

import math
import os

import ml_collections

from jaxalign import schemes
from jaxalign.models import resnet

MODEL_KINDS = ('pose_aware', 'plain')
SCHEDULES = ('piecewise', 'constant', 'cosine')
OPTIMIZERS = ('sgd', 'adamw')       # optim.optimizer (jaxalign.training.optim)
MAX_MEMBERS = 16   # config.ensemble.members: more is a typo, not an experiment on this codebase
NORMALIZATIONS = ('inter_ocular', 'inter_pupil', 'bbox')   # == jaxalign.metrics.NORMALIZATIONS


def base_config() -> ml_collections.ConfigDict:
  """All training settings with the paper's values (where the paper gives them)."""
  c = ml_collections.ConfigDict()
  # Top level: what every config names.
  c.seed = 0
  c.num_steps = 180_000
  c.batch_size = 64          # global batch, sharded over every device of every host
  c.checkpoint_every = 5_000
  c.log_every = 100
  c.keep_checkpoints = 3
  # A run's folder (its weights: fine-tuning, synthetic pretraining) or torchvision ResNet
  # weights (.pth / .safetensors, ImageNet) for both CNNs' backbones; '' = random.
  c.init_from = ''
  # A pretraining stage that the same command runs first (jaxalign.workflow.pretrain): the
  # config file (e.g. 'configs/default.py': synthetic faces, our stand-in for ImageNet) trained
  # into WORKDIR/pretrain, whose weights then start this run (as init_from would). Resumable;
  # skipped once finished. '' = none.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.config = ''
  c.pretrain.num_steps = 0   # > 0: the pretraining config's num_steps, its schedule stretched to it
  # An ensemble of this many networks (jaxalign.workflow.train_members; beyond the paper): the
  # same command trains members 1 .. K-1 first, each this config with seed + k's draws into
  # WORKDIR/members/k from the same start (init_from / the pretraining stage), then member 0 in
  # WORKDIR; at test time every member's CNN pair runs on each face and their points are
  # averaged (inference.ModelEnsemble), and the completion's tables are calibrated on that
  # average. 1 = one network (the paper).
  c.ensemble = ml_collections.ConfigDict()
  c.ensemble.members = 1
  # Which member this run is (set by the workflow: 0 = the run itself). Member k draws its
  # random numbers (initialisation, batch order, augmentation) as seed + k would; the data (the
  # held-out split, synthetic faces) stays the seed's, so every member has the same
  # calibration faces (draw_seed).
  c.ensemble.member = 0
  # A face on which the members' CNN1 points lie further apart than this (mean distance over
  # the face box's side) gets the one member whose points fit a rigid 3D face best instead of
  # the mean: one network has collapsed there (inference.ensemble_predictions). 0 = always the
  # mean.
  c.ensemble.max_disagreement = 0.1
  # CPU only: the host's cores as this many JAX devices, data parallel like GPUs (0 = one per
  # core, as many as divide batch_size; 1 = one device, XLA's threads inside each op). No effect
  # with XLA_FLAGS' --xla_force_host_platform_device_count or in multi-process runs.
  c.cpu_devices = 0
  c.distributed = False      # call jax.distributed.initialize() (multi-host)
  # Multi-process launch without a cluster manager (jaxalign.training.distributed); any of
  # them set implies distributed. Unset: SLURM / TPU pod / Open MPI auto-detection.
  c.coordinator_address = ''  # 'host:port' of process 0, e.g. '127.0.0.1:12345'
  c.num_processes = 0        # 0 = auto-detected
  c.process_id = -1          # this process's id, 0 .. num_processes - 1; -1 = auto-detected
  c.distributed_timeout_s = 300   # how long a process waits for the others to join
  c.stop_after_steps = 0     # > 0: stop after this many steps as if killed (resume tests)

  # Model (jaxalign.models).
  c.model = ml_collections.ConfigDict()
  c.model.kind = 'pose_aware'   # 'pose_aware' (CNN1 + transform + CNN2) or 'plain' (one ResNet)
  # Depths are strings so that one key holds '18', '34', '50' and the test variant 'tiny'.
  c.model.depth = '50'          # ResNet-18 / 34 / 50 (or 'tiny' for tests)
  c.model.cnn2_depth = ''       # CNN2's depth; '' = the same as CNN1
  c.model.cnn2_input_size = 0   # CNN2's input side (the canonical frame); 0 = input_size
  # CNN2's training transforms: 'prediction' (warps of CNN1's predictions, the paper) or
  # 'ground_truth' (an oracle warp).
  c.model.transform_from = 'prediction'
  # The similarity fit on the 'stable' points (the ones CNN2 predicts, and where CNN1 is most
  # accurate) or on 'all'; CNN2's frame is framed on the same points, which span cnn2_fill of
  # its input (CNN1's input holds the whole landmark box at 1 / (1 + box_margin) = 0.91).
  c.model.transform_points = 'stable'
  c.model.cnn2_fill = 0.8
  c.model.width = 64            # stem channels of '18'/'34'/'50' (64 = the standard ResNet)
  c.model.cnn2_width = 0        # CNN2's stem channels; 0 = the same as CNN1 (model.width)
  c.model.input_size = 224      # network input side in pixels (the paper: 224)
  c.model.dtype = 'float32'     # compute dtype; parameters stay float32
  # How the ResNets' ops are expressed (same parameters and results; docs/benchmarks.md):
  c.model.conv1x1 = 'dot'       # 1x1 convolutions as matrix products ('conv': lax.conv)
  c.model.max_pool = 'slices'   # stem max pool as a max of slices ('reduce_window': nnx.max_pool)
  c.model.scheme = 'ibug68'
  c.model.flip = True           # mirror left-looking faces before CNN2 (False: no-flip ablation)
  c.model.stable = ''           # comma list of the SL indices; '' = the scheme's own set
  # The regression heads' input: 'mean' (the last feature map pooled globally: torchvision's
  # ResNet, the paper), 'flatten' (the map kept as a grid) or 'heatmap' (a soft argmax with
  # offsets on a finer map of the stages; both beyond the paper, jaxalign.models.resnet.HEADS).
  c.model.head = 'mean'
  c.model.heatmap_stride = 8    # the 'heatmap' head's map: stride 4, 8, 16 or 32 input pixels
  # A learned (K, 2) offset added to CNN2's points on the faces it sees mirrored
  # (models.aligner.PoseAwareAligner.mirror_shift; beyond the paper): 300-W's annotations are
  # not mirror-symmetric, so CNN2's targets move one way on its mirrored faces and the other on
  # the rest (docs/experiments/cpu_300w.md, session 23). Pose-aware model only.
  c.model.cnn2_mirror_offset = False
  # The same for CNN1 (the plain model's one network): a learned (L, 2) offset added to its
  # points on the faces the augmentation mirrors (augment.mirror_prob) and on the mirrored pass
  # of eval.mirror_tta (models.aligner.masked_mirror_offset, rough_points), so that mirrored
  # faces and the test-time mirror average do not pull CNN1 towards the mirrored annotation
  # convention. Beyond the paper.
  c.model.cnn1_mirror_offset = False

  # Data (jaxalign.data.pipeline): 300-W-style folders, or the synthetic default.
  c.data = ml_collections.ConfigDict()
  c.data.train_dir = ''         # folder of images + .pts; '' with synthetic.enabled generates one
  c.data.test_dir = ''          # held-out folder for the end-of-run evaluation ('' = none)
  c.data.test_split = 'test'    # name of the held-out split in eval/<split>/report.json
  # A registered data set (jaxalign.data.sources: '300w', 'cofw68', 'aflw', 'folder',
  # 'the300w_lp', 'aflw2k3d') instead of train_dir; '' = train_dir / synthetic. See
  # docs/datasets.md and configs/paper_*.py.
  c.data.source = ''
  c.data.root = ''              # the data set's folder (the TFDS data dir for TFDS sets)
  c.data.train_split = 'train'
  c.data.options = ml_collections.ConfigDict()        # the source's loader options
  c.data.test_source = ''       # '' = data.source
  c.data.test_root = ''         # '' = data.root
  c.data.test_splits = ()       # every split evaluated into eval/<split>/ (with a source)
  c.data.test_options = ml_collections.ConfigDict()
  c.data.box_margin = 0.1       # network input = box side * (1 + box_margin), square, centred
  # Training faces kept out of the training to measure CNN1's held-out residuals (the
  # completion's fusion weights and mix, eval.completion_fusion / completion_blend); 0 = none.
  c.data.holdout_fraction = 0.0
  # Or a folder of validation faces (images + .pts) for the same purpose; '' = none.
  c.data.val_dir = ''
  c.data.crop_context = 1.3     # host crop = network input region * crop_context (room to augment)
  # Host-crop pixels per network-input pixel; 0 = auto (pose-aware: enough for CNN2's zoom,
  # jaxalign.data.pipeline.host_scale).
  c.data.host_scale = 0.0
  # Decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) that keeps the host crop's
  # resolution (PIL draft mode; jaxalign.data.pipeline.decode_photo).
  c.data.jpeg_draft = True
  # The decode-once crop cache (jaxalign.data.crop_cache, docs/datasets.md): each face's host
  # crop read from DIR instead of decoding its photo at every step. Off by default: it pays
  # where photos are large (real data sets), and costs disk (S * S * 3 bytes a face).
  c.data.crop_cache = ml_collections.ConfigDict()
  c.data.crop_cache.enabled = False
  c.data.crop_cache.dir = 'runs/data/crops'   # one folder serves every data set and setting
  c.data.crop_cache.build = True   # crop missing faces on the first run (False: refuse them)
  c.data.num_workers = -1       # grain worker processes; -1 = one per CPU core, 0 = in-process
  c.data.prefetch = 2           # batches buffered per worker
  c.data.balanced = True        # pose-balanced batches (Procrustes + 1-D PCA bins)
  c.data.pose_bins = 5          # bins over the pose coefficient
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.enabled = False
  c.data.synthetic.root = 'runs/data'   # cache folder: <root>/synthetic-<hash>/{train,test}
  c.data.synthetic.num_train = 2000
  c.data.synthetic.num_test = 200
  c.data.synthetic.num_val = 0   # validation faces (own seed) for CNN1's held-out residuals
  c.data.synthetic.image_size = 128
  c.data.synthetic.kwargs = ml_collections.ConfigDict()  # passed on to the generator

  # Device augmentation (jaxalign.data.pipeline.prepare_batch).
  c.augment = ml_collections.ConfigDict()
  c.augment.enabled = True
  c.augment.rotation_deg = 10.0
  c.augment.translation = 0.05   # fraction of the box side
  c.augment.scale = 0.07         # fraction of the box side
  c.augment.blur_prob = 0.5
  c.augment.blur_sigma = (0.5, 2.0)   # sigma range in pixels at 224 px, scaled with input_size
  # Horizontal mirror (image + the scheme's flip permutation) with this probability. Not in the
  # paper's list; 0 keeps the paper's augmentation (measured on real faces:
  # docs/experiments/cpu_300w.md).
  c.augment.mirror_prob = 0.0
  # CNN2's own geometric augmentation (not in the paper): its crop in the canonical frame moved
  # by U(-t, t) of the frame's side, scaled by 1 + U(-s, s) and turned by U(-r, r) degrees
  # after the spatial transform. The transform undoes the image's augmentation (it normalises
  # the face again), so without this CNN2 sees each training face in one pose only, framed by
  # CNN1's training-set error, which shrinks as CNN1 fits (docs/experiments/cpu_300w.md).
  c.augment.cnn2_rotation_deg = 0.0
  c.augment.cnn2_translation = 0.0
  c.augment.cnn2_scale = 0.0
  # Appearance (not in the paper; 0 keeps the paper's augmentation): on the host crop, so both
  # views see it (jaxalign.data.pipeline.appearance_augment).
  c.augment.brightness = 0.0     # gain 1 + U(-b, b)
  c.augment.contrast = 0.0       # deviation from the crop's mean grey times 1 + U(-c, c)
  c.augment.grey_prob = 0.0      # RGB replaced by its luminance
  c.augment.occlusion_prob = 0.0   # one rectangle of random colour over the face
  c.augment.occlusion_size = (0.1, 0.4)   # its sides, fractions of the face box's side

  # Loss (jaxalign.losses).
  c.loss = ml_collections.ConfigDict()
  c.loss.kind = 'wing'
  c.loss.w = 18.0
  c.loss.epsilon = 3.0
  c.loss.cnn1_weight = 1.0       # CNN1 (all points) and CNN2 (stable points) loss weights
  c.loss.cnn2_weight = 1.0
  # Weight of the face-contour points (scheme.contour: the jaw) against the others in the loss
  # of the network that predicts them (CNN1; never one of CNN2's stable points). 1: the paper.
  c.loss.contour_weight = 1.0
  # Per-face loss weights: '' (the paper: every face alike) or 'inter_ocular' (each face by the
  # batch's mean inter-ocular distance over its own, clipped to [0.5, 3], as the inter-ocular
  # NME weighs its pixels; beyond the paper; jaxalign.training.step.face_weights).
  c.loss.normalization = ''
  # A heatmap head's auxiliary loss (model.head='heatmap'; beyond the paper): the KL divergence
  # from a Gaussian of loss.heatmap_sigma cells around each target to the softmax of the
  # point's logits over the cells (jaxalign.losses.heatmap_kl), added with this
  # weight to each network's term. 0: the coordinates' loss alone.
  c.loss.heatmap_weight = 0.0
  c.loss.heatmap_sigma = 1.0

  # Optimiser (jaxalign.training.optim).
  c.optim = ml_collections.ConfigDict()
  # 'sgd' (the paper) or 'adamw' (Adam with decoupled weight decay; momentum is its b1).
  c.optim.optimizer = 'sgd'
  c.optim.learning_rate = 1e-5
  c.optim.final_learning_rate = 1e-7
  c.optim.schedule = 'piecewise'   # 'piecewise': lr * 0.1 every decay_steps, floored at final
  c.optim.decay_steps = 60_000
  c.optim.warmup_steps = 0
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 5e-4
  c.optim.grad_clip_norm = 0.0     # 0 = off (the paper does not clip)
  # An exponential moving average of the weights (parameters and BatchNorm statistics), kept
  # beside them and used wherever the run's model is restored (evaluation, init_from); beyond
  # the paper. The decay, warmed up as min(ema_decay, (1 + step) / (10 + step)). 0 = off.
  c.optim.ema_decay = 0.0

  # Evaluation (jaxalign.evaluation.runner; end of run and python -m jaxalign.evaluate).
  c.eval = ml_collections.ConfigDict()
  c.eval.enabled = True
  c.eval.batch_size = 64
  c.eval.completion = True         # 3DMM completion of the unstable points (pose-aware model)
  c.eval.completion_backend = 'jax'
  # Fuse CNN1's unstable points into the 3DMM fit, weighted by CNN1's held-out residuals per
  # point and |yaw| bin (WORKDIR/cnn1_residuals.json, needs validation faces: data.val_dir,
  # data.synthetic.num_val or data.holdout_fraction; jax backend). Beyond the paper.
  c.eval.completion_fusion = False
  # Mix each unstable point of the completion with CNN1's own, alpha c + (1 - alpha) o, alpha
  # per point and |yaw| bin fitted by least squares on the validation faces at the end of
  # training (stored in WORKDIR/cnn1_residuals.json; completion.blend_weights). Beyond the paper.
  c.eval.completion_blend = False
  # With eval.completion_blend: CNN2's stable points mixed with CNN1's the same way (alpha per
  # point and |yaw| bin, least squares on the same faces); else they are CNN2's. Beyond the paper.
  c.eval.blend_stable = False
  # CNN2's stable points moved by its mean residual on the held-out faces, measured at the end
  # of training in the face's own axes (CNN1's eye corners) and stored in
  # WORKDIR/cnn1_residuals.json (calibration.stable_shift): CNN2 sees left-looking faces
  # mirrored, and 300-W's annotations are not mirror-symmetric, so it misses their offset that
  # CNN1 learns. Applied before the completion. Beyond the paper.
  c.eval.stable_shift = False
  # Detector-like test boxes: a deterministic per-face disturbance of the box (uniform in
  # +-shift box sides, +-scale, +-rotation_deg), seeded by the face's index. 0 = the boxes as given.
  c.eval.box_jitter = ml_collections.ConfigDict()
  c.eval.box_jitter.shift = 0.0
  c.eval.box_jitter.scale = 0.0
  c.eval.box_jitter.rotation_deg = 0.0
  c.eval.box_jitter.seed = 0
  c.eval.normalization = 'inter_ocular'   # the report's `nme`: 'inter_ocular' | 'inter_pupil' |
                                          # 'bbox' (sqrt(w h) of the face box)
  c.eval.completion_convention = '2d'     # 3DMM jaw convention: '2d' (300-W) | '3d' (AFLW2000-3D)
  # The learned completion (completion_backend='learned') is fitted on the training faces with
  # SLs as noisy as the CNN's: 'auto' measures CNN2's SL error on the validation faces (per
  # coordinate, after the best similarity, in inter-ocular units; 0 without validation faces);
  # a number sets it ('0': clean SLs, the annotations as they are). Beyond the paper.
  c.eval.learned_sl_noise = '0'
  # CNN1's points averaged over the face and its mirror at test time (two CNN1 passes; CNN2 sees
  # one view, as its faces are all turned one way). Beyond the paper.
  c.eval.mirror_tta = False
  # A second pass of the CNN pair on a crop around the first pass's own points (the training
  # framing, without the box's error), averaged with the first (inference.predict_with_recrop).
  # Twice the networks' cost at test time. Beyond the paper.
  c.eval.recrop = False
  # With eval.recrop: four more passes on the second pass's box moved by this fraction of its
  # width (left, right) and height (up, down), all the passes averaged. 0: none. Beyond the paper.
  c.eval.recrop_shift = 0.0
  return c


def draw_seed(config) -> int:
  """The seed of a run's training draws (initialisation, batch order, augmentation):
  ``seed + ensemble.member``. The data's seeds (held-out split, synthetic faces) stay ``seed``."""
  return int(config.seed) + int(config.ensemble.get('member', 0))


def model_scheme(config) -> schemes.LandmarkScheme:
  """The run's landmark scheme: ``config.model.scheme`` with ``config.model.stable`` (a comma
  list of indices, or a list) as its stable set when set (the pose experiment's arm 6).

  Raises:
    ValueError: naming ``config.model.stable`` when it is not a list of valid indices.
  """
  scheme = schemes.get_scheme(config.model.scheme)
  stable = config.model.stable
  if stable in ('', None) or (not isinstance(stable, str) and not len(stable)):
    return scheme
  try:
    if isinstance(stable, str):
      stable = [int(s) for s in stable.replace(' ', '').split(',') if s]
    return scheme.with_stable([int(i) for i in stable])
  except (TypeError, ValueError) as e:
    raise ValueError(f'config.model.stable: {stable!r} is not a comma list of '
                     f'{scheme.name} point indices ({e})') from None


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ``ValueError`` naming the key when a config value cannot work.

  Checks what would otherwise fail late or obscurely: the batch must split evenly over the
  devices, the model kind and depth must exist, counts must be positive.
  """
  def fail(key, msg):
    raise ValueError(f'config.{key}: {msg}')

  for key in ('num_steps', 'batch_size', 'checkpoint_every', 'log_every'):
    value = config[key]
    if not isinstance(value, int) or value <= 0:
      fail(key, f'must be a positive integer, got {value!r}')
  if config.batch_size % num_devices:
    fail('batch_size', f'{config.batch_size} is not divisible by the {num_devices} devices; '
         f'use a multiple of {num_devices}')
  for key in ('width', 'cnn2_width'):
    value = config.model.get(key, 0)
    if not isinstance(value, int) or value < (1 if key == 'width' else 0):
      fail(f'model.{key}', f'must be a positive integer{" or 0" if key != "width" else ""}, '
           f'got {value!r}')
  if config.model.kind not in MODEL_KINDS:
    fail('model.kind', f'unknown model {config.model.kind!r}; expected one of {MODEL_KINDS}')
  for key in ('depth', 'cnn2_depth'):
    depth = config.model[key]
    if key == 'cnn2_depth' and not depth:
      continue
    try:
      resnet.resnet_spec(depth)
    except ValueError as e:
      fail(f'model.{key}', str(e))
  model_scheme(config)   # raises naming config.model.stable
  if config.model.input_size < 16:
    fail('model.input_size', f'must be at least 16 pixels, got {config.model.input_size}')
  if config.model.dtype not in ('float32', 'bfloat16', 'float16'):
    fail('model.dtype', f'unknown dtype {config.model.dtype!r}')
  try:
    resnet.ResNetOptions(**resnet.options_from_config(config))
  except ValueError as e:
    fail('model.conv1x1' if 'conv1x1' in str(e) else 'model.max_pool', str(e))
  for key, allowed in (('transform_from', ('prediction', 'ground_truth')),
                       ('transform_points', ('all', 'stable')), ('head', resnet.HEADS)):
    if config.model[key] not in allowed:
      fail(f'model.{key}', f'expected one of {allowed}, got {config.model[key]!r}')
  if int(config.model.get('heatmap_stride', 8)) not in resnet.HEATMAP_STRIDES:
    fail('model.heatmap_stride', f'expected one of {resnet.HEATMAP_STRIDES}, got '
         f'{config.model.heatmap_stride!r}')
  if not 0.1 <= float(config.model.cnn2_fill) <= 1.5:
    fail('model.cnn2_fill', f'expected a fraction in [0.1, 1.5], got {config.model.cnn2_fill}')
  if float(config.data.host_scale or 0.0) < 0:
    fail('data.host_scale', f'must be 0 (auto) or positive, got {config.data.host_scale}')
  if config.optim.get('optimizer', 'sgd') not in OPTIMIZERS:
    fail('optim.optimizer', f'unknown optimizer {config.optim.optimizer!r}; expected '
         f'{OPTIMIZERS}')
  if config.optim.schedule not in SCHEDULES:
    fail('optim.schedule', f'unknown schedule {config.optim.schedule!r}; expected {SCHEDULES}')
  validate_pretrain(config)
  members = config.ensemble.members
  if not isinstance(members, int) or not 1 <= members <= MAX_MEMBERS:
    fail('ensemble.members', f'must be an integer from 1 to {MAX_MEMBERS}, got {members!r}')
  if not 0.0 <= float(config.ensemble.max_disagreement) <= 1.0:
    fail('ensemble.max_disagreement', f'must be a fraction in [0, 1], got '
         f'{config.ensemble.max_disagreement}')
  if not config.optim.learning_rate > 0:
    fail('optim.learning_rate', f'must be positive, got {config.optim.learning_rate}')
  if not 0.0 <= float(config.optim.get('ema_decay', 0.0)) < 1.0:
    fail('optim.ema_decay', f'must be in [0, 1) (0: off), got {config.optim.ema_decay}')
  if config.data.pose_bins < 1:
    fail('data.pose_bins', f'must be at least 1, got {config.data.pose_bins}')
  for key, limit in (('cnn2_rotation_deg', 90.0), ('cnn2_translation', 0.5), ('cnn2_scale', 0.5)):
    value = float(config.augment.get(key, 0.0))
    if not 0.0 <= value < limit:
      fail(f'augment.{key}', f'must be in [0, {limit}), got {value}')
  for key in ('mirror_prob', 'grey_prob', 'occlusion_prob'):
    value = float(config.augment.get(key, 0.0))
    if not 0.0 <= value <= 1.0:
      fail(f'augment.{key}', f'must be a probability in [0, 1], got {value}')
  for key in ('brightness', 'contrast'):
    value = float(config.augment.get(key, 0.0))
    if not 0.0 <= value < 1.0:
      fail(f'augment.{key}', f'must be in [0, 1), got {value}')
  size = tuple(config.augment.get('occlusion_size', (0.1, 0.4)))
  if len(size) != 2 or not 0.0 < float(size[0]) <= float(size[1]) <= 1.0:
    fail('augment.occlusion_size', f'must be (lo, hi) with 0 < lo <= hi <= 1, got {size}')
  if config.data.crop_context < 1:
    fail('data.crop_context', f'must be >= 1, got {config.data.crop_context}')
  _validate_sources(config, fail)
  if config.eval.normalization not in NORMALIZATIONS:
    fail('eval.normalization', f'unknown normaliser {config.eval.normalization!r}; expected '
         f'one of {NORMALIZATIONS}')
  try:
    learned_sl_noise(config)
  except ValueError as e:
    fail('eval.learned_sl_noise', str(e))
  if config.eval.completion_convention not in ('2d', '3d'):
    fail('eval.completion_convention', f"expected '2d' or '3d', got "
         f'{config.eval.completion_convention!r}')
  if (not config.data.train_dir and not config.data.synthetic.enabled
      and not config.data.source):
    fail('data.train_dir', 'no training data: set data.train_dir to a 300-W-style folder, '
         'data.source to a registered data set, or data.synthetic.enabled=True')
  if config.loss.kind not in ('wing', 'l1', 'l2'):
    fail('loss.kind', f'unknown loss {config.loss.kind!r}; expected wing, l1 or l2')
  shift = config.eval.get('recrop_shift', 0.0)
  if not (isinstance(shift, (int, float)) and 0.0 <= shift < 0.5):
    fail('eval.recrop_shift', f'must be a fraction of the box side in [0, 0.5), got {shift!r}')
  if not isinstance(config.eval.get('blend_stable', False), bool):
    fail('eval.blend_stable', f'must be True or False, got {config.eval.blend_stable!r}')
  if not isinstance(config.model.get('cnn1_mirror_offset', False), bool):
    fail('model.cnn1_mirror_offset', f'must be True or False, got '
         f'{config.model.cnn1_mirror_offset!r}')
  if not isinstance(config.model.get('cnn2_mirror_offset', False), bool):
    fail('model.cnn2_mirror_offset', f'must be True or False, got '
         f'{config.model.cnn2_mirror_offset!r}')
  if not isinstance(config.eval.get('stable_shift', False), bool):
    fail('eval.stable_shift', f'must be True or False, got {config.eval.stable_shift!r}')
  contour_weight = config.loss.get('contour_weight', 1.0)
  if not (isinstance(contour_weight, (int, float)) and math.isfinite(contour_weight)
          and contour_weight > 0):
    fail('loss.contour_weight', f'must be a finite number > 0, got {contour_weight!r}')
  if config.loss.get('normalization', '') not in ('', 'inter_ocular'):
    fail('loss.normalization', f"expected '' or 'inter_ocular', got "
         f'{config.loss.normalization!r}')
  heatmap_weight = config.loss.get('heatmap_weight', 0.0)
  if not (isinstance(heatmap_weight, (int, float)) and not isinstance(heatmap_weight, bool)
          and math.isfinite(heatmap_weight) and heatmap_weight >= 0):
    fail('loss.heatmap_weight', f'must be a finite number >= 0, got {heatmap_weight!r}')
  if heatmap_weight and config.model.get('head', 'mean') != 'heatmap':
    fail('loss.heatmap_weight', f"needs model.head='heatmap' (the loss reads the heatmap's "
         f'logits), got model.head={config.model.get("head", "mean")!r}')
  heatmap_sigma = config.loss.get('heatmap_sigma', 1.0)
  if not (isinstance(heatmap_sigma, (int, float)) and not isinstance(heatmap_sigma, bool)
          and math.isfinite(heatmap_sigma) and heatmap_sigma > 0):
    fail('loss.heatmap_sigma', f'must be a finite number > 0 (cells), got {heatmap_sigma!r}')


def validate_pretrain(config: ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` naming the key when ``config.pretrain`` cannot work."""
  if not (config.get('pretrain') and config.pretrain.config):
    return
  def fail(key, msg):
    raise ValueError(f'config.{key}: {msg}')
  if config.init_from:
    fail('pretrain.config', f'set either pretrain.config ({config.pretrain.config!r}) or '
         f'init_from ({config.init_from!r}), not both')
  if not os.path.isfile(pretrain_config_path(config)):
    fail('pretrain.config', f'config file {config.pretrain.config!r} does not exist (looked '
         f'in the working directory and in {_REPO_DIR})')
  if not isinstance(config.pretrain.num_steps, int) or config.pretrain.num_steps < 0:
    fail('pretrain.num_steps', f"must be 0 (the config's own) or a positive integer, got "
         f'{config.pretrain.num_steps!r}')


def _validate_sources(config, fail) -> None:
  """The data.source / data.test_source keys: known data set, split, options and scheme."""
  from jaxalign.data import sources  # pylint: disable=g-import-not-at-top
  data = config.data
  source, test_source = data.get('source', ''), data.get('test_source', '')
  if source and data.train_dir:
    fail('data.train_dir', f'set either data.source ({source!r}) or data.train_dir '
         f'({data.train_dir!r}), not both')
  if test_source and not (data.get('test_root') or data.get('root')):
    fail('data.test_root', f'test data set {test_source!r} needs a folder: set data.test_root')
  checks = []
  if source:
    if not data.get('root'):
      fail('data.root', f'data set {source!r} needs a folder: set data.root')
    checks.append(('data.source', source, (data.train_split,), 'data.train_split',
                   'data.options', data.get('options')))
  if (test_source or source) and data.get('test_splits'):
    checks.append(('data.test_source' if test_source else 'data.source', test_source or source,
                   tuple(data.test_splits), 'data.test_splits', 'data.test_options',
                   data.get('test_options')))
  for key, name, splits, split_key, options_key, options in checks:
    try:
      info = sources.source_info(name)
    except ValueError as e:
      fail(key, str(e))
    for split in splits:
      if split not in info.splits:
        fail(split_key, f'data set {name!r} has no split {split!r}; its splits: {info.splits}')
    options = options.to_dict() if hasattr(options, 'to_dict') else dict(options or {})
    allowed = sources.option_names(name)
    for option in options:
      if option not in allowed:
        fail(options_key, f'unknown option {option!r} for data set {name!r}; its options: '
             f'{allowed}')
    scheme = options.get('scheme', info.scheme) if name == 'folder' else info.scheme
    if scheme != config.model.scheme:
      fail('model.scheme', f'data set {name!r} has {scheme} landmarks but the model predicts '
           f'{config.model.scheme}; set model.scheme={scheme}')


# The checkout holding this package (where configs/ lives in a source install).
_REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pretrain_config_path(config) -> str:
  """``config.pretrain.config`` as a path: as given if it exists (relative to the working
  directory), else relative to the checkout (``configs/default.py`` from anywhere)."""
  path = str(config.pretrain.config)
  if os.path.isfile(path) or os.path.isabs(path):
    return path
  return os.path.join(_REPO_DIR, path)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file (e.g. ``configs/smoke.py``), as ``--config`` loads it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} does not exist')
  spec = importlib.util.spec_from_file_location(
      f'_jaxalign_config_{os.path.splitext(os.path.basename(path))[0]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# ----------------------------------------------------------------------------- run folders

RUN_CONFIG_FILE = 'config.json'


def save_run_config(config, workdir: str) -> str:
  """Writes the resolved config as ``WORKDIR/config.json`` (what :func:`load_run_config` and
  :class:`jaxalign.inference.Run` read)."""
  from jaxalign import atomic  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  atomic.write_text(path, config.to_json_best_effort(indent=2, sort_keys=True))
  return path


# Keys a run's config.json lacks when the run was trained before they existed, and whose
# behaviour then was not base_config()'s default of today: the value that reproduces it. Every
# other missing key takes base_config()'s default.
LEGACY_DEFAULTS = {
    'model.transform_points': 'all',   # the spatial transform used every point (before 2026-12-03)
    'model.cnn2_fill': 0.7,            # CNN2's framing (training only: the frame is saved)
    'data.jpeg_draft': False,          # full JPEG decoding (before 2026-12-05): same pixels
}

# Options that were measured, rejected and removed (docs/architecture.md, "Retired options"):
# the value with which an old run still loads, and why another value cannot. The other
# retired keys only changed the training, so a run that set them still loads without them.
RETIRED = {
    'model.cnn2_residual': (False, 'the residual CNN2 (retired; its measurement: '
                                   'docs/benchmarks.md, "The cascade")'),
    'model.transform_noise': (None, ''),
    'model.init_cnn1_from': (None, ''),
    'model.freeze_cnn1': (None, ''),
    'model.cnn2_points': ('stable', 'CNN2 on every point (retired; its measurement: '
                                    'docs/experiments/cpu_300w.md, "CNN2 on every point")'),
    'eval.cnn1_guard': (False, 'the collapse guard (retired; its measurement: '
                               'docs/experiments/cpu_300w.md, "A guard")'),
    # Synthetic faces mixed into a real run's batches (session 16; training only).
    'data.mix': (None, ''),
}


def _pop_path(tree: dict, dotted: str):
  """Removes ``tree[a][b]`` for ``dotted='a.b'``; returns (found, value)."""
  *parents, leaf = dotted.split('.')
  for p in parents:
    tree = tree.get(p)
    if not isinstance(tree, dict):
      return False, None
  if leaf not in tree:
    return False, None
  return True, tree.pop(leaf)


def _merge_into(base: dict, saved: dict) -> None:
  """``saved``'s values over ``base``'s, recursively; an empty dict of ``base`` (a loader's
  free-form options) takes ``saved``'s as it is."""
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(base.get(key), dict) and base[key]:
      _merge_into(base[key], value)
    else:
      base[key] = value


def with_defaults(saved: dict, source: str = 'config') -> ml_collections.ConfigDict:
  """A run's saved config (the dict of its ``config.json``) merged onto :func:`base_config`,
  so that a run written before a key existed loads with that key's default (or its
  :data:`LEGACY_DEFAULTS` value) and the code never needs a fallback of its own.

  Raises:
    ValueError: naming ``source`` and the key, when the run used a retired option that
      changes its predictions (:data:`RETIRED`).
  """
  import copy  # pylint: disable=g-import-not-at-top
  saved = copy.deepcopy(dict(saved))
  for dotted, (allowed, what) in RETIRED.items():
    found, value = _pop_path(saved, dotted)
    if found and allowed is not None and value != allowed:
      raise ValueError(f'{source}: config.{dotted}={value!r}: the run uses {what}, which this '
                       'version of jaxalign cannot run')
  merged = base_config().to_dict()
  for dotted, value in LEGACY_DEFAULTS.items():
    *parents, leaf = dotted.split('.')
    parent = saved
    for p in parents:
      parent = parent.get(p) if isinstance(parent, dict) else None
    if isinstance(parent, dict) and leaf not in parent:
      parent[leaf] = value
  _merge_into(merged, saved)
  return ml_collections.ConfigDict(merged)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config of a run (``WORKDIR/config.json``) merged onto :func:`base_config`
  (:func:`with_defaults`): every key is there, whatever version wrote the file.

  Raises:
    FileNotFoundError: ``workdir`` holds no ``config.json`` (not a training run).
    ValueError: the file is not valid JSON, or the run used a retired option.
  """
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  saved = read_json_object(path)
  if saved is None:
    raise FileNotFoundError(f'{path} does not exist: {workdir} is not a jaxalign training run')
  return with_defaults(saved, path)


def read_json_object(path: str) -> dict | None:
  """The JSON object in the file ``path`` of a run folder, or None when there is no such file.

  Raises:
    ValueError: naming the file, when it is not valid JSON or not an object.
  """
  import json  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from None
  if not isinstance(value, dict):
    raise ValueError(f'{path}: expected a JSON object, got {type(value).__name__}')
  return value


def parse_override_value(raw: str, current=None):
  """A ``--config.key=value`` value: a Python literal (number, bool, tuple, ...), else the
  string; kept a string when the key currently holds a string (``model.depth=50``)."""
  import ast  # pylint: disable=g-import-not-at-top
  if isinstance(current, str):
    return raw
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """Applies ``['key.sub=value', ...]`` (an optional leading ``--config.`` is dropped) in place
  with ``ConfigDict.update_from_flattened_dict``.

  Raises:
    ValueError: an item without ``=`` or a key the config does not have (named).
  """
  flat = {}
  for item in overrides or ():
    text = item[len('--config.'):] if item.startswith('--config.') else item
    key, sep, raw = text.partition('=')
    if not sep or not key:
      raise ValueError(f'config override {item!r}: expected key=value')
    node = config
    try:
      for part in key.split('.'):
        node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise ValueError(f'config override {item!r}: the config has no key {key!r}') from None
    flat[key] = parse_override_value(raw, node)
  config.update_from_flattened_dict(flat)
  return config


def learned_sl_noise(config) -> float | None:
  """``eval.learned_sl_noise``: None for 'auto' (measured on the validation faces), else the
  SL noise in inter-ocular units (>= 0).

  Raises:
    ValueError: neither 'auto' nor a finite number >= 0.
  """
  value = str(config.eval.learned_sl_noise).strip()
  if value == 'auto':
    return None
  try:
    noise = float(value)
  except ValueError:
    noise = float('nan')
  if not noise >= 0 or noise == float('inf'):
    raise ValueError(f"expected 'auto' or a number >= 0 (inter-ocular units), got {value!r}")
  return noise
