"""The pose experiment: arms, configs, run plan, run copies and the report (no training)."""

import glob
import json
import os
import pathlib

import numpy as np
import pytest

from jaxalign import schemes
from jaxalign.experiments import pose
from jaxalign.experiments import pose_config
from jaxalign.experiments import pose_report
from jaxalign.training import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_arm_has_a_config_file_with_its_launch_command():
  files = sorted(glob.glob(str(ROOT / 'configs' / 'experiments' / '*.py')))
  names = {pathlib.Path(f).stem for f in files}
  assert names == set(pose_config.ARMS)
  for f in files:
    text = pathlib.Path(f).read_text()
    doc = text.split('"""')[1]
    assert doc.startswith(f'python -m jaxalign.train --config configs/experiments/{pathlib.Path(f).name}')
    quick = config_lib.load_config_file(f)
    config_lib.validate(quick, 1)
    assert quick.model.depth == '18' and quick.model.input_size == 64
    assert quick.data.synthetic.kwargs.deformation_mm == pose_config.MISMATCH['deformation_mm']


@pytest.mark.parametrize('arm', sorted(pose_config.ARMS))
def test_arms_differ_from_arm_1_in_their_setting_only(arm):
  base = pose_config.arm_config('pose_aware').to_dict()
  cfg = pose_config.arm_config(arm)
  for key, value in pose_config.ARMS[arm].overrides.items():
    node = cfg
    for part in key.split('.'):
      node = node[part]
    assert node == value
  def walk(d, prefix=''):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(walk(v, f'{prefix}{k}.'))
      else:
        out[f'{prefix}{k}'] = v
    return out
  a, b = walk(base), walk(cfg.to_dict())
  changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
  assert changed == set(pose_config.ARMS[arm].overrides), changed
  paper = pose_config.arm_config(arm, 'paper')
  assert (paper.model.depth, paper.model.input_size, paper.model.width) == ('50', 224, 64)
  assert paper.optim.learning_rate == 1e-5 and paper.num_steps == 180_000


def test_stable_alternatives_are_34_points_and_valid_schemes():
  assert pose_config.stable_set(pose_config.DEFAULT_RIGHT) == schemes.IBUG68.stable
  for name, right in pose_config.STABLE_ALTERNATIVES.items():
    s = pose_config.stable_set(right)
    assert len(s) == 34 and set(right) <= set(s), name
    assert schemes.IBUG68.with_stable(s).num_stable == 34
  with pytest.raises(ValueError, match='unknown experiment size'):
    pose_config.arm_config('plain', 'huge')
  with pytest.raises(ValueError, match='unknown arm'):
    pose_config.arm_config('nope')


def test_plan_orders_reused_arms_after_their_source():
  full = pose.plan('quick')
  names = [a for a, _ in full]
  assert names.index('eos_completion') > names.index('pose_aware')
  assert names.index('gaussian_completion') > max(i for i, n in enumerate(names)
                                                  if n == 'pose_aware')
  assert sum(n == 'pose_aware' for n in names) == 3 and sum(n == 'plain' for n in names) == 3
  assert sum(n == 'no_flip' for n in names) == 1
  # A reusing arm pulls its source in; seeds override all.
  assert pose.plan('quick', ['eos_completion'], [4]) == [('pose_aware', 4),
                                                          ('eos_completion', 4)]
  with pytest.raises(ValueError, match='unknown arm'):
    pose.plan('quick', ['nope'])


def test_run_config_and_run_copies(tmp_path):
  from jaxalign import inference
  c = pose.run_config('no_flip', 2, 'quick', '/data/train', '/data/test', {'num_steps': 3},
                      '/data/val')
  assert (c.seed, c.num_steps, c.data.train_dir, c.eval.enabled) == (2, 3, '/data/train', False)
  assert c.data.val_dir == '/data/val'
  # The embedded default's evaluation protocol: jittered boxes, fused and mixed completion.
  assert c.eval.completion_fusion and c.eval.completion_blend and c.eval.box_jitter.shift > 0
  assert c.model.flip is False
  src = tmp_path / 'a'
  (src / 'checkpoints' / '3').mkdir(parents=True)
  (src / 'checkpoints' / '3' / 'w').write_text('x')
  (src / 'eval' / 'test').mkdir(parents=True)
  inference.save_config(pose_config.arm_config('pose_aware'), str(src))
  dst = tmp_path / 'b'
  pose._copy_run(src, dst, {'eval.completion_backend': 'gaussian'})
  assert (dst / 'checkpoints' / '3' / 'w').read_text() == 'x'
  assert not (dst / 'eval').exists()
  assert inference.load_config(str(dst)).eval.completion_backend == 'gaussian'
  assert inference.load_config(str(src)).eval.completion_backend == 'jax'
  # Copying again from the same checkpoint keeps the copy and its evaluation...
  (dst / 'eval').mkdir()
  pose._copy_run(src, dst, {'eval.completion_backend': 'gaussian'})
  assert (dst / 'eval').is_dir()
  # ... a new checkpoint in the source replaces it.
  (src / 'checkpoints' / '5').mkdir()
  pose._copy_run(src, dst, {'eval.completion_backend': 'gaussian'})
  assert not (dst / 'eval').exists() and (dst / 'checkpoints' / '5').is_dir()
  assert pose.compare_command(['r1', 'r2'], 'out') == ['--compare', 'r1', 'r2', '--out', 'out']


def test_run_metrics_bins_and_aggregate():
  rng = np.random.default_rng(0)
  gt = rng.uniform(10, 50, (6, 68, 2))
  yaw = np.array([-10, 20, 40, -50, 70, -90.0])
  pred = gt.copy()
  # Error on the ULs only: the hidden half, i.e. the mirrored UL set of left-looking faces.
  flip = schemes.IBUG68.flip_index_array()
  for i, y in enumerate(yaw):
    ul = np.asarray(schemes.IBUG68.unstable)
    pred[i, flip[ul] if y < 0 else ul] += 1.0
  m = pose_report.run_metrics(pred, gt, yaw)
  assert m['sl'] == 0 and m['ul'] > 0
  assert (m['count_0-30'], m['count_30-60'], m['count_60-90']) == (2, 2, 2)
  np.testing.assert_allclose(m['all'], m['ul'] * 34 / 68)
  agg = pose_report.aggregate([0.1, 0.2, None, 0.3])
  assert agg['n'] == 3 and agg['mean'] == pytest.approx(0.2) and agg['std'] == pytest.approx(0.1)
  assert pose_report.aggregate([0.1])['std'] is None


def _fake_summary(pose_aware_large, plain_large, spread=0.002):
  def arm(number, title, large, seeds):
    a = {'number': number, 'title': title, 'reuses': None, 'seeds': seeds, 'failed': []}
    base = {'all': 0.08, '0-30': 0.05, '30-60': 0.07, '60-90': large, 'sl': 0.05, 'ul': 0.11,
            'ul_0-30': 0.06, 'ul_30-60': 0.09, 'ul_60-90': large * 1.5}
    for k, v in base.items():
      a[k] = {'mean': v, 'std': spread if len(seeds) > 1 else None, 'n': len(seeds)}
    return a
  arms = {'pose_aware': arm('1', 'pose-aware', pose_aware_large, [0, 1, 2]),
          'plain': arm('2', 'plain', plain_large, [0, 1, 2]),
          'no_flip': arm('3', 'no flip', 0.2, [0])}
  runs = {'pose_aware_s0': {'arm': 'pose_aware', 'seed': 0, 'error': None, 'train_s': 5.0,
                            'completion_backend': 'jax', 'all': 0.08, '0-30': 0.05,
                            '30-60': 0.07, '60-90': 0.1, 'sl': 0.05, 'ul': 0.11},
          'plain_s1': {'arm': 'plain', 'seed': 1, 'error': 'ValueError: boom', 'train_s': 1.0}}
  s = pose_config.get_size('quick')
  return {'size': 'quick', 'sizes': dict(s.__dict__), 'mismatch': pose_config.MISMATCH,
          'runs': runs, 'arms': arms, 'compare_dir': 'runs/compare',
          'test_counts': {'0-30': 100, '30-60': 100, '60-90': 100},
          'oracle': {'jax': {'ul': 0.03, 'ul_60-90': 0.05}, 'eos': {'error': 'x'}},
          'command': 'python -m jaxalign.evaluate --compare a b --out c',
          'timings': {'total_s': 60.0, 'data_s': 1.0, 'eval_s': 2.0}}


def test_report_states_the_outcome_plainly(tmp_path):
  holds = pose_report.conclusions(_fake_summary(0.10, 0.20))
  assert holds[0].startswith("**The claim holds here** (by the seeds' spread)")
  fails = pose_report.conclusions(_fake_summary(0.20, 0.10))
  assert fails[0].startswith('**The claim does not hold here**')
  # A difference inside the seed spread is not a win.
  noisy = pose_report.conclusions(_fake_summary(0.19, 0.20, spread=0.05))
  assert noisy[0].startswith('**The claim does not hold here**') and 'not a clear' in noisy[0]
  # The paired face-by-face intervals decide when there are any.
  paired = _fake_summary(0.19, 0.20, spread=0.05)
  interval = lambda m, lo, hi: {'mean': m, 'lo': lo, 'hi': hi, 'n': 100}
  paired['paired'] = {'bbox': {'60-90': interval(-0.005, -0.008, -0.002),
                               '0-30': interval(-0.001, -0.003, 0.001)}}
  lines = pose_report.conclusions(paired)
  assert lines[0].startswith('**Paired, box-normalised, |yaw| 60-90**') and 'better' in lines[0]
  assert lines[1].startswith('**The claim holds here** (by the paired')
  paired['paired']['bbox']['0-30'] = interval(0.004, 0.002, 0.006)      # hurts frontal faces
  assert pose_report.conclusions(paired)[1].startswith('**The claim does not hold here**')
  assert any('CNN is the bottleneck' in c for c in holds)
  paths = pose_report.write(tmp_path, _fake_summary(0.10, 0.20))
  md = pathlib.Path(paths[0]).read_text()
  for text in ('## Question', '## Protocol', '## Results', '## Conclusion',
               'pose_nme_by_pose.png', 'python -m jaxalign.evaluate --compare',
               '| (1) pose_aware | 3 |', '8.00 ± 0.20', 'plain_s1', 'ValueError: boom',
               'ResNet-18 with 8 stem channels', 'deformation of 3.0 mm RMS'):
    assert text in md, text
  assert os.path.getsize(paths[1]) > 1000
  assert json.loads(pathlib.Path(paths[2]).read_text())['size'] == 'quick'


def test_generated_docs_hold_no_path_of_the_machine(tmp_path):
  """Paths under an absolute experiment root are written as $ROOT/... in pose.md and pose.json
  (the summary the runner returns keeps them)."""
  root = tmp_path / 'exp'
  summary = _fake_summary(0.10, 0.20)
  summary['compare_dir'] = str(root / 'compare')
  summary['command'] = (f'python -m jaxalign.evaluate --compare {root}/runs/pose_aware_s0 '
                        f'--out {root}/compare')
  summary['runs']['pose_aware_s0']['workdir'] = str(root / 'runs' / 'pose_aware_s0')
  paths = pose_report.write(tmp_path / 'docs', summary, root)
  for path in (paths[0], paths[2]):
    text = pathlib.Path(path).read_text()
    assert str(tmp_path) not in text, path
    assert '$ROOT/runs/pose_aware_s0' in text and '$ROOT/compare' in text
  assert "`$ROOT` is the experiment's `--root` folder" in pathlib.Path(paths[0]).read_text()
  assert summary['compare_dir'] == str(root / 'compare')
  # A relative root is a relative path already.
  assert pose_report.relative_paths({'a': 'runs/x/y'}, 'runs/x') == {'a': 'runs/x/y'}


def test_arm_overrides_go_through_apply_overrides():
  """The experiment's configs build on configs/default.py and reject keys it does not have."""
  c = pose_config.base_experiment_config('quick')
  assert c.eval.completion_fusion and c.eval.box_jitter.rotation_deg == 10.0   # the default's
  with pytest.raises(ValueError, match="no key 'model.nope'"):
    pose_config.override(c, {'model.nope': 1})
  with pytest.raises(ValueError, match="no key 'nope'"):
    pose.run_config('pose_aware', 0, 'quick', 'a', 'b', {'nope': 2})


def test_cli_rejects_bad_size(capsys):
  with pytest.raises(SystemExit):
    pose.main(['--size', 'huge'])


def test_run_wires_data_training_comparison_and_report(tmp_path, monkeypatch):
  import subprocess
  calls = {}
  monkeypatch.setattr(pose, 'make_data', lambda root, size, n1, n2: ('TR', 'TE', 'VA'))

  def train_all(root, size, runs, train_dir, test_dir, overrides, progress, val_dir):
    calls['train'] = (runs, train_dir, test_dir, overrides, val_dir)
    return {'pose_aware_s0': {'arm': 'pose_aware', 'seed': 0, 'workdir': 'W0', 'seconds': 1.0,
                              'error': None},
            'plain_s0': {'arm': 'plain', 'seed': 0, 'workdir': 'W1', 'seconds': 1.0,
                         'error': 'boom'}}

  def fake_run(cmd, **kwargs):
    calls['cmd'] = cmd
    return subprocess.CompletedProcess(cmd, calls.get('rc', 0), 'table', 'err')

  monkeypatch.setattr(pose, 'train_all', train_all)
  monkeypatch.setattr(subprocess, 'run', fake_run)
  monkeypatch.setattr(pose_report, 'summarise',
                      lambda *a: {k: v for k, v in _fake_summary(0.1, 0.2).items()
                                  if k not in ('command', 'timings')})
  lines = []
  summary = pose.run('quick', tmp_path / 'out', tmp_path / 'root', ['pose_aware', 'plain'], [0],
                     overrides={'num_steps': 2}, progress=lines.append)
  assert calls['train'][0] == [('pose_aware', 0), ('plain', 0)]
  assert calls['train'][1:] == ('TR', 'TE', {'num_steps': 2}, 'VA')
  assert calls['cmd'][1:] == ['-m', 'jaxalign.evaluate', '--compare', 'W0', '--out',
                              str(tmp_path / 'root' / 'compare')]
  assert summary['command'].startswith('python -m jaxalign.evaluate --compare W0 --out')
  assert (tmp_path / 'out' / 'pose.md').is_file()
  assert any(line.startswith('wrote ') for line in lines)
  calls['rc'] = 3
  with pytest.raises(RuntimeError, match='exit 3'):
    pose.run('quick', tmp_path / 'out', tmp_path / 'root', ['pose_aware'], [0])


def test_plain_is_cnn1_reads_the_final_losses(tmp_path):
  def run(name, **last):
    d = tmp_path / name
    d.mkdir()
    (d / 'metrics.jsonl').write_text(json.dumps({'step': 1, 'loss_cnn1': 9.0}) + '\n'
                                     + json.dumps({'step': 2, **last}) + '\n')
    return str(d)
  runs = {'pose_aware_s0': {'arm': 'pose_aware', 'seed': 0, 'error': None,
                            'workdir': run('a', loss_cnn1=1.5, loss=3.0)},
          'plain_s0': {'arm': 'plain', 'seed': 0, 'error': None,
                       'workdir': run('b', loss_cnn1=1.5, loss=1.5)}}
  assert pose_report.plain_is_cnn1(runs) is True
  runs['plain_s0']['workdir'] = run('c', loss_cnn1=1.25, loss=1.25)
  assert pose_report.plain_is_cnn1(runs) is False
  assert pose_report.plain_is_cnn1({}) is None
  summary = _fake_summary(0.1, 0.2)
  summary['plain_is_cnn1'] = True
  assert 'baseline *is* the first stage' in pose_report.markdown(summary, 'p.png')


def test_paired_differences_pair_faces_and_bound_the_mean(tmp_path):
  """Pose-aware minus plain, face by face: a constant 1-point box-NME improvement on every
  face is found exactly, with an interval around it; unpaired (other faces) runs are left out."""
  from jaxalign.evaluation import report as report_lib
  rng = np.random.default_rng(0)
  gt = rng.uniform(20, 80, (40, 68, 2)).astype(np.float32)
  boxes = np.tile(np.array([0, 0, 100, 100], np.float32), (40, 1))
  yaw = np.linspace(-90, 90, 40)
  runs = {}
  for seed in (0, 1):
    for arm, extra in (('plain', 3.0), ('pose_aware', 2.0)):
      d = tmp_path / f'{arm}{seed}'
      d.mkdir()
      pred = gt + extra / np.sqrt(2)
      report_lib.save_predictions(d / 'predictions.npz', pred, gt, boxes, yaw=yaw)
      runs[f'{arm}{seed}'] = {'arm': arm, 'seed': seed, 'error': None, 'eval_dir': str(d)}
  other = tmp_path / 'other'
  other.mkdir()
  report_lib.save_predictions(other / 'predictions.npz', gt[:10], gt[:10] + 1, boxes[:10],
                              yaw=yaw[:10])
  runs['plain2'] = {'arm': 'plain', 'seed': 2, 'error': None, 'eval_dir': str(other)}
  runs['pose_aware2'] = {'arm': 'pose_aware', 'seed': 2, 'error': None,
                         'eval_dir': str(tmp_path / 'pose_aware0')}
  out = pose_report.paired_differences(runs, num_boot=200)
  assert out['seeds'] == [0, 1]          # seed 2's runs saw different faces
  from jaxalign import metrics
  expected = (metrics.nme(gt + 2.0 / np.sqrt(2), gt, 'bbox') -
              metrics.nme(gt + 3.0 / np.sqrt(2), gt, 'bbox'))
  allrow = out['bbox']['all']
  assert allrow['n'] == 80
  assert allrow['lo'] <= allrow['mean'] <= allrow['hi'] < 0
  # (the file holds float32 points)
  assert allrow['mean'] == pytest.approx(expected.mean(), rel=1e-4)
  assert sum(out['bbox'][k]['n'] for k in pose_report.BIN_KEYS) == allrow['n']
  assert pose_report.paired_differences({}) == {}
