"""The project's exception tree: every error raised on purpose anywhere in the project.

::

    RpmError
    ├── DeviceDataError          bad input from a device or vendor; never retried, quarantined
    │   └── DecodeError          the payload could not be parsed into readings
    ├── RequestError             a request we refuse; the same request gets the same answer
    │   ├── InvalidRequestError  (ValueError) input we cannot act on                    422
    │   │   ├── SearchError      a FHIR search we cannot answer as asked                400
    │   │   ├── NoteRequired     (also an InvalidTransition) resolving without a note
    │   │   ├── SnoozeTooLong    a snooze past its severity's cap
    │   │   ├── StaffNotFound    (LookupError) the named staff member is not active
    │   │   ├── NotATeamMember   an on-call shift for someone outside the team
    │   │   ├── StoredProgramInvalid  an old program version today's rule kinds refuse
    │   │   ├── InvalidSegment   a segment definition that cannot be evaluated
    │   │   ├── InvalidCampaign  a campaign definition that cannot run
    │   │   ├── InvalidTimeEntry a time entry or timer out of bounds (duration, start, note)
    │   │   └── InvalidCodeTable a billing code table that cannot be used, or none in force
    │   ├── NotFoundError        (LookupError) no such thing, or not visible to the caller 404
    │   │   ├── AlertNotFound
    │   │   ├── DeviceNotFound
    │   │   ├── RuleNotFound     no such patient, rule of the patient, program or version
    │   │   └── TimeEntryNotFound  no such time entry, or no timer running
    │   ├── NotAcceptableError   the client accepts no format we answer in              406
    │   ├── ConflictError        conflicts with what is stored                          409
    │   │   ├── InvalidTransition (ValueError) not allowed from the alert's state
    │   │   ├── ShiftOverlap     (ValueError) the tier is already covered then
    │   │   ├── StaffExists      (ValueError)
    │   │   ├── ApiKeyExists     (ValueError)
    │   │   ├── StaleVersion     the thing changed since the caller read it (its version)
    │   │   └── TimerRunning     the staff member's timer is already running
    │   └── RefusedError         the caller may not do this                             403
    │       ├── SignInRefused    wrong name or password (or an inactive account)        401
    │       └── SignInRateLimited  too many failures; retry after ``retry_after_s``     429
    ├── StorageError             the database failed; retry the whole unit of work      503
    │   └── BatcherFull          too many webhooks wait for storage; retry shortly      503
    ├── DeliveryError            an outside service (SMS, EHR, our own server for the
    │   │                        simulators) failed to take a message
    │   ├── TransientDeliveryError   retry later with backoff
    │   ├── CredentialsRefused   the provider refused our credentials (Twilio 401/20003):
    │   │                        hold the work, uncounted, until they are accepted again
    │   │   └── EhrUnavailable   network, timeout, 5xx, 429, a garbled 2xx, the endpoint
    │   ├── PermanentDeliveryError   do not retry; keep the answer (and its code) for people
    │   │   ├── RecipientOptedOut    the recipient unsubscribed at the provider (Twilio 21610)
    │   │   └── EhrRefused       the EHR refused the Bundle's content (4xx)
    │   ├── MalformedResponse    (ValueError) a 2xx that is not the answer asked for
    │   └── SendError            (RuntimeError) the simulators could not hand a payload over
    ├── BrokerProvisioningError  the broker refused or missed a login change; retry     503
    ├── BrokerConnectionError    the gateway's broker connection failed or ended; it reconnects
    ├── ConfigurationError       settings or the machine's setup are wrong; fix and restart
    │   ├── ScenarioFileError    (ValueError) a simulator scenario file that cannot be used
    │   ├── UnsupportedReading   (ValueError) a payload format that cannot carry a reading
    │   ├── ForeignIdsError      (RuntimeError) the simulator's ids name others' patients
    │   └── LocalServicesError   (RuntimeError) a local PostgreSQL or Mosquitto failed
    └── InternalError            our bug: data we wrote ourselves is wrong; do not retry   500
        └── BadWork              (ValueError) an outbox item a worker cannot understand

Which a caller may retry: ``StorageError`` (and ``BatcherFull``, sooner),
``TransientDeliveryError``, ``CredentialsRefused`` (once the credentials are fixed),
``BrokerProvisioningError``, ``SignInRateLimited`` after its
``retry_after_s``, and a ``SendError`` once the target is back. Nothing else changes by
retrying: fix the input (``RequestError``, ``DeviceDataError``), the settings
(``ConfigurationError``) or the code (``InternalError``).

The numbers are the HTTP status each branch is answered with (one table, rpm/api/errors.py;
under ``/fhir`` as an OperationOutcome). A builtin named in parentheses is a second base,
kept because callers catch it (``except ValueError``, ``except LookupError``). This module
imports nothing of the project.
"""

from __future__ import annotations

from typing import Any


class RpmError(Exception):
    """Base of every error this project raises on purpose."""


# --- device data ----------------------------------------------------------------------------


class DeviceDataError(RpmError):
    """Input from a device or vendor that we refuse; kept in the quarantine."""


class DecodeError(DeviceDataError):
    """A payload that could not be decoded into readings."""


# --- requests we refuse ---------------------------------------------------------------------


class RequestError(RpmError):
    """A request we refuse; the message says why and is shown to the caller."""


class InvalidRequestError(RequestError, ValueError):
    """Input we cannot act on."""


class NotFoundError(RequestError, LookupError):
    """No such thing (or one the caller may not see, which looks the same)."""


class ConflictError(RequestError):
    """The request conflicts with what is stored."""


class NotAcceptableError(RequestError):
    """The client accepts no format we answer in."""


class RefusedError(RequestError):
    """The caller may not do this."""


class SearchError(InvalidRequestError):
    """A search the server cannot answer as asked: 400 with an OperationOutcome."""

    def __init__(self, message: str, *, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code  # R4 issue-type: invalid, not-supported, required, ...


class InvalidTransition(ConflictError, ValueError):
    """The action is not allowed from the alert's current state."""


class NoteRequired(InvalidRequestError, InvalidTransition):
    """The action needs a note saying what was done, and none was given."""


class SnoozeTooLong(InvalidRequestError):
    """A snooze longer than its severity's safety cap."""


class StaffNotFound(InvalidRequestError, LookupError):
    """No active staff member with that id (named in a request's body: invalid input)."""


class NotATeamMember(InvalidRequestError):
    """On-call shifts go to active members of the team."""


class StoredProgramInvalid(InvalidRequestError):
    """A stored program version that today's rule kinds refuse (the code changed under it)."""


class InvalidSegment(InvalidRequestError):
    """A segment definition that cannot be evaluated; the message says where."""


class InvalidCampaign(InvalidRequestError):
    """A campaign definition that cannot run; the message says where."""


class InvalidTimeEntry(InvalidRequestError):
    """A time entry or timer that cannot be recorded; the message says which bound."""


class InvalidCodeTable(InvalidRequestError):
    """A billing code table that cannot be used (the message says where), or no table in
    force for the dates asked."""


class AlertNotFound(NotFoundError):
    """No such alert."""


class DeviceNotFound(NotFoundError):
    """No such device."""


class RuleNotFound(NotFoundError):
    """No such patient, rule of the patient, program or program version."""


class TimeEntryNotFound(NotFoundError):
    """No such time entry (or a deleted one being changed), or no timer running."""


class ShiftOverlap(ConflictError, ValueError):
    """The team already has someone on call at that tier during part of that time."""


class StaffExists(ConflictError, ValueError):
    """A staff member with this id already exists."""


class ApiKeyExists(ConflictError, ValueError):
    """An API key with this id already exists."""


class StaleVersion(ConflictError):
    """The request names a version that is no longer the stored one: read it again."""


class TimerRunning(ConflictError):
    """A staff member has one timer at a time: stop (or discard) the running one first."""


class SignInRefused(RefusedError):
    """Wrong name or password, or an inactive account (the caller cannot tell which)."""


class SignInRateLimited(RefusedError):
    """Too many failed sign-ins from this client or for this name; retry later."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed sign-ins; retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


# --- storage --------------------------------------------------------------------------------


class StorageError(RpmError):
    """The database failed; the unit of work may be retried as a whole."""

    retry_after_s: float = 5.0  # a hint for callers that answer with Retry-After


class BatcherFull(StorageError):
    """Too many webhook messages already wait for a unit of work; retry shortly."""

    retry_after_s = 1.0


# --- delivery -------------------------------------------------------------------------------


class DeliveryError(RpmError):
    """An outside service failed to take a message."""


class TransientDeliveryError(DeliveryError):
    """Worth retrying later (network, 5xx, 429)."""


class CredentialsRefused(DeliveryError):
    """The provider refused our credentials (a wrong or rotated Twilio auth token: HTTP 401,
    error 20003). Every message would fail alike, so none is failed: work waits, its
    attempts not counted, and is retried until the credentials are accepted again."""


class PermanentDeliveryError(DeliveryError):
    """Not worth retrying (4xx other than 429): keep the answer for people to see."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # the provider's error code, when it gave one


class RecipientOptedOut(PermanentDeliveryError):
    """The recipient replied STOP at the provider (Twilio 21610): stop texting them."""


class EhrUnavailable(TransientDeliveryError):
    """The EHR did not take the Bundle, for a reason that may pass: retry later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.retry_after_s = retry_after_s


class EhrRefused(PermanentDeliveryError):
    """The EHR refused the Bundle's content (4xx) with this OperationOutcome."""

    def __init__(self, message: str, *, status: int, outcome: dict[str, Any]) -> None:
        super().__init__(message, code=status)
        self.status = status
        self.outcome = outcome


class MalformedResponse(DeliveryError, ValueError):
    """A 2xx answer that is not the transaction-response the request calls for."""


class SendError(DeliveryError, RuntimeError):
    """A payload could not be handed over (connection refused, timeout, HTTP error)."""


# --- the broker -----------------------------------------------------------------------------


class BrokerProvisioningError(RpmError):
    """The broker did not apply a login or ACL change; the API call may be retried."""


class BrokerConnectionError(RpmError):
    """The gateway's connection to the broker failed, was refused, or ended; it reconnects
    with backoff, and the broker redelivers what was not acknowledged."""


# --- configuration --------------------------------------------------------------------------


class ConfigurationError(RpmError):
    """Settings (or the machine's setup) that cannot work."""


class ScenarioFileError(ConfigurationError, ValueError):
    """A scenario file that cannot be used; the message names the file, item and field."""


class UnsupportedReading(ConfigurationError, ValueError):
    """The format has no way to carry this reading (e.g. glucose in Withings Getmeas)."""


class ForeignIdsError(ConfigurationError, RuntimeError):
    """The plan's ids name patients or devices the simulator did not create."""


class LocalServicesError(ConfigurationError, RuntimeError):
    """A local service could not be set up, started or stopped; the message has the log tail."""


# --- our bugs -------------------------------------------------------------------------------


class InternalError(RpmError):
    """Something we wrote ourselves is wrong: a bug to fix, not a request to retry."""


class BadWork(InternalError, ValueError):
    """An outbox item a worker cannot understand: failed at once, kept with the reason."""
