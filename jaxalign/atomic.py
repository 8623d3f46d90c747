"""Atomic file writing: a reader (or a rerun after a kill) sees the old file or the new one,
never half a file.

:func:`write_bytes` / :func:`write_text` / :func:`write_json` write to a temporary file in the
destination's folder (same file system, so the final rename is atomic), flush and ``fsync`` it,
then ``os.replace`` it over the destination and ``fsync`` the folder so the rename itself
survives a power cut. :func:`atomic_path` is the same for writers that need a path (``np.savez``,
image encoders). :func:`append_line` appends one whole line in a single ``write`` call and
flushes it, for append-only logs (``metrics.jsonl``); a reader drops a torn last line.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Iterator


def _fsync_dir(folder: str) -> None:
  """Makes a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = '.tmp') -> Iterator[str]:
  """Yields a temporary path next to ``path``; on a clean exit it replaces ``path``.

  The caller writes the whole file to the yielded path (e.g. an image encoder's ``save``). On
  an exception the temporary file is removed and ``path`` is left as it was. ``suffix`` ends
  the temporary name (e.g. ``'.tmp.png'`` for writers that pick the format from it).
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix=suffix, dir=folder)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, 'rb+') as f:
      os.fsync(f.fileno())
    # mkstemp creates 0600; give the file the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  _fsync_dir(folder)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = 'w',
                encoding: str | None = 'utf-8') -> Iterator[IO]:
  """``open(path, mode)`` writing to a temporary file that replaces ``path`` on a clean exit.

  ``mode`` is ``'w'`` (text) or ``'wb'`` (bytes).
  """
  if mode not in ('w', 'wb'):
    raise ValueError(f'atomic_open: mode must be "w" or "wb", got {mode!r}')
  with atomic_path(path) as tmp:
    with open(tmp, mode, encoding=None if 'b' in mode else encoding) as f:
      yield f
      f.flush()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically."""
  with atomic_open(path, 'wb') as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically."""
  write_bytes(path, text.encode('utf-8'))


def write_json(path: str | os.PathLike, obj, **dump_kwargs) -> None:
  """Writes ``json.dumps(obj, **dump_kwargs)`` to ``path`` atomically."""
  write_text(path, json.dumps(obj, **dump_kwargs))


def open_append(path: str | os.PathLike) -> IO[bytes]:
  """``path`` opened for :func:`append_line` (unbuffered binary append)."""
  return open(path, 'ab', buffering=0)


def append_line(f: IO[bytes], line: str) -> None:
  """Appends ``line`` plus a newline to ``f`` (from :func:`open_append`) in one ``write``.

  The file is unbuffered, so the line reaches the OS in a single system call: a kill leaves
  every earlier line whole. A kill during that call can still tear this last line on some file
  systems, so readers of such logs drop an unparsable last line.
  """
  data = (line.rstrip('\n') + '\n').encode('utf-8')
  written = f.write(data)
  while written is not None and written < len(data):   # a short write (signal, full pipe)
    written += f.write(data[written:])
