"""300W-LP and AFLW2000-3D through tensorflow-datasets, on TFDS's mock data.

Runs only where tensorflow-datasets is installed (the ``tfds`` extra); elsewhere the loader's
clear ImportError is what is tested.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
from PIL import Image

from jaxalign.data import sources
from jaxalign.data.sources import tfds_sources

HAS_TFDS = importlib.util.find_spec('tensorflow_datasets') is not None
needs_tfds = pytest.mark.skipif(
    not HAS_TFDS, reason="tensorflow-datasets not installed (pip install 'jaxalign[tfds]')")


@pytest.mark.skipif(HAS_TFDS, reason='tensorflow-datasets is installed')
def test_missing_tfds_names_the_extra(tmp_path):
  with pytest.raises(ImportError, match=r"jaxalign\[tfds\]"):
    sources.get_source('the300w_lp', tmp_path, 'train')


def test_tfds_bad_names_fail_before_importing(tmp_path):
  with pytest.raises(ValueError, match="unknown the300w_lp split 'test'"):
    tfds_sources.load('the300w_lp', tmp_path, ['test'])
  with pytest.raises(ValueError, match="unknown landmark kind 'xyz'"):
    tfds_sources.load('the300w_lp', tmp_path, landmarks='xyz')
  with pytest.raises(ValueError, match="unknown TFDS face data set 'lfw'"):
    tfds_sources.load('lfw', tmp_path)


@needs_tfds
def test_the300w_lp_mock(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=3):
    by_split, invalid = sources.load_splits('the300w_lp', tmp_path, landmarks='3d')
    raw = list(tfds.as_numpy(tfds.builder('the300w_lp', data_dir=str(tmp_path)).as_dataset(
        split='train', shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()})))
  assert invalid == [] and len(by_split['train']) == 3
  for r, ex in zip(by_split['train'], raw):
    np.testing.assert_allclose(r.points, ex['landmarks_3d'] * 450.0 - 1.0, rtol=1e-6,
                               atol=1e-4)
    assert r.meta['convention'] == '3d' and r.meta['pose_params'].shape == (7,)
    assert r.scheme == 'ibug68' and r.meta['box_source'] == 'landmarks'
    assert pathlib.Path(r.image).read_bytes() == ex['image']   # written as stored
    assert Image.open(r.image).size == (450, 450)
    assert pathlib.Path(r.image).parent == tmp_path / 'jaxalign_images' / 'the300w_lp' / 'train'


@needs_tfds
def test_aflw2k3d_mock_and_missing_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=2):
    recs, invalid = sources.get_source('aflw2k3d', tmp_path, 'test', image_dir=tmp_path / 'im')
  assert invalid == [] and len(recs) == 2
  assert recs[0].meta['convention'] == '3d' and recs[0].meta['z'].shape == (68,)
  assert pathlib.Path(recs[0].image).parent == tmp_path / 'im'
  with pytest.raises(FileNotFoundError, match='tfds build aflw2k3d'):
    sources.get_source('aflw2k3d', tmp_path / 'empty', 'test')
