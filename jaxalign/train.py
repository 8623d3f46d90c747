"""Train an aligner: ``python -m jaxalign.train [--config configs/default.py] [--workdir DIR]``.

Without flags it trains the embedded default (``configs/default.py``: a synthetic data set
rendered once and cached, the pose-aware pair) into ``runs/default``. Override any config key
with ``--config.key=value`` (e.g. ``--config.num_steps=1000``). Rerunning with the same workdir
resumes from its latest checkpoint. Outputs in the workdir: ``config.json``, ``metrics.jsonl``,
``tensorboard/``, ``checkpoints/``, ``eval/<split>/report.json``.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'configs', 'default.py')
_CONFIG = config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG if os.path.exists(_DEFAULT_CONFIG) else 'configs/default.py',
    'Training configuration file (a configs/*.py with get_config()).', lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', 'runs/default',
                               'Run folder: checkpoints, metrics, evaluation.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from jaxalign import workflow  # pylint: disable=g-import-not-at-top
  from jaxalign.training import trainer  # pylint: disable=g-import-not-at-top
  try:
    workflow.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except trainer.NonFiniteLossError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


def config_file_error(argv) -> str | None:
  """A one-line error for a ``--config`` file that does not exist or is not Python, else None.

  absl loads the file while it parses the flags, where such an error would end in a traceback.
  """
  path = None
  for i, arg in enumerate(argv[1:], 1):
    if arg in ('--config', '-config') and i + 1 < len(argv):
      path = argv[i + 1]
    elif arg.startswith(('--config=', '-config=')):
      path = arg.split('=', 1)[1]
  if path is None:
    return None
  path = path.split(':', 1)[0]     # config_flags' 'file.py:argument' form
  if not os.path.isfile(path):
    return f'--config: config file {path} does not exist'
  try:
    with open(path, 'rb') as f:
      compile(f.read(), path, 'exec')
  except (SyntaxError, ValueError) as e:
    return f'--config: {path} is not a Python config file ({type(e).__name__}: {e})'
  return None


if __name__ == '__main__':
  _error = config_file_error(sys.argv)
  if _error:
    print(f'error: {_error}', file=sys.stderr)
    sys.exit(2)
  app.run(lambda argv: sys.exit(main(argv)))
