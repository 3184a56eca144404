"""scalor: SCALOR (Jiang et al., ICLR 2020) as a Lightning + Hydra experiment framework."""

__version__ = "0.1.0"

from scalor.launch import register_resolvers as _register_resolvers  # noqa: E402

_register_resolvers()  # ${scalor.*} in conf/ (sweeper, launchers, logger) resolve wherever scalor is imported
