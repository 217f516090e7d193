"""The exception tree of the engine; per-recipient outcomes are data, never exceptions.

::

    EngineError
    ├─ ConfigError            a config file is unreadable or invalid (names file, key path, expectation)
    ├─ TemplateError          a template does not compile or does not fit the segment
    ├─ PreflightError         a campaign breaks a compliance rule (all findings listed)
    ├─ OutsideSendWindow      asked not to wait, and it is quiet hours now
    ├─ RunAbandoned           a second Ctrl-C / SIGTERM: in-flight messages were not waited for
    ├─ RunHalt                a request must not go (store unwritable, gateways stalled, lease lost):
    │                         the run halts, everyone not sent stays pending (``reason`` says why)
    ├─ CoordinatorUnavailable the shared coordination store (Redis) did not answer: the lanes pause
    ├─ SourceError            a segment source cannot be opened or its header is unusable
    │   └─ SegmentRejected    its rows are mostly unusable (judged before anything is sent)
    ├─ PluginError
    │   ├─ PluginLoadError    an entry point failed to import
    │   └─ PluginContractError a plugin registered something invalid (duplicate name, bad hook)
    └─ GatewayError           a whole request failed (per-message outcomes are SubmitResult data)
        ├─ GatewayUnavailable     the provider answered "not now" (5xx, busy): nothing was taken (retriable)
        │   └─ GatewayUnreachable the request never left this machine (refused, DNS, TLS, no connection)
        ├─ GatewayTimeout         no answer in time: the request may have been taken (ambiguous)
        ├─ GatewayAuthError       credentials, account, signature or template refused: fix the config
        └─ GatewayProtocolError   an answer the gateway plugin cannot read (ambiguous)

What the engine does with each (``engine.sending.sender``): an *unreachable* gateway costs no retry — its
recipients go back to ``pending``, the route pauses (failover first) and a run stops, everyone not
sent still pending, when the route stays down past ``[outage] limit``; an *unavailable* answer spends
one of the message's attempts; an *ambiguous* failure ends ``unknown`` unless the gateway is
idempotent; an *auth* error stops the gateway (failover, else the run stops with recipients pending).

Bad *rows* are not exceptions: they become :class:`engine.core.messages.Reject` records and the run goes on.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CoordinatorUnavailable",
    "EngineError",
    "GatewayAuthError",
    "GatewayError",
    "GatewayProtocolError",
    "GatewayTimeout",
    "GatewayUnavailable",
    "GatewayUnreachable",
    "OutsideSendWindow",
    "PluginContractError",
    "PluginError",
    "PluginLoadError",
    "PreflightError",
    "RunAbandoned",
    "RunHalt",
    "SegmentRejected",
    "SourceError",
    "TemplateError",
]


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(EngineError):
    """A config file is missing, unparsable or invalid.

    The message always names the file, the key path and what was expected, so the operator knows
    exactly what to change.
    """

    def __init__(self, file: str, path: str, problem: str) -> None:
        self.file = file
        self.path = path
        self.problem = problem
        where = f"{file}: {path}: " if path else f"{file}: "
        super().__init__(where + problem)


class TemplateError(EngineError):
    """A template is malformed or refers to fields the segment does not have."""


class PreflightError(EngineError):
    """The preflight found problems that must be fixed before anything is sent; lists them all."""


class OutsideSendWindow(EngineError):
    """It is outside the campaign's sending hours and the caller asked not to wait."""


class RunAbandoned(EngineError):
    """A send was abandoned on a second signal, without waiting for the messages in flight."""


class CoordinatorUnavailable(EngineError):
    """The shared store did not answer (down, failing over, timed out). Nothing that needed its
    answer may go: a request without a claim or a booked budget waits, it is never sent blind."""


class RunHalt(EngineError):
    """A request must not go: the store cannot be written, the gateways stopped answering, the
    campaign's lease was taken over… The run halts; everyone not sent stays ``pending`` for a resume.
    ``reason`` is a bounded label (``store_unwritable``, ``gateway_stalled``, ``lease_lost``…)."""

    reason: str = "halted"


class SourceError(EngineError):
    """A segment source cannot be read at all (missing file, unusable header)."""


class SegmentRejected(SourceError):
    """The segment's rows are mostly unusable (no data rows, or more rejected than the campaign's
    ``policy.max_rejected_share``): judged on its first rows before anything is sent. The message
    gives the breakdown and what to change (an encoding, an export as CSV, the phone column…)."""


class PluginError(EngineError):
    """A plugin misbehaved; the message names the plugin."""


class PluginLoadError(PluginError):
    """An entry point of the ``pigeon`` group failed to import."""


class PluginContractError(PluginError):
    """A plugin registered something invalid: a duplicate name, a bad factory or a misspelled hook."""


class GatewayError(EngineError):
    """A gateway request failed as a whole; ``retriable`` says whether sending again may succeed,
    ``ambiguous`` whether the provider may have taken the messages anyway, ``left`` whether the
    request may have left this machine at all."""

    retriable: bool = False
    ambiguous: bool = False
    left: bool = True
    """False only when the request certainly never reached the wire: no retry is spent on it."""


class GatewayUnavailable(GatewayError):
    """The provider answered that it cannot take the request now (5xx, busy): safe to send again."""

    retriable = True


class GatewayUnreachable(GatewayUnavailable):
    """The request never left this machine: the connection was refused, the name did not resolve,
    the TLS handshake failed, or no pooled connection came free in time. Its recipients go back to
    ``pending`` and no retry is spent; the route pauses until the gateway answers again."""

    left = False


class GatewayTimeout(GatewayError):
    """No answer in time: the provider may or may not have taken the messages."""

    retriable = True
    ambiguous = True


class GatewayAuthError(GatewayError):
    """The provider refused the credentials, the account (balance, permissions), the signature or
    the template: nothing will go through this gateway until its config is fixed. The lane fails
    over to another gateway of the carrier, or the run stops with its recipients ``pending``."""


class GatewayProtocolError(GatewayError):
    """The provider answered something the gateway plugin cannot read."""

    ambiguous = True
