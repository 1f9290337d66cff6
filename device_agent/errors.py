"""Every failure the device can report, as a tree with one root per failure domain, and the
lifecycle events it reports beside them.

    AgentError
     ├── TrustError          the trust file is missing or unreadable (fail closed)
     ├── BundleError         the bundle's bytes are bad: signature, manifest, hashes, version
     ├── ModelError          verified bytes that do not make a working model (load, health)
     ├── DeployError         a deployment step that is not about the bundle's bytes: the
     │                       transfer document, timeouts, storage, install, trial
     ├── RowError            one input row cannot be served (shape, NaN, type, no model)
     ├── ProtocolError       a message on a subscribed topic is malformed
     ├── TransferError       a chunk of a bundle transfer is bad
     ├── ClientError         a local application's request cannot be answered as a whole
     ├── DeviceError         the device around the agent: its clock, its input sources
     └── InternalError       the agent's own invariants (an illegal phase change), its configuration

Each class carries a stable ``code`` that appears in failure events on the wire, so the
host can count and alert on them without parsing English; its docstring says what it means
and ``action`` what an operator should do (``docs/errors.md`` is generated from both).
``transient`` marks deployment failures that say nothing against the bundle itself: the
device tries again when the retained desired state is redelivered.

Lifecycle events (:class:`Lifecycle`) are not failures and live in their own namespace,
``lifecycle.*``; an event document's ``kind`` says which of the two it is. No other module
defines a code: ``tests/unit/test_catalogue.py`` fails on any code emitted from outside.
"""

from __future__ import annotations

from enum import StrEnum


class AgentError(Exception):
    """An unexpected failure inside the agent."""

    code = "agent.error"
    action = "Read the agent's log on the device; report it if it repeats."
    transient = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# ── trust ─────────────────────────────────────────────────────────────────────────────


class TrustError(AgentError):
    """The trust file is missing or invalid: every bundle and desired state is refused."""

    code = "trust.unavailable"
    action = "Install a valid trust file (edgekit keys trust -o trust.json) at the agent's --trust path."


class TrustRejected(TrustError):
    """A new trust file was refused: not signed by enough of the current root keys, not newer
    than the current one, or malformed. The current trust file stays."""

    code = "trust.rejected"
    action = "Publish trust files with edgekit keys trust publish, signed by the current root key (or keys)."


# ── the bundle's bytes ────────────────────────────────────────────────────────────────


class BundleError(AgentError):
    """The bundle is invalid."""

    code = "bundle.invalid"
    action = "Rebuild the bundle with edgekit bundle and deploy it again."


class BundleTooLarge(BundleError):
    """The bundle (or its manifest, or a member) is above this device's size limit."""

    code = "bundle.too_large"
    action = "Quantize or shrink the model, or raise the device's limit (limits.max_bundle_bytes)."


class BundleMalformed(BundleError):
    """The bundle is not a well-formed archive of stored members."""

    code = "bundle.malformed"
    action = "Rebuild the bundle with edgekit bundle; do not recompress or edit .ekb files."


class MissingSignature(BundleError):
    """A signed document carries no usable signature."""

    code = "bundle.missing_signature"
    action = "Sign with edgekit bundle --key / edgekit deploy; unsigned documents are always refused."


class UnknownKey(BundleError):
    """Signed only by keys this device does not trust for that role."""

    code = "bundle.unknown_key"
    action = "Sign with a key in the device's trust file, or give the device a trust file that lists the key."


class BadSignature(BundleError):
    """A signature by a trusted key does not match the signed bytes: the document was changed."""

    code = "bundle.bad_signature"
    action = "Treat as tampering: find who changed the document between host and device; redeploy from the registry."


class ManifestInvalid(BundleError):
    """The signed manifest is not valid (missing or mistyped fields, duplicate keys, NaN)."""

    code = "bundle.manifest_invalid"
    action = "Rebuild the bundle with a matching edgekit version."


class Incompatible(BundleError):
    """The bundle needs something this device or agent version does not have."""

    code = "bundle.incompatible"
    action = "Upgrade the agent, or bundle for this device class."


class Expired(BundleError):
    """The bundle's expiry time has passed."""

    code = "bundle.expired"
    action = "Build and deploy a fresh bundle (or check the device's clock)."


class VersionRollback(BundleError):
    """The bundle's version is lower than one this device already accepted."""

    code = "bundle.version_rollback"
    action = "Deploy a higher version; to go back, use edgekit rollback, which makes a new higher version."


class VersionConflict(BundleError):
    """Same name and version as an accepted bundle, but different content."""

    code = "bundle.version_conflict"
    action = "Give every build its own version: bundle again, which picks the next version."


class UnlistedMember(BundleError):
    """The archive holds a file the signed manifest does not list."""

    code = "bundle.unlisted_member"
    action = "Treat as tampering; rebuild the bundle with edgekit bundle."


class SizeMismatch(BundleError):
    """A file's size differs from the size in the signed manifest."""

    code = "bundle.size_mismatch"
    action = "Treat as tampering or corruption; redeploy the bundle from the registry."


class HashMismatch(BundleError):
    """A file's (or the whole bundle's) SHA-256 differs from the signed one."""

    code = "bundle.hash_mismatch"
    action = "Treat as tampering or corruption; redeploy the bundle from the registry."


# ── the model ─────────────────────────────────────────────────────────────────────────


class ModelError(AgentError):
    """The verified model cannot serve."""

    code = "model.invalid"
    action = "Check the model with edgekit verify; rebuild it."


class ModelLoadFailed(ModelError):
    """onnxruntime could not load the model on this device."""

    code = "model.load_failed"
    action = "Check the device's onnxruntime version against the bundle's opset; rebuild with an older opset."


class HealthCheckFailed(ModelError):
    """The model's answers on the bundle's health samples differ from the host's."""

    code = "model.health_failed"
    action = "Compare onnxruntime versions on host and device; a quantized model may need a wider tolerance."


class ModelTimeout(ModelError):
    """Loading the model or running its health samples took longer than its budget
    (engine.load_timeout_s of wall-clock time, or engine.load_cpu_s of CPU): it was stopped."""

    code = "model.timeout"
    action = "Look for loops or huge operators in the model (edgekit inspect); raise engine.load_timeout_s if needed."


class ModelResources(ModelError):
    """Loading the model or running its health samples needed more memory than
    engine.load_memory_bytes: it was stopped before it could take the device's memory."""

    code = "model.resources"
    action = "Shrink or quantize the model; raise engine.load_memory_bytes if the device has the room."


class ModelCrashed(ModelError):
    """The process that loads and checks a new model died (a crash inside onnxruntime)."""

    code = "model.crashed"
    action = "Check the model with edgekit verify on a machine like the device; rebuild it with another opset."


# ── deployment steps ──────────────────────────────────────────────────────────────────


class DeployError(AgentError):
    """A deployment step failed."""

    code = "deploy.failed"
    action = "Read the event's detail; deploy again once it is fixed."


class TransferMismatch(DeployError):
    """The signed transfer document describes another bundle than the desired state."""

    code = "transfer.mismatch"
    action = "Deploy again with edgekit deploy: it republishes the transfer document next to the chunks."


class TransferTimeout(DeployError):
    """The transfer made no progress for the configured time; the device retries later."""

    code = "transfer.timeout"
    action = "Check that the broker still holds the bundle's chunks (edgekit deploy again repairs them)."
    transient = True


class StorageError(DeployError):
    """The state directory could not be read or written (disk full, permissions)."""

    code = "storage.failed"
    action = "Free space or fix permissions in the agent's state directory."
    transient = True


class InstallFailed(DeployError):
    """Installing a verified bundle failed for a reason outside the bundle."""

    code = "install.failed"
    action = "Read the agent's log on the device; the previous model keeps serving."
    transient = True


class TrialFailed(DeployError):
    """The new model failed on live rows during its trial; the previous model serves again."""

    code = "trial.failed"
    action = "Look at the rows the device serves (edgekit fleet status, events) and fix the model."


class TrialRegressed(DeployError):
    """The new model did worse on live rows than the one it replaces: more rows rejected,
    slower, or more memory, beyond the core.trial_* limits; the previous model serves again."""

    code = "trial.regressed"
    action = "Check that the model fits what the device feeds it (its features); the event says what regressed."


class TrialCrashed(DeployError):
    """The agent stopped during this bundle's install (load, health check) or trial too often
    (core.max_trial_crashes); it is not retried until a newer desired state asks."""

    code = "trial.crashed"
    action = "Look for crashes on the device (memory, the model); deploy again to retry it."


# ── rows ──────────────────────────────────────────────────────────────────────────────


class RowError(AgentError):
    """An input row cannot be served."""

    code = "row.invalid"
    action = "Fix what feeds the agent: rows must match the model's features."


class WrongShape(RowError):
    """The row has the wrong number of features, or lacks named ones."""

    code = "row.wrong_shape"
    action = "Send one value per model feature, in order or by name (edgekit inspect lists them)."


class NotFinite(RowError):
    """A value is NaN or infinite where the model does not accept it."""

    code = "row.not_finite"
    action = "Send finite numbers, or train with missing values so the model imputes them."


class BadValue(RowError):
    """A value has the wrong type (text for a number, a number for a category, null)."""

    code = "row.bad_value"
    action = "Send numbers for numeric features and strings for categorical ones."


class NoModel(RowError):
    """No model is active yet."""

    code = "row.no_model"
    action = "Deploy a bundle to the device (edgekit deploy)."


class InferenceFailed(RowError):
    """The model, not the row, failed: counts against a new model on trial."""

    code = "inference.failed"
    action = "Check the model with edgekit verify and the row that failed; the previous model is restored on trial."


class OutputNotFinite(RowError):
    """The model answered NaN or infinity: in practice an input beyond the model's float range
    (1e39 in a float32 model). The row's fault, so it does not fail a trial."""

    code = "row.out_of_range"
    action = "Clamp or scale the input; values this large are outside what the model was trained on."


# ── messages ──────────────────────────────────────────────────────────────────────────


class ProtocolError(AgentError):
    """A message is malformed (not JSON, missing fields, wrong types, too large)."""

    code = "protocol.bad_message"
    action = "Find the client publishing on the device's topics; only edgekit should write there."


class DesiredRejected(ProtocolError):
    """A signed desired state was refused (older sequence, wrong address, expired)."""

    code = "desired.rejected"
    action = "Deploy again with edgekit deploy; replayed or misaddressed documents are refused."


class DesiredMissing(ProtocolError):
    """No desired state is retained for this device or its groups (the retained document was
    cleared, or none arrived after connecting): the device keeps what it serves, and nothing
    tells it what to run."""

    code = "desired.missing"
    action = "Deploy again (edgekit deploy); find who cleared the retained desired topic (only edgekit should)."


class CommandRejected(ProtocolError):
    """A command on this device's command topic was refused: addressed to another device,
    asking for more than one command may, or above the rate limit for commands."""

    code = "command.rejected"
    action = "Find who publishes on dev/<id>/cmd; edgekit serve asks only for what it is missing, a few times."


class SamplesRejected(ProtocolError):
    """A samples request was refused: addressed to another device, expired, or expiring
    further ahead than core.samples_max_expiry_s. (A bad signature is reported as such.)"""

    code = "samples.rejected"
    action = "Ask again with edgekit fleet samples pull; check the host's and the device's clocks."


class TransferError(AgentError):
    """A bundle transfer failed."""

    code = "transfer.failed"
    action = "Deploy again with edgekit deploy, which repairs what the broker lost."


class ChunkRejected(TransferError):
    """A chunk does not match its signed hash or length; it is fetched again after a pause."""

    code = "transfer.bad_chunk"
    action = "Deploy again to republish the chunk; if it repeats, something alters retained messages."


# ── local applications calling the agent ──────────────────────────────────────────


class ClientError(AgentError):
    """A request from a local application cannot be answered as a whole; none of its rows was served."""

    code = "client.error"
    action = "Fix the calling application: docs/local-api.md describes the requests the agent answers."


class BadRequest(ClientError):
    """A request is valid JSON but not one the agent knows (an unknown op, 'rows' that is not a list)."""

    code = "client.bad_request"
    action = 'Send a row, {"rows": [...]} or {"op": "health"}, one JSON document per line (docs/local-api.md).'


class RequestTooLarge(ClientError):
    """A request line is longer than api.max_line_bytes, or a batch has more rows than api.max_batch_rows."""

    code = "client.too_large"
    action = "Split the batch into smaller ones, or raise api.max_line_bytes / api.max_batch_rows."


class TooManyClients(ClientError):
    """The local API already serves api.max_clients connections; this one was closed."""

    code = "client.busy"
    action = "Keep one connection per application (the Python client does), or raise api.max_clients."


# ── the device around the agent ────────────────────────────────────────────────────


class DeviceError(AgentError):
    """Something about the device itself, not a bundle or a message, needs attention."""

    code = "environment.error"
    action = "Read the event's detail and the agent's log on the device."


class ClockUntrusted(DeviceError):
    """The device's clock is earlier than the newest signed time the agent has seen (a desired
    state's issue time): expiry is judged against that signed time instead, until the clock catches up."""

    code = "clock.untrusted"
    action = "Set the device's clock (NTP, an RTC with a battery); the agent uses the signed time meanwhile."


class InputSourceFailed(DeviceError):
    """An input source (stdin, a CSV replay) stopped with an error; the agent restarts it."""

    code = "source.failed"
    action = "Look at what feeds the agent (the event's detail names the error); the source is restarted."


# ── the agent itself ──────────────────────────────────────────────────────────────────


class InternalError(AgentError):
    """The agent broke one of its own rules."""

    code = "internal.error"
    action = "Report it with the agent's log; restart the agent."


class IllegalTransition(InternalError):
    """The state machine was asked for a phase change its table does not allow; nothing changed."""

    code = "internal.illegal_transition"
    action = "Report it with the agent's log; the deployment is abandoned and the previous model serves."


class ListenFailed(InternalError):
    """The local API cannot listen: its socket is in use by a running agent, or cannot be created."""

    code = "listen.failed"
    action = "Stop the other agent on that socket, or set api.socket (or api.tcp_port) to a free, writable place."


class ConfigError(InternalError):
    """The agent's configuration file or flags are invalid; the agent does not start."""

    code = "config.invalid"
    action = "Fix the named setting in the config file or on the command line."


# ── lifecycle events (not failures) ───────────────────────────────────────────────────


class Lifecycle(StrEnum):
    """Milestones of a deployment, reported as events of kind "lifecycle"."""

    TRIAL = "lifecycle.trial"
    ACTIVATED = "lifecycle.activated"
    SUPPRESSED = "lifecycle.suppressed"
    TRUST_UPDATED = "lifecycle.trust_updated"

    @property
    def meaning(self) -> str:
        return _LIFECYCLE_MEANING[self]


_LIFECYCLE_MEANING = {
    Lifecycle.TRIAL: "The new bundle loaded, reproduced its health samples and serves live rows on trial.",
    Lifecycle.ACTIVATED: "The new bundle passed its trial and is committed as the active one.",
    Lifecycle.SUPPRESSED: "More failures of one code arrived than the rate limit sends; this says how many.",
    Lifecycle.TRUST_UPDATED: "A newer trust file signed by the current root replaced the device's trust file.",
}


def catalogue() -> list[type[AgentError]]:
    """Every failure class, in definition order: the root and all its descendants."""
    out: list[type[AgentError]] = []
    pending: list[type[AgentError]] = [AgentError]
    while pending:
        cls = pending.pop(0)
        out.append(cls)
        pending[0:0] = cls.__subclasses__()
    return out


def by_code(code: str) -> type[AgentError] | None:
    """The failure class for a wire code, or None for a code this version does not know."""
    return next((c for c in catalogue() if c.code == code), None)
