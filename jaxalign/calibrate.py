"""Re-fits a trained run's completion tables from its own data.

  python -m jaxalign.calibrate --workdir RUN

What the end of training does after the last step (:func:`jaxalign.workflow.recalibrate`),
for a run trained before the tables existed or whose tables should be rebuilt: the learned
completion on the run's training faces (``RUN/learned_completion.json``) and, when the run keeps
validation faces (``data.holdout_fraction``, ``data.val_dir`` or synthetic validation faces),
CNN1's residual and mix tables on them (``RUN/cnn1_residuals.json``). The data are the run's,
read from its saved config. Exit codes: 0 ok, 2 a missing run, data set or bad input.
"""

import argparse
import json
import logging
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxalign.calibrate', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='the training run')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
  # pylint: disable=g-import-not-at-top
  from jaxalign import inference, workflow
  from jaxalign.training import data_setup
  try:
    run = inference.Run.load(args.workdir)
    config = run.config.copy_and_resolve_references()
    records, _ = data_setup.training_records(config)
    records, holdout = data_setup.validation_records(config, records)
    written = workflow.recalibrate(run, records, holdout)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  learned, table = written['learned'], written['residuals']
  print(json.dumps({
      'workdir': run.workdir, 'train_faces': len(records), 'validation_faces': len(holdout),
      'learned_completion': None if learned is None else {
          k: learned.get(k) for k in ('num_faces', 'num_skipped', 'use_learned', 'yaw_bins')},
      'mix_tables_for': None if table is None else sorted(table.get('blends', {}))}, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
