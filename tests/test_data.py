"""The offline photo loaders: ``photo_paths`` names the files that ``sample_photos_raw`` reads."""

from __future__ import annotations

import numpy as np
import pytest

from xai.data import load_image, photo_paths, sample_photos_raw


def test_photo_paths_are_the_files_of_the_raw_photos():
    raw = dict(sample_photos_raw())
    if not raw:
        pytest.skip("no offline photo package installed")
    paths = photo_paths()
    assert list(paths) == list(raw)
    for name, path in paths.items():
        if path is None:
            continue
        assert path.is_file(), name
        image = load_image(path)
        assert image.shape == raw[name].shape, name
        if path.suffix == ".png":  # lossless: the same pixels
            np.testing.assert_array_equal(image, raw[name])
        else:  # JPEG decoders may round differently
            assert np.abs(image.astype(float) - raw[name]).mean() < 2.0, name
