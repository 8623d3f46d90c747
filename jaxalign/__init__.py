"""jaxalign: pose-aware face alignment (Li et al., BMVC 2019) in JAX/Flax with a 3DMM stage."""

__version__ = '0.1.0'
