"""Image sources for the training-free measures: Fashion-MNIST, Gaussian noise and ImageFolder trees.

Fashion-MNIST is read from the gzip IDX files of Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``) or from any folder holding the same four files.

The NTK measure needs a small batch of real images (spec, section 3): :func:`search_batch` draws one
deterministically from a seed, resized to the search resolution, 3 channels, normalised with the
ImageNet mean and std the models are configured for.
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .validation import check_count, check_seed

__all__ = [
    'DEFAULT_ROOT', 'FASHION_MNIST_CLASSES', 'FashionMNIST', 'read_idx', 'load_fashion_mnist',
    'fashion_mnist_batch', 'noise_batch', 'image_folder_batch', 'search_batch',
]

DEFAULT_ROOT = Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_CLASSES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
FASHION_MNIST_SPLITS = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 60000),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte', 10000),
}

IDX_UBYTE = 0x08  # the only IDX element type the MNIST family uses
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
IMAGE_SIDE = 28

PathLike = Union[str, Path]


# --------------------------------------------------------------------------- IDX files
def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when the name ends in ``.gz``; a damaged archive is a ValueError (a missing
    or unreadable file, the OSError of opening it)."""
    if path.suffix != '.gz':
        return path.read_bytes()
    with path.open('rb') as raw:
        try:
            with gzip.GzipFile(fileobj=raw) as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f'{path}: not a valid gzip file ({e})') from None


def read_idx(path: PathLike, magic: Optional[int] = None) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (gzip-compressed when the name ends in ``.gz``) into a uint8 tensor.

    The header is checked: two zero bytes, the element type (0x08, unsigned byte), the number of
    dimensions, then one big-endian uint32 size per dimension. ``magic`` (e.g. 0x803 for images)
    pins the type and number of dimensions. The payload must be exactly the product of the sizes:
    a truncated or padded file raises ``ValueError`` naming the file, the expected and the found size.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f'{path}: IDX header needs 4 bytes, found a file of {len(data)} bytes')
    found_magic = int.from_bytes(data[:4], 'big')
    if data[0] or data[1] or data[2] != IDX_UBYTE or (magic is not None and found_magic != magic):
        want = f'0x{magic:08x}' if magic is not None else f'0x0000{IDX_UBYTE:02x}NN (unsigned bytes)'
        raise ValueError(f'{path}: bad IDX magic number 0x{found_magic:08x}, expected {want}')
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f'{path}: IDX header of {ndim} dimensions needs {header} bytes, found {len(data)} bytes')
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise ValueError(f'{path}: IDX data of shape {shape} needs {expected} bytes, found {len(data)} bytes '
                         f'(the file is {"truncated" if len(data) < expected else "longer than its header says"})')
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _find_file(root: Path, name: str) -> Path:
    for candidate in (root / f'{name}.gz', root / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f'Fashion-MNIST file not found: {root / f"{name}.gz"}; install it with '
        f'`apt-get install dataset-fashion-mnist`, or give a folder with the four IDX files as the Fashion-MNIST '
        f'root (`root=` in Python; `asvit train` and `asvit eval`: --data-root; make_det_data.py: --fmnist-root; '
        f'search, scale, measure and correlate read only the Debian package)')


def load_fashion_mnist(split: str = 'train', root: PathLike = DEFAULT_ROOT) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` ('train': 60000 images, 'test': 10000): uint8 images (N, 28, 28) and int64 labels.

    Class names are :data:`FASHION_MNIST_CLASSES`, indexed by label.
    """
    if split not in FASHION_MNIST_SPLITS:
        raise ValueError(f'Fashion-MNIST split must be one of {sorted(FASHION_MNIST_SPLITS)}, got {split!r}')
    image_name, label_name, count = FASHION_MNIST_SPLITS[split]
    root = Path(root)
    image_path, label_path = _find_file(root, image_name), _find_file(root, label_name)
    images = read_idx(image_path, IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, IDX_LABELS_MAGIC)
    if images.shape != (count, IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f'{image_path}: expected images of shape {(count, IMAGE_SIDE, IMAGE_SIDE)}, '
                         f'found {tuple(images.shape)}')
    if labels.shape != (count,):
        raise ValueError(f'{label_path}: expected {count} labels, found {labels.shape[0]}')
    if int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f'{label_path}: labels must be below {len(FASHION_MNIST_CLASSES)}, '
                         f'found {int(labels.max())}')
    return images, labels.long()


class FashionMNIST(Dataset):
    """Fashion-MNIST as a map-style dataset of (image, label); images are float (1, 28, 28) in [0, 1]
    unless ``transform`` (applied to that tensor) says otherwise."""

    classes = FASHION_MNIST_CLASSES

    def __init__(self, split: str = 'train', root: PathLike = DEFAULT_ROOT,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.images, self.labels = load_fashion_mnist(split, root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self.images[index].unsqueeze(0).float() / 255
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


# --------------------------------------------------------------------------- search batches
def _check_batch_args(n: int, image_size: int, seed: int) -> None:
    check_count('batch size', n)
    check_count('image size', image_size)
    check_seed(seed)


def _normalize(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images in [0, 1], normalised with the ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _choose(total: int, n: int, seed: int, what: str) -> torch.Tensor:
    if n > total:
        raise ValueError(f'{what} has {total} images, fewer than the {n} requested')
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


def fashion_mnist_batch(n: int, image_size: int, seed: int = 0, root: PathLike = DEFAULT_ROOT) -> torch.Tensor:
    """``n`` training images chosen by ``seed``, resized (bilinear, antialiased) to ``image_size``,
    gray repeated to 3 channels, normalised: a float tensor (n, 3, image_size, image_size)."""
    _check_batch_args(n, image_size, seed)
    images, _ = load_fashion_mnist('train', root)
    chosen = images[_choose(len(images), n, seed, f'Fashion-MNIST ({root})')].unsqueeze(1).float() / 255
    resized = F.interpolate(chosen, size=(image_size, image_size), mode='bilinear', align_corners=False,
                            antialias=True).clamp_(0, 1)
    return _normalize(resized.expand(-1, 3, -1, -1))


def noise_batch(n: int, image_size: int, seed: int = 0, in_chans: int = 3) -> torch.Tensor:
    """``n`` standard Gaussian images (n, in_chans, image_size, image_size) drawn from ``seed``: already
    'normalised'."""
    _check_batch_args(n, image_size, seed)
    check_count('in_chans', in_chans)
    return torch.randn(n, in_chans, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def image_folder_batch(root: PathLike, n: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """``n`` images chosen by ``seed`` from a torchvision ImageFolder tree (root/class/image.ext), resized
    (shorter side) and centre-cropped to ``image_size``, normalised: (n, 3, image_size, image_size)."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    _check_batch_args(n, image_size, seed)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'image folder not found: {root} (expected root/<class>/<image> files)')
    dataset = ImageFolder(str(root), transform=transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]))
    chosen = _choose(len(dataset), n, seed, f'image folder {root}')

    def image(i: int) -> torch.Tensor:
        try:
            return dataset[i][0]
        except OSError as e:  # PIL: not an image, truncated
            raise ValueError(f'{dataset.samples[i][0]}: not a readable image ({e})') from None

    return _normalize(torch.stack([image(int(i)) for i in chosen]))


def search_batch(source: PathLike, n: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """The NTK input batch of a search: ``source`` is 'fashion-mnist' (Debian's package), 'noise' or the
    path of an ImageFolder tree."""
    if source == 'fashion-mnist':
        return fashion_mnist_batch(n, image_size, seed)
    if source == 'noise':
        return noise_batch(n, image_size, seed)
    if not str(source).strip() or not Path(source).exists():  # '' is not the current folder
        raise FileNotFoundError(f'data source {str(source)!r} is neither "fashion-mnist", "noise" nor an existing '
                                f'ImageFolder directory')
    return image_folder_batch(source, n, image_size, seed)
