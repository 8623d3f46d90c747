"""The 3DMM stage in JAX: the Surrey Face Model as arrays, batched fitting, contour, completion."""
