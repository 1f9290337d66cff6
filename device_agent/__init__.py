"""edgekit-agent: the device side of edgekit.

Depends only on numpy, onnxruntime, paho-mqtt, cryptography and click. The host package
imports this package's format and protocol modules so every wire format has one definition.
"""

__version__ = "0.1.0"
