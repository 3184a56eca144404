"""scalor: SCALOR (Jiang et al., ICLR 2020) as a Lightning + Hydra experiment framework."""

__version__ = "0.1.0"
