"""python -m jaxalign.bench gpu --quick: the one-shot accelerator benchmark at CPU sizes."""

import json

import pytest

from jaxalign.benchmarks import gpu


@pytest.mark.slow
def test_gpu_quick_runs_on_cpu(tmp_path, capsys):
  assert gpu.main(['--quick', '--json', '--out', str(tmp_path)]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out['quick'] and not out['errors']
  assert {(r['dtype'], r['batch_size']) for r in out['training']} == {
      ('float32', 4), ('bfloat16', 4)}
  for r in out['training']:
    assert r['model'] == 'pose_aware'
    assert r['bare_step_images_per_s'] > 0 and r['pipeline_images_per_s'] > 0
  assert out['completion']['batch_size'] == 64 and out['completion']['faces_per_s'] > 0
  assert [r['batch'] for r in out['predict']['rows']] == [1, 4]
  saved = json.loads((tmp_path / 'gpu_benchmark.json').read_text())
  assert saved['completion'] == out['completion']
  table = (tmp_path / 'gpu_benchmark.md').read_text()
  assert '| 3DMM completion (JAX) | 64 |' in table and 'bfloat16' in table


def test_gpu_bad_flags(tmp_path, capsys):
  assert gpu.main(['--quick', '--batch-sizes', '0', '--out', str(tmp_path)]) == 2
  assert '--batch-sizes' in capsys.readouterr().err
