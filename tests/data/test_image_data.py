"""Image datamodule: folders, transforms, bad files, built-in data, and the resumable per-rank sampler."""

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.base import ResumableSampler
from src.domains import build_datamodule
from src.domains.image.data import ImageDataModule, SyntheticShapes
from src.errors import DataError


def _write_images(root, n=6, size=(40, 30)):
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        folder = root / "sub" if i % 2 else root
        Image.fromarray(arr).save(folder / f"img{i}.{'png' if i % 3 else 'jpg'}")


def test_folder_reads_recursively_resizes_and_scales(tmp_path):
    _write_images(tmp_path)
    dm = ImageDataModule(path=str(tmp_path), resolution=16, val_fraction=0.2, num_workers=0)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 6 and len(dm.val_set) >= 1
    x = dm.train_set[0]["x"]
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    gray = ImageDataModule(path=str(tmp_path), resolution=8, channels=1, num_workers=0)
    gray.setup()
    assert gray.train_set[0]["x"].shape == (1, 8, 8)
    assert gray.data_shape == [1, 8, 8]


def test_unreadable_images_are_skipped_and_counted(tmp_path, caplog):
    _write_images(tmp_path, n=9)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    dm = ImageDataModule(path=str(tmp_path), resolution=8, max_bad_fraction=0.2, num_workers=0)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 9
    assert "Skipped 1 of 10 images" in caplog.text
    strict = ImageDataModule(path=str(tmp_path), resolution=8, max_bad_fraction=0.05, num_workers=0)
    with pytest.raises(DataError, match=r"1 of 10 images could not be read .*broken.png.*max_bad_fraction"):
        strict.setup()


def test_missing_and_empty_folders_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="does not exist; pass a folder of png/jpg images"):
        ImageDataModule(path=str(tmp_path / "nope")).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images found under"):
        ImageDataModule(path=str(tmp_path / "empty")).setup()
    with pytest.raises(DataError, match="Unknown datamodule.name 'video'"):
        build_datamodule({"name": "video"})


def test_builtin_shapes_are_deterministic_and_varied():
    a, b = SyntheticShapes(8, 16, 3, seed=1), SyntheticShapes(8, 16, 3, seed=1)
    torch.testing.assert_close(a[3]["x"], b[3]["x"])
    imgs = torch.stack([a[i]["x"] for i in range(8)])
    assert imgs.shape == (8, 3, 16, 16) and imgs.min() >= -1 and imgs.max() <= 1
    assert (imgs[0] - imgs[1]).abs().mean() > 0.05  # different images


def test_sampler_splits_ranks_and_resumes_at_any_position():
    size = 10
    streams = [ResumableSampler(size, seed=3, rank=r, world_size=3) for r in range(3)]
    firsts = [[k for _, k in zip(range(4), s)] for s in streams]
    seen = {k % size for f in firsts for k in f}
    assert len(seen) == size  # one epoch over 3 ranks covers every item (padding wraps around)
    full = [k for _, k in zip(range(25), ResumableSampler(size, seed=3, rank=1, world_size=3))]
    resumed = [k for _, k in zip(range(18), ResumableSampler(size, seed=3, rank=1, world_size=3, start=7))]
    assert resumed == full[7:]
    # the key encodes the epoch, so augmentation seeds differ between epochs of the same item
    assert all(k < size for k in full[:4]) and all(size <= k < 2 * size for k in full[4:8])
