"""Benchmarks: ``python -m jaxalign.bench {completion,synthesize,train,predict,detect,compare,gpu} [flags]``.

Each sub-command lives in ``jaxalign/benchmarks/<name>.py`` with a ``main(argv)``; results go to
stdout (``--json`` for one JSON object) and, by hand, to ``docs/benchmarks.md``.
"""

import importlib
import sys

COMMANDS = ('completion', 'synthesize', 'train', 'predict', 'detect', 'compare', 'gpu')


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] not in COMMANDS:
    print(f'usage: python -m jaxalign.bench {{{",".join(COMMANDS)}}} [flags]', file=sys.stderr)
    return 2
  module = importlib.import_module(f'jaxalign.benchmarks.{argv[0]}')
  return module.main(argv[1:])


if __name__ == '__main__':
  sys.exit(main())
