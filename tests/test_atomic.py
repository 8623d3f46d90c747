"""Atomic writes: a failure or a kill in the middle of writing leaves the old file whole.

Covers :mod:`jaxalign.atomic` and the writers routed through it: ``report.json`` /
``report.md`` (evaluation), ``predictions.npz``, ``.pts`` (predict / complete), the per-face
``.json`` and ``.obj`` of predict, and ``metrics.jsonl`` lines (one write per line; a torn last
line is dropped on resume).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxalign import atomic, io
from jaxalign.evaluation import report as report_lib
from jaxalign.prediction import writer
from jaxalign.training import logger


class Boom(Exception):
  """The failure injected in the middle of a write."""


def _no_temp_files(folder):
  return [n for n in os.listdir(folder) if n.endswith('.tmp') or '.tmp' in n]


def test_write_text_replaces_and_keeps_permissions(tmp_path):
  path = tmp_path / 'a.txt'
  atomic.write_text(path, 'one')
  atomic.write_text(path, 'two')
  assert path.read_text() == 'two'
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()
  assert not _no_temp_files(tmp_path)


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_failure_mid_write_keeps_the_old_file(tmp_path):
  path = tmp_path / 'a.json'
  atomic.write_json(path, {'v': 1})
  with pytest.raises(Boom):
    with atomic.atomic_open(path) as f:
      f.write('{"v": 2, "half')        # half the new file is on disk ...
      f.flush()
      raise Boom()                     # ... when the writer dies
  assert json.loads(path.read_text()) == {'v': 1}
  assert not _no_temp_files(tmp_path)


def test_failed_fsync_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / 'a.pts'
  io.write_pts(path, np.zeros((3, 2)))
  before = path.read_bytes()

  def fail(fd):
    raise OSError('disk full')
  monkeypatch.setattr(atomic.os, 'fsync', fail)
  with pytest.raises(OSError, match='disk full'):
    io.write_pts(path, np.ones((3, 2)))
  assert path.read_bytes() == before


def test_report_and_predictions_survive_a_failed_rewrite(tmp_path, monkeypatch):
  pred = np.zeros((2, 68, 2), np.float32)
  report_lib.save_predictions(tmp_path / 'predictions.npz', pred, pred, np.zeros((2, 4)))
  report_lib.write_report(tmp_path, {'nme': 0.5, 'num_images': 2})
  old_json = (tmp_path / 'report.json').read_text()

  def half_savez(f, **arrays):
    f.write(b'PK\x03\x04 partial zip')
    raise Boom()
  monkeypatch.setattr(report_lib.np, 'savez_compressed', half_savez)
  with pytest.raises(Boom):
    report_lib.save_predictions(tmp_path / 'predictions.npz', pred + 1, pred, np.zeros((2, 4)))
  np.testing.assert_array_equal(report_lib.load_predictions(tmp_path / 'predictions.npz')['pred'],
                                pred)

  def half_replace(src, dst):
    raise Boom()
  monkeypatch.setattr(atomic.os, 'replace', half_replace)
  with pytest.raises(Boom):
    report_lib.write_report(tmp_path, {'nme': 0.9, 'num_images': 2})
  assert (tmp_path / 'report.json').read_text() == old_json
  with pytest.raises(Boom):
    writer.write_json(tmp_path / 'face.json', {'points': [[1, 2]]})
  assert not (tmp_path / 'face.json').exists()
  assert not _no_temp_files(tmp_path)


def test_metrics_lines_are_single_writes(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  with atomic.open_append(path) as f:
    calls = []
    original = f.write

    def write(data):
      calls.append(data)
      return original(data)
    f.write = write   # pylint: disable=attribute-defined-outside-init
    atomic.append_line(f, json.dumps({'step': 1, 'loss': 2.0}))
    atomic.append_line(f, json.dumps({'step': 2, 'loss': 1.0}) + '\n')
  assert len(calls) == 2 and all(c.endswith(b'\n') and c.count(b'\n') == 1 for c in calls)
  with open(path, 'ab') as f:
    f.write(b'{"step": 3, "lo')          # torn by a kill
  assert [r['step'] for r in logger.read_metrics(str(path))] == [1, 2]
  logger.truncate_metrics(str(path), 5)
  assert path.read_text().count('\n') == 2 and path.read_text().endswith('\n')


KILLED_WRITER = textwrap.dedent('''
    import sys, time
    from jaxalign import atomic
    with atomic.atomic_open(sys.argv[1], 'wb') as f:
      f.write(b'new' * 100000)
      f.flush()
      print('writing', flush=True)
      time.sleep(60)
''')


def test_sigkill_mid_write_leaves_the_old_file(tmp_path):
  path = tmp_path / 'report.json'
  path.write_text('{"old": true}')
  proc = subprocess.Popen([sys.executable, '-c', KILLED_WRITER, str(path)],
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == 'writing'
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert path.read_text() == '{"old": true}'
  # The half-written temporary file is left beside it, never in its place.
  leftovers = _no_temp_files(tmp_path)
  assert len(leftovers) == 1 and leftovers[0].startswith('.report.json.')
