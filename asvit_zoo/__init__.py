"""asvit-zoo: As-ViT (Auto-scaling Vision Transformers without Training) as a timm model family.

``import asvit_zoo`` registers ``asvit`` (any genotype) and every variant of the registry with timm.
"""
from importlib.metadata import version

from .asvit import AsViT, checkpoint_filter_fn, register_folder, resolve_genotype
from .genotype import SEARCH_SPACE, Genotype
from .registry import RegistryError, VariantCard, load_registry

__version__ = version('asvit-zoo')  # pyproject.toml's, as installed: the one place it is set

__all__ = ['AsViT', 'Genotype', 'SEARCH_SPACE', 'RegistryError', 'VariantCard', 'checkpoint_filter_fn',
           'load_registry', 'register_folder', 'resolve_genotype', '__version__']
