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


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
