"""Finds the Surrey Face Model files: explicit path, else $JAXALIGN_SFM_DIR, else the user cache.

``python -m jaxalign.assets fetch`` downloads them from the pinned eos commit (see ``main``).
"""

from __future__ import annotations

import os
import pathlib

EOS_COMMIT = 'ce984207a51c2edd2e7568a64fec9b98ef61aeed'
URL_PATTERN = 'https://raw.githubusercontent.com/patrikhuber/eos/{commit}/share/{file}'
ENV_VAR = 'JAXALIGN_SFM_DIR'

# file name -> sha256 of the file at EOS_COMMIT.
SFM_FILES = {
    'sfm_shape_3448.bin': '43750338ae533e7fb981e924b6f67ebde3d292f15ec4fc886ae5af14308ad980',
    'expression_blendshapes_3448.bin':
        'a77c81712fc5e8b08a1be4cd2824d51514e5bde6578109ae5240dfb3489efd43',
    'ibug_to_sfm.txt': '810810c457184526c7d54305ecbc5da764e2431b5e66025d921a7d424aebfac9',
    'sfm_3448_edge_topology.json':
        '5934e5ec34dd6779fda06d28a1f8d02ca9a238bff882e5ccd6da5af9fffe61d5',
    'sfm_model_contours.json': 'c9e69bfa995ab19ac6b27abb07729eb0520a00bb192be12426ca6bce76f3fded',
    'sfm_reference_symmetry.txt':
        'd26e02dbb2cf72bfa88bc6bf6f175bf261bae7aff00509cc0ff277675f2fff47',
    'sfm_reference.obj': '1ac929fc7db5a2ec5a1bc9160b92cf8478a360866422a35105717dbc5992ca56',
}

HOW_TO_GET = (
    'Get the Surrey Face Model files with `python -m jaxalign.assets fetch` (downloads them from '
    f'the eos repository at commit {EOS_COMMIT[:12]} and checks their sha256), or point '
    f'${ENV_VAR} at a folder that holds them.')


class MissingModelFilesError(FileNotFoundError):
  """The Surrey Face Model files are not where they were looked for."""


def cache_dir() -> pathlib.Path:
  """The per-user cache folder ($XDG_CACHE_HOME/jaxalign/sfm, default ~/.cache/jaxalign/sfm)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'jaxalign' / 'sfm'


def sfm_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """The folder holding the model files: ``path``, else $JAXALIGN_SFM_DIR, else the cache.

  Raises:
    MissingModelFilesError: naming the folder, the missing files and how to get them.
  """
  if path is not None:
    where, origin = pathlib.Path(path), 'the given path'
  elif os.environ.get(ENV_VAR):
    where, origin = pathlib.Path(os.environ[ENV_VAR]), f'${ENV_VAR}'
  else:
    where, origin = cache_dir(), 'the user cache'
  missing = [f for f in SFM_FILES if not (where / f).is_file()]
  if missing:
    raise MissingModelFilesError(
        f'Surrey Face Model files missing in {where} ({origin}): {", ".join(missing)}. '
        + HOW_TO_GET)
  return where


class FetchError(RuntimeError):
  """One or more model files could not be fetched or failed their sha256 check."""


def _sha256(path: pathlib.Path) -> str:
  import hashlib
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def fetch(directory: str | os.PathLike | None = None, url_pattern: str = URL_PATTERN,
          commit: str = EOS_COMMIT, files=None, timeout: float = 60.0, log=print) -> pathlib.Path:
  """Downloads the model files into ``directory`` and checks them.

  The default folder is $JAXALIGN_SFM_DIR when set (so that ``fetch`` on a machine that already
  has the files there only verifies them), else :func:`cache_dir`.

  Each file is downloaded to ``<name>.part`` and moved into place only when its sha256 matches
  :data:`SFM_FILES`; a partial or mismatched download is deleted and reported. Files already
  present with the right hash are kept.

  Args:
    url_pattern: a format string with ``{commit}`` and ``{file}`` (e.g. a mirror).

  Raises:
    FetchError: listing every file that failed and why (the good ones stay).
  """
  import urllib.request
  if directory is not None:
    where = pathlib.Path(directory)
  elif os.environ.get(ENV_VAR):
    where = pathlib.Path(os.environ[ENV_VAR])
  else:
    where = cache_dir()
  where.mkdir(parents=True, exist_ok=True)
  failures = []
  for name in (files or SFM_FILES):
    expected = SFM_FILES[name]
    target = where / name
    if target.is_file() and _sha256(target) == expected:
      log(f'{name}: present, sha256 ok')
      continue
    url = url_pattern.format(commit=commit, file=name)
    part = where / (name + '.part')
    try:
      with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, 'wb') as out:
        length = resp.headers.get('Content-Length')
        got = 0
        for block in iter(lambda: resp.read(1 << 20), b''):
          out.write(block)
          got += len(block)
      if length is not None and got != int(length):
        raise OSError(f'partial download: {got} of {length} bytes')
      digest = _sha256(part)
      if digest != expected:
        raise OSError(f'sha256 mismatch: got {digest}, expected {expected}')
      os.replace(part, target)
      log(f'{name}: downloaded, sha256 ok')
    except Exception as e:  # network, HTTP, partial, mismatch: delete and report.
      part.unlink(missing_ok=True)
      failures.append(f'{name} from {url}: {e}')
      log(f'{name}: FAILED ({e}); partial file deleted')
  if failures:
    raise FetchError(f'{len(failures)} model file(s) not fetched into {where}:\n  '
                     + '\n  '.join(failures))
  return where


def main(argv=None) -> int:
  """``python -m jaxalign.assets fetch [--dir D] [--url-pattern P]`` or ``... where``."""
  import argparse
  import sys
  p = argparse.ArgumentParser(prog='python -m jaxalign.assets',
                              description='Surrey Face Model files: fetch them or show where '
                              'they are looked up.')
  sub = p.add_subparsers(dest='command', required=True)
  f = sub.add_parser('fetch', help='download the files from the pinned eos commit, check sha256')
  f.add_argument('--dir', help=f'target folder (default: ${ENV_VAR} if set, else {cache_dir()})')
  f.add_argument('--url-pattern', default=URL_PATTERN,
                 help='URL with {commit} and {file} placeholders (default: GitHub raw)')
  sub.add_parser('where', help='print the folder in use or what is missing')
  args = p.parse_args(argv)
  if args.command == 'where':
    try:
      print(sfm_dir())
      return 0
    except MissingModelFilesError as e:
      print(e, file=sys.stderr)
      return 1
  try:
    where = fetch(args.dir, args.url_pattern)
  except FetchError as e:
    print(e, file=sys.stderr)
    return 1
  print(f'Surrey Face Model files ready in {where}'
        + ('' if args.dir is None or os.environ.get(ENV_VAR) == str(where)
           else f'; set {ENV_VAR}={where} to use them'))
  return 0


if __name__ == '__main__':
  import sys
  sys.exit(main())
