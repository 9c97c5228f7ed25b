"""Provisioning broker logins at run time through the dynamic-security plugin.

Each call opens a short admin session, publishes the commands with a correlation id
on ``$CONTROL/dynamic-security/v1`` and waits for the matching answer. Broker errors
become ``BrokerProvisioningError``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiomqtt

from rpm.domain.errors import BrokerProvisioningError

from . import dynsec


@dataclass(frozen=True, slots=True)
class BrokerAdminConfig:
    host: str
    port: int
    username: str
    password: str
    timeout_s: float = 5.0


class BrokerAdmin:
    """Applies dynamic-security commands and reports the broker's errors."""

    def __init__(self, config: BrokerAdminConfig) -> None:
        self._config = config

    async def apply(self, commands: list[dict[str, Any]], *, tolerate: Iterable[str] = ()) -> None:
        """Run ``commands``; raise unless every error is one of ``tolerate`` (substrings)."""
        cfg = self._config
        correlation = uuid.uuid4().hex
        tagged = [{**c, "correlationData": correlation} for c in commands]
        try:
            async with aiomqtt.Client(
                cfg.host,
                cfg.port,
                username=cfg.username,
                password=cfg.password,
                identifier=f"rpm-admin-{correlation[:12]}",
                timeout=cfg.timeout_s,
            ) as client:
                await client.subscribe(dynsec.RESPONSE_TOPIC, qos=1)
                await client.publish(dynsec.CONTROL_TOPIC, dynsec.encode(tagged), qos=1)
                async with asyncio.timeout(cfg.timeout_s):
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes | bytearray):
                            continue
                        if not _answers(bytes(payload), correlation):
                            continue  # another admin's answer
                        errors = dynsec.errors(bytes(payload), tolerate=tolerate)
                        if errors:
                            raise BrokerProvisioningError("; ".join(errors))
                        return
        except TimeoutError:
            raise BrokerProvisioningError("the broker did not answer in time") from None
        except aiomqtt.MqttError as exc:
            raise BrokerProvisioningError(f"broker unavailable: {exc}") from None


def _answers(payload: bytes, correlation: str) -> bool:
    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    responses = doc.get("responses") if isinstance(doc, dict) else None
    return isinstance(responses, list) and any(
        isinstance(r, dict) and r.get("correlationData") == correlation for r in responses
    )
