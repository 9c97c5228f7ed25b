"""Signing many device certificates on every core.

Checking a CSR's signature and signing a certificate cost about 0.35 ms of CPU a device,
in code that holds the GIL; a shipment of 1,000 devices is split across worker processes
(``spawn``: no copy of the server's threads or sockets) that load the CA key once. Small
requests are signed in a thread of this process. A bad CSR comes back as a value, named
with its device, and becomes one 422 for the whole request.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

from device_gateways.device_ca import DeviceCA, IssuedCertificate
from rpm.domain.errors import InvalidRequestError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
POOL_FROM = 100  # devices in a request before the worker processes are used
_worker_ca: DeviceCA | None = None


def _init(key_pem: bytes, cert_pem: bytes, crl_url: str | None = None) -> None:
    global _worker_ca
    _worker_ca = replace(DeviceCA.load(key_pem, cert_pem), crl_url=crl_url)


def _sign_chunk(
    ca: DeviceCA | None, rows: Sequence[tuple[str, str]], now: datetime
) -> list[IssuedCertificate] | str:
    """The certificates of ``rows`` (device id, CSR), or the first refusal as text."""
    use = ca or _worker_ca
    assert use is not None, "worker not initialised"
    out = []
    for device_id, csr in rows:
        try:
            out.append(use.sign_device(device_id, csr, now))
        except InvalidRequestError as exc:
            return f"device {device_id!r}: {exc}"
    return out


class Signer:
    """Worker processes started on first use of a large request, one per core."""

    def __init__(self, workers: int | None = None) -> None:
        self._workers = workers or max(1, min(os.cpu_count() or 1, 8))
        self._pool: ProcessPoolExecutor | None = None
        self._pool_ca: DeviceCA | None = None

    def _executor(self, ca: DeviceCA) -> ProcessPoolExecutor:
        if self._pool is None or self._pool_ca is not ca:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ProcessPoolExecutor(
                self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init,
                initargs=(ca.key_pem(), ca.cert_pem(), ca.crl_url),
            )
            self._pool_ca = ca
        return self._pool

    async def start(self, ca: DeviceCA) -> None:
        """Start the worker processes now (each imports and loads the CA once), so the
        first shipment does not wait for them."""
        if self._workers > 1:
            pool = self._executor(ca)
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(
                    loop.run_in_executor(pool, _sign_chunk, None, [], _EPOCH)
                    for _ in range(self._workers)
                )
            )

    async def sign(
        self, ca: DeviceCA, rows: Sequence[tuple[str, str]], now: datetime
    ) -> list[IssuedCertificate]:
        """Certificates for ``rows`` in their order; ``InvalidRequestError`` for a bad CSR."""
        if not rows:
            return []
        if len(rows) < POOL_FROM or self._workers == 1:
            results = [await asyncio.to_thread(_sign_chunk, ca, rows, now)]
        else:
            loop = asyncio.get_running_loop()
            pool = self._executor(ca)
            size = -(-len(rows) // self._workers)
            chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
            results = await asyncio.gather(
                *(loop.run_in_executor(pool, _sign_chunk, None, c, now) for c in chunks)
            )
        issued: list[IssuedCertificate] = []
        for r in results:
            if isinstance(r, str):
                raise InvalidRequestError(r)
            issued.extend(r)
        return issued

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
