"""Logging a person can follow: progress bar or plain lines, metrics.jsonl, TensorBoard.

Only process 0 writes. ``WORKDIR/metrics.jsonl`` holds one JSON object per logged step (``step``,
``loss``, ``learning_rate``, ``images_per_s`` and whatever else the step reports), each
appended in one unbuffered write; on resume, lines after the restored step (and a torn last
line) are dropped first, so a killed-and-resumed run's file equals the uninterrupted run's
(every step logged exactly once). TensorBoard event files go to
``WORKDIR/tensorboard``. On a terminal a tqdm bar shows step, loss, images/s and ETA; otherwise
a plain line every ``log_every`` steps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

import jax

from jaxalign import atomic

log = logging.getLogger('jaxalign.train')


def _parse_lines(path: str) -> list[dict]:
  """The JSON objects of ``path``'s lines; a torn (unparsable) line of a killed run is dropped."""
  rows = []
  with open(path, 'rb') as f:
    for line in f:
      try:
        obj = json.loads(line.decode('utf-8'))
      except (UnicodeDecodeError, json.JSONDecodeError):
        continue
      if isinstance(obj, dict):
        rows.append(obj)
  return rows


def truncate_metrics(path: str, last_step: int) -> None:
  """Keeps the lines of ``path`` with ``step <= last_step`` (and drops a torn last line).

  The file is rewritten atomically, so a kill during the rewrite keeps the old lines.
  """
  if not os.path.exists(path):
    return
  keep = [json.dumps(obj) + '\n' for obj in _parse_lines(path)
          if obj.get('step', math.inf) <= last_step]
  atomic.write_text(path, ''.join(keep))


def read_metrics(path: str) -> list[dict]:
  """The objects of a metrics.jsonl file (a torn last line of a killed run is left out)."""
  return _parse_lines(path)


class MetricsLogger:
  """Writes metrics from process 0; a progress bar on a TTY, plain lines otherwise."""

  def __init__(self, workdir: str, num_steps: int, start_step: int, log_every: int,
               tensorboard: bool = True, progress: bool | None = None):
    self.enabled = jax.process_index() == 0
    self.num_steps = num_steps
    self.log_every = log_every
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._writer = None
    self._bar = None
    self._t0 = time.time()
    self._start = start_step
    if not self.enabled:
      return
    truncate_metrics(self.path, start_step)
    # Unbuffered: each row reaches the file in one write (atomic.append_line).
    self._file = atomic.open_append(self.path)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=start_step + 1)
    if progress is None:
      progress = sys.stderr.isatty()
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=num_steps, initial=start_step, unit='step', dynamic_ncols=True,
                       desc='train')

  def write(self, step: int, metrics: dict) -> None:
    """Records ``metrics`` (floats) of 1-based ``step``; prints per the output mode."""
    if not self.enabled:
      return
    row = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    atomic.append_line(self._file, json.dumps(row))
    if self._writer is not None:
      for k, v in metrics.items():
        self._writer.add_scalar(f'train/{k}', float(v), step)
    if self._bar is not None:
      self._bar.n = step
      self._bar.set_postfix(loss=f'{row["loss"]:.4g}',
                            img_s=f'{row.get("images_per_s", 0):.0f}', refresh=False)
      self._bar.refresh()
    else:
      elapsed = time.time() - self._t0
      done = step - self._start
      eta = elapsed / max(done, 1) * (self.num_steps - step)
      log.info('step %d/%d  loss %.5g  lr %.3g  %.1f img/s  eta %s', step, self.num_steps,
               row['loss'], row.get('learning_rate', float('nan')),
               row.get('images_per_s', 0.0), _hms(eta))

  def scalar(self, tag: str, value: float, step: int) -> None:
    if self.enabled and self._writer is not None:
      self._writer.add_scalar(tag, float(value), step)

  def message(self, text: str) -> None:
    """A line for the person watching (above the progress bar if there is one)."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      log.info('%s', text)

  def close(self) -> None:
    if not self.enabled or self._file.closed:
      return
    if self._bar is not None:
      self._bar.close()
    if self._writer is not None:
      self._writer.close()
    self._file.close()


def _hms(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  s = int(seconds)
  return f'{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}'
