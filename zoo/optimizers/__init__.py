"""Optimizers: one module each, with its `[optim]` config class and an OptimizerSpec (`SPEC` or `SPECS`).
`base` has what they share: parameter groups by tensor rank or by role, the kernel choice, and `Chain`, several
torch optimizers stepped as one."""
