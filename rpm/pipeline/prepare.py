"""The first stage of the unit of work: decode, validate, attribute (docs/architecture.md).

Every message ends here as accepted readings, rejections with their reasons (the
quarantine keeps them) or corrections; a decoder that fails on a payload is a rejection too,
never an exception that would wedge the stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

from device_gateways.decoders import DECODERS
from rpm.domain import AcceptedReading, RawMessage, Rejection, RejectReason
from rpm.domain.errors import DecodeError
from rpm.storage import registry as device_store
from rpm.storage.pool import Conn
from rpm.validation import ClockPolicy, validate

from .attribution import attribute, by_device, namespaced
from .results import Prepared

log = logging.getLogger("rpm.pipeline")  # the name the unit of work logs under
YIELD_EVERY = 250  # messages decoded between two turns of the event loop


async def prepare(
    conn: Conn, batch: Sequence[RawMessage], now: datetime, clock: ClockPolicy
) -> Prepared:
    """Decode each message, read its devices, validate the readings of each device against
    its record and the clock, and attribute vendor retractions: what the unit of work will
    store, what it keeps in the quarantine with its reason, and what it corrects."""
    decoded = []
    rejections: list[Rejection] = []
    for i, raw in enumerate(batch):
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            # Staged ahead (IngestPipeline.stage), this runs beside the unit of work in flight:
            # let its statements' answers through between slices of decoding.
            await asyncio.sleep(0)
        decoder = DECODERS.get(raw.payload_format)
        if decoder is None:
            rejections.append(
                Rejection(
                    RejectReason.UNSUPPORTED_FORMAT,
                    f"no decoder for {raw.payload_format!r}",
                    raw,
                    raw.device_id,
                )
            )
            continue
        try:
            d = decoder(raw)
        except DecodeError as exc:
            rejections.append(Rejection(RejectReason.MALFORMED, str(exc), raw, raw.device_id))
            continue
        except Exception as exc:  # a decoder bug must not wedge the stream (redelivery loop)
            log.exception("decoder %s failed on a payload", raw.payload_format)
            detail = f"{exc.__class__.__name__} in the {raw.payload_format} decoder"
            rejections.append(Rejection(RejectReason.DECODER_ERROR, detail, raw, raw.device_id))
            continue
        rejections.extend(
            Rejection(RejectReason.MALFORMED, p, raw, raw.device_id) for p in d.problems
        )
        if raw.integration is not None:
            d = namespaced(d, raw.integration)
        decoded.append((i, raw, d))

    devices = await device_store.device_records(
        conn,
        {r.device_id for _, _, d in decoded for r in d.readings}
        | {r.device_id for _, _, d in decoded for r in d.retractions},
    )
    accepted: list[AcceptedReading] = []
    origins: list[int] = []
    seen: dict[str, tuple[datetime, dict[str, float]]] = {}
    for i, raw, d in decoded:
        # MQTT: one device per message (the topic's); webhooks may carry several.
        groups = {raw.device_id: d.readings} if raw.device_id is not None else by_device(d.readings)
        for device_id, group in groups.items():
            device = devices.get(device_id)
            ok, bad = validate(raw, group, device, now, clock)
            accepted.extend(ok)
            origins.extend([i] * len(ok))
            rejections.extend(bad)
            if device is not None:
                seen[device_id] = (raw.received_at, d.device_status.get(device_id, {}))
    corrections, correction_origins = [], []
    for i, raw, d in decoded:
        for retraction in d.retractions:
            outcome = attribute(raw, retraction, devices.get(retraction.device_id))
            if isinstance(outcome, Rejection):
                rejections.append(outcome)
            else:
                corrections.append(outcome)
                correction_origins.append(i)
    return Prepared(accepted, rejections, seen, origins, corrections, correction_origins)
