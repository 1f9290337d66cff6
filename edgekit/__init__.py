"""edgekit: train, convert, sign and ship tabular models to fleets of IoT devices.

The host side. Importing it needs the ``[host]`` extra for the training commands; the
device agent (``device_agent``) needs none of it.
"""

from device_agent import __version__

__all__ = ["__version__"]
