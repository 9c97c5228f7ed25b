"""The project's exception tree.

::

    RpmError
    ├── DeviceDataError        bad input from a device or vendor; never retried, quarantined
    │   └── DecodeError        the payload could not be parsed into readings
    ├── StorageError           the database failed; the caller may retry the whole unit of work
    ├── DeliveryError          an outside service (SMS, EHR) failed
    │   ├── TransientDeliveryError   retry later with backoff
    │   └── PermanentDeliveryError   do not retry; keep the answer (and its code) for people
    │       └── RecipientOptedOut    the recipient unsubscribed at the provider (Twilio 21610)
    ├── BrokerProvisioningError  the broker refused or missed a login change; retry the request
    └── ConfigurationError     settings are wrong; fix and restart
"""

from __future__ import annotations


class RpmError(Exception):
    """Base of every error this project raises on purpose."""


class DeviceDataError(RpmError):
    """Input from a device or vendor that we refuse; kept in the quarantine."""


class DecodeError(DeviceDataError):
    """A payload that could not be decoded into readings."""


class StorageError(RpmError):
    """The database failed; the unit of work may be retried as a whole."""


class DeliveryError(RpmError):
    """An outside service failed to take a message."""


class TransientDeliveryError(DeliveryError):
    """Worth retrying later (network, 5xx, 429)."""


class PermanentDeliveryError(DeliveryError):
    """Not worth retrying (4xx other than 429): keep the answer for people to see."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # the provider's error code, when it gave one


class RecipientOptedOut(PermanentDeliveryError):
    """The recipient replied STOP at the provider (Twilio 21610): stop texting them."""


class BrokerProvisioningError(RpmError):
    """The broker did not apply a login or ACL change; the API call may be retried."""


class ConfigurationError(RpmError):
    """Settings that cannot work."""
