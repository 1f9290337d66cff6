"""The fleet simulator: many devices in one process on the agent's own core (``edgekit sim``).

``Fleet(SimConfig(...)).run(duration)`` or ``with running(config) as fleet: ...``; faults in
:class:`Faults`. See :mod:`edgekit.sim.fleet` for the process model and how to spread a
large fleet over several processes.
"""

from .faults import Faults
from .fleet import Fleet, SimConfig, Summary, running

__all__ = ["Faults", "Fleet", "SimConfig", "Summary", "running"]
