"""jaxalign.assets: lookup order and `fetch` against a local HTTP server (no internet)."""

import functools
import http.server
import os
import pathlib
import shutil
import threading

import pytest

from jaxalign import assets


@pytest.fixture()
def server(tmp_path, sfm_dir):
  """Serves copies of the model files from tmp_path/www on 127.0.0.1; one corrupted."""
  www = tmp_path / 'www'
  www.mkdir()
  for name in assets.SFM_FILES:
    shutil.copy(sfm_dir / name, www / name)
  bad = www / 'sfm_model_contours.json'
  bad.write_bytes(bad.read_bytes()[:-10] + b'corrupted!')
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
  handler.log_message = lambda *a: None
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{httpd.server_address[1]}/{{file}}?commit={{commit}}', www
  httpd.shutdown()
  httpd.server_close()


def test_fetch_checks_hashes_and_deletes_bad_files(server, tmp_path, sfm_dir):
  url, www = server
  target = tmp_path / 'cache'
  with pytest.raises(assets.FetchError, match='sfm_model_contours.json.*sha256 mismatch'):
    assets.fetch(target, url, log=lambda *_: None)
  names = sorted(p.name for p in target.iterdir())
  assert 'sfm_model_contours.json' not in names            # mismatch never kept
  assert not any(n.endswith('.part') for n in names)         # no partial leftovers
  assert len(names) == len(assets.SFM_FILES) - 1
  # Repair the server copy: the second fetch completes and only downloads the missing file.
  shutil.copy(sfm_dir / 'sfm_model_contours.json', www / 'sfm_model_contours.json')
  logs = []
  assets.fetch(target, url, log=logs.append)
  assert sum('downloaded' in m for m in logs) == 1
  assert assets.sfm_dir(target) == target


def test_fetch_reports_missing_file(server, tmp_path):
  url, www = server
  (www / 'ibug_to_sfm.txt').unlink()
  with pytest.raises(assets.FetchError) as e:
    assets.fetch(tmp_path / 'c', url, files=['ibug_to_sfm.txt'], log=lambda *_: None)
  assert '404' in str(e.value)
  assert not list((tmp_path / 'c').iterdir())


def test_cli_fetch(server, tmp_path, capsys):
  url, _ = server
  rc = assets.main(['fetch', '--dir', str(tmp_path / 'd'), '--url-pattern', url])
  assert rc == 1
  assert 'sfm_model_contours.json' in capsys.readouterr().err


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
  monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
  with pytest.raises(assets.MissingModelFilesError, match='jaxalign.assets fetch'):
    assets.sfm_dir()
  monkeypatch.delenv(assets.ENV_VAR)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  with pytest.raises(assets.MissingModelFilesError, match='user cache'):
    assets.sfm_dir()
  assert assets.cache_dir() == pathlib.Path(tmp_path / 'xdg' / 'jaxalign' / 'sfm')


def test_fetch_defaults_to_the_env_folder_and_only_verifies(monkeypatch, capsys):
  """With $JAXALIGN_SFM_DIR holding good files, fetch downloads nothing and succeeds."""
  src = assets.sfm_dir()  # the test model folder
  monkeypatch.setenv(assets.ENV_VAR, str(src))
  where = assets.fetch(url_pattern='http://127.0.0.1:9/{commit}/{file}', timeout=1.0)
  assert where == src
  out = capsys.readouterr().out
  assert out.count('present, sha256 ok') == len(assets.SFM_FILES)
