"""scalor: SCALOR (Jiang et al., ICLR 2020) as a Lightning + Hydra experiment framework."""

__version__ = "0.1.0"

from scalor.launch import register_resolvers as _register_resolvers  # noqa: E402
from scalor.model.config import register_schema as _register_schema  # noqa: E402

# Wherever scalor is imported, so before Hydra composes conf/: ${scalor.*} in conf/ (sweeper, launchers, logger)
# resolve, and conf/model composes against its schema (scalor.model.SCALORConfig).
_register_resolvers()
_register_schema()
