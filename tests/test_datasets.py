"""Fashion-MNIST IDX reading (real Debian files and damaged copies) and the search-batch sources."""
from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from asvit_zoo.datasets import (
    DEFAULT_ROOT, FASHION_MNIST_CLASSES, FashionMNIST, fashion_mnist_batch, image_folder_batch, load_fashion_mnist,
    noise_batch, read_idx, search_batch)

TEST_FILES = ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
requires_fashion_mnist = pytest.mark.skipif(
    not all((DEFAULT_ROOT / name).is_file() for name in TEST_FILES),
    reason=f'Fashion-MNIST not installed at {DEFAULT_ROOT} (apt-get install dataset-fashion-mnist)')


def write_idx(path: Path, header: bytes, payload: bytes) -> Path:
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'wb') as f:
        f.write(header + payload)
    return path


def idx_header(magic: int, *shape: int) -> bytes:
    return magic.to_bytes(4, 'big') + b''.join(s.to_bytes(4, 'big') for s in shape)


@pytest.fixture()
def test_split_copy(tmp_path: Path) -> Path:
    """A folder holding a copy of the real test split, to damage."""
    for name in TEST_FILES:
        shutil.copy(DEFAULT_ROOT / name, tmp_path / name)
    return tmp_path


# --------------------------------------------------------------------------- the real files
@requires_fashion_mnist
def test_real_test_split() -> None:
    images, labels = load_fashion_mnist('test')
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    # the published first labels of t10k: ankle boot, pullover, trouser, trouser, shirt, ...
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert FASHION_MNIST_CLASSES[9] == 'Ankle boot' and len(FASHION_MNIST_CLASSES) == 10


@requires_fashion_mnist
def test_real_train_split_and_dataset() -> None:
    dataset = FashionMNIST('train')
    assert len(dataset) == 60000
    image, label = dataset[0]
    assert image.shape == (1, 28, 28) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert label == int(dataset.labels[0]) and dataset.classes == FASHION_MNIST_CLASSES
    assert torch.equal(image, dataset.images[0].float().div(255).unsqueeze(0))  # bytes 0..255 to [0, 1]
    assert torch.bincount(dataset.labels).tolist() == [6000] * 10


@requires_fashion_mnist
def test_fashion_mnist_batch_is_seeded_and_normalised() -> None:
    batch = fashion_mnist_batch(4, 32, seed=3)
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.float32
    assert torch.equal(batch, fashion_mnist_batch(4, 32, seed=3))
    assert not torch.equal(batch, fashion_mnist_batch(4, 32, seed=4))
    # gray repeated into 3 channels, then per-channel ImageNet normalisation: channels differ only affinely
    assert torch.equal(search_batch('fashion-mnist', 4, 32, seed=3), batch)
    black = fashion_mnist_batch(1, 32, seed=3).amin(dim=(0, 2, 3))
    assert torch.allclose(black, -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225]))


# --------------------------------------------------------------------------- damaged files
def test_read_idx_round_trip_plain_and_gzip(tmp_path: Path) -> None:
    payload = bytes(range(24))
    for name in ('a-idx3-ubyte', 'a-idx3-ubyte.gz'):
        data = read_idx(write_idx(tmp_path / name, idx_header(0x803, 2, 3, 4), payload), magic=0x803)
        assert data.shape == (2, 3, 4) and data.flatten().tolist() == list(payload)


def test_read_idx_truncated_payload_names_file_and_sizes(tmp_path: Path) -> None:
    path = write_idx(tmp_path / 'x-idx3-ubyte.gz', idx_header(0x803, 2, 3, 4), bytes(20))
    with pytest.raises(ValueError, match=r'x-idx3-ubyte\.gz.*needs 40 bytes, found 36 bytes.*truncated'):
        read_idx(path)


def test_read_idx_padded_payload(tmp_path: Path) -> None:
    path = write_idx(tmp_path / 'x-idx1-ubyte', idx_header(0x801, 3), bytes(5))
    with pytest.raises(ValueError, match='needs 11 bytes, found 13 bytes.*longer than its header'):
        read_idx(path)


@pytest.mark.parametrize('header, message', [
    (b'\x00\x00', 'header needs 4 bytes, found a file of 2 bytes'),
    (b'\x00\x00\x0d\x01' + bytes(4), 'bad IDX magic number 0x00000d01'),  # float32 elements
    (b'\x01\x00\x08\x01' + bytes(4), 'bad IDX magic number 0x01000801'),
    (b'\x00\x00\x08\x03\x00\x00', 'header of 3 dimensions needs 16 bytes, found 6 bytes'),
])
def test_read_idx_bad_headers(tmp_path: Path, header: bytes, message: str) -> None:
    path = write_idx(tmp_path / 'bad-idx', header, b'')
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_read_idx_wrong_magic_for_role(tmp_path: Path) -> None:
    path = write_idx(tmp_path / 'labels', idx_header(0x801, 2), b'\x01\x02')
    with pytest.raises(ValueError, match='bad IDX magic number 0x00000801, expected 0x00000803'):
        read_idx(path, magic=0x803)


@requires_fashion_mnist
def test_truncated_gzip_copy(test_split_copy: Path) -> None:
    path = test_split_copy / 't10k-images-idx3-ubyte.gz'
    path.write_bytes(path.read_bytes()[:100000])
    with pytest.raises(ValueError, match=r't10k-images-idx3-ubyte\.gz: not a valid gzip file'):
        load_fashion_mnist('test', root=test_split_copy)


@requires_fashion_mnist
def test_corrupt_gzip_copy(test_split_copy: Path) -> None:
    path = test_split_copy / 't10k-labels-idx1-ubyte.gz'
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r't10k-labels-idx1-ubyte\.gz: not a valid gzip file'):
        load_fashion_mnist('test', root=test_split_copy)


@requires_fashion_mnist
def test_truncated_idx_inside_valid_gzip(test_split_copy: Path) -> None:
    path = test_split_copy / 't10k-images-idx3-ubyte.gz'
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-784], compresslevel=1))  # one image short
    with pytest.raises(ValueError, match=rf't10k-images-idx3-ubyte\.gz: .*needs {len(raw)} bytes, found '
                                         rf'{len(raw) - 784} bytes'):
        load_fashion_mnist('test', root=test_split_copy)


@requires_fashion_mnist
def test_label_count_mismatch(test_split_copy: Path) -> None:
    write_idx(test_split_copy / 't10k-labels-idx1-ubyte.gz', idx_header(0x801, 9999), bytes(9999))
    with pytest.raises(ValueError, match='expected 10000 labels, found 9999'):
        load_fashion_mnist('test', root=test_split_copy)


@requires_fashion_mnist
def test_label_out_of_range_and_wrong_image_shape(test_split_copy: Path) -> None:
    labels = test_split_copy / 't10k-labels-idx1-ubyte.gz'
    write_idx(labels, idx_header(0x801, 10000), bytes([10]) * 10000)
    with pytest.raises(ValueError, match=f'{labels}: labels must be below 10, found 10'):
        load_fashion_mnist('test', root=test_split_copy)
    images = test_split_copy / 't10k-images-idx3-ubyte.gz'
    write_idx(images, idx_header(0x803, 10000, 28, 27), bytes(10000 * 28 * 27))
    with pytest.raises(ValueError, match=re.escape(f'{images}: expected images of shape (10000, 28, 28), found '
                                                   '(10000, 28, 27)')):
        load_fashion_mnist('test', root=test_split_copy)


@requires_fashion_mnist
def test_plain_idx_files_are_read_where_no_gzip_is(tmp_path: Path) -> None:
    for name in TEST_FILES:  # the files as an unpacked download holds them
        (tmp_path / name.removesuffix('.gz')).write_bytes(gzip.decompress((DEFAULT_ROOT / name).read_bytes()))
    images, labels = load_fashion_mnist('test', tmp_path)
    assert labels[:3].tolist() == [9, 2, 1] and torch.equal(images, load_fashion_mnist('test')[0])


def test_a_missing_gzip_file_is_not_called_damaged(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r'No such file or directory: .*missing-idx1-ubyte\.gz'):
        read_idx(tmp_path / 'missing-idx1-ubyte.gz')


def test_missing_files_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf'{tmp_path}/train-images-idx3-ubyte\.gz.*apt-get install '
                                                r'dataset-fashion-mnist.*root='):
        load_fashion_mnist('train', root=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_fashion_mnist('val', root=tmp_path)


# --------------------------------------------------------------------------- other sources
def test_noise_batch_is_seeded() -> None:
    batch = search_batch('noise', 3, 16, seed=1)
    assert batch.shape == (3, 3, 16, 16)
    assert torch.equal(batch, noise_batch(3, 16, seed=1)) and not torch.equal(batch, noise_batch(3, 16, seed=2))
    with pytest.raises(ValueError, match='batch size must be an integer >= 1, got 0'):
        noise_batch(0, 16)
    for args, message in (((2.5, 16), 'batch size must be an integer >= 1, got 2.5'),
                          ((2, 16.0), 'image size must be an integer >= 1, got 16.0'),
                          ((2, 16, 1.5), r'seed must be an integer in \[0, '),
                          ((2, 16, 0, 0), 'in_chans must be an integer >= 1, got 0')):
        with pytest.raises(ValueError, match=message):
            noise_batch(*args)


def test_image_folder_batch(tmp_path: Path) -> None:
    from PIL import Image

    for label, color in (('cat', (250, 10, 10)), ('dog', (10, 10, 250))):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new('RGB', (40 + 10 * i, 30), color).save(tmp_path / label / f'{i}.png')
    batch = search_batch(str(tmp_path), 4, 24, seed=0)
    assert batch.shape == (4, 3, 24, 24)
    assert torch.equal(batch, image_folder_batch(tmp_path, 4, 24, seed=0))
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
    normalised = {color: (torch.tensor(color) / 255 - mean) / std for color in ((250, 10, 10), (10, 10, 250))}
    for image in batch:  # each image is one of the solid colours, normalised with the ImageNet mean and std
        pixel = image[:, 0, 0]
        assert torch.equal(image, pixel.view(3, 1, 1).expand_as(image))
        assert any(torch.allclose(pixel, value, atol=1e-6) for value in normalised.values()), pixel
    with pytest.raises(ValueError, match='has 6 images, fewer than the 7 requested'):
        image_folder_batch(tmp_path, 7, 24)
    for missing in (str(tmp_path / 'missing'), ''):
        with pytest.raises(FileNotFoundError, match='neither "fashion-mnist", "noise" nor an existing ImageFolder'):
            search_batch(missing, 4, 24)
    cut = tmp_path / 'cat' / '1.png'
    cut.write_bytes(cut.read_bytes()[:60])
    with pytest.raises(ValueError, match=rf'^{cut}: not a readable image \(.*truncated'):
        image_folder_batch(tmp_path, 6, 24)
