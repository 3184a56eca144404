"""The SCALOR model: one file per stage of the paper (see README, "Model")."""

from ..schedules import Schedule
from .config import SCALORConfig
from .execution import ExecutionOptions
from .scalor import SCALOR
from .state import PRESENCE_THRESHOLD, Carry, ObjectState, SequenceOutput

__all__ = ["SCALOR", "SCALORConfig", "ExecutionOptions", "Schedule", "Carry", "ObjectState", "SequenceOutput",
           "PRESENCE_THRESHOLD"]
