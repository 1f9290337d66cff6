"""Every failure the device can report, as a tree with one root per failure domain.

    AgentError
     ├── TrustError          the trust file is missing or unreadable (fail closed)
     ├── BundleError         the bundle's bytes are bad: signature, manifest, hashes, version
     ├── ModelError          verified bytes that do not make a working model (load, health)
     ├── RowError            one input row cannot be served (shape, NaN, type, no model)
     ├── ProtocolError       a message on a subscribed topic is malformed
     └── TransferError       a bundle transfer could not complete

Each class carries a stable ``code`` that appears in failure events on the wire, so the
host can count and alert on them without parsing English.
"""

from __future__ import annotations


class AgentError(Exception):
    code = "agent.error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TrustError(AgentError):
    code = "trust.unavailable"


class BundleError(AgentError):
    code = "bundle.invalid"


class BundleTooLarge(BundleError):
    code = "bundle.too_large"


class BundleMalformed(BundleError):
    code = "bundle.malformed"


class MissingSignature(BundleError):
    code = "bundle.missing_signature"


class UnknownKey(BundleError):
    code = "bundle.unknown_key"


class BadSignature(BundleError):
    code = "bundle.bad_signature"


class ManifestInvalid(BundleError):
    code = "bundle.manifest_invalid"


class Incompatible(BundleError):
    code = "bundle.incompatible"


class Expired(BundleError):
    code = "bundle.expired"


class VersionRollback(BundleError):
    code = "bundle.version_rollback"


class VersionConflict(BundleError):
    code = "bundle.version_conflict"


class UnlistedMember(BundleError):
    code = "bundle.unlisted_member"


class SizeMismatch(BundleError):
    code = "bundle.size_mismatch"


class HashMismatch(BundleError):
    code = "bundle.hash_mismatch"


class ModelError(AgentError):
    code = "model.invalid"


class ModelLoadFailed(ModelError):
    code = "model.load_failed"


class HealthCheckFailed(ModelError):
    code = "model.health_failed"


class RowError(AgentError):
    code = "row.invalid"


class WrongShape(RowError):
    code = "row.wrong_shape"


class NotFinite(RowError):
    code = "row.not_finite"


class BadValue(RowError):
    code = "row.bad_value"


class NoModel(RowError):
    code = "row.no_model"


class InferenceFailed(RowError):
    """The model, not the row, failed: counts against a new model on trial."""

    code = "inference.failed"


class OutputNotFinite(RowError):
    """The model answered NaN or infinity: in practice an input beyond the model's float range
    (1e39 in a float32 model). The row's fault, so it does not fail a trial."""

    code = "row.out_of_range"


class ProtocolError(AgentError):
    code = "protocol.bad_message"


class DesiredRejected(ProtocolError):
    code = "desired.rejected"


class TransferError(AgentError):
    code = "transfer.failed"


class ChunkRejected(TransferError):
    code = "transfer.bad_chunk"
