"""The local Twilio stand-in as a process: ``python -m simulators.twilio_sink_cli --port N
--account-sid AC... --auth-token ...`` serves ``simulators.twilio_sink.TwilioSink`` until
stopped, printing one line per accepted message (its sid and body length, never the body)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from simulators.twilio_sink import TwilioSink


async def run_forever(
    *,
    account_sid: str,
    auth_token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    contract_path: Path | None = None,
    emit: Callable[[str], object] | None = None,
) -> None:
    """Serve until cancelled, emitting one line per accepted message (sid and body length)."""
    sink = TwilioSink(
        account_sid=account_sid,
        auth_token=auth_token,
        host=host,
        port=port,
        contract_path=contract_path,
    )
    emit = emit or _print_line
    emit(f"twilio sink listening on {await sink.start()}")
    try:
        async for message in sink.accepted():
            emit(f"accepted {message.sid} body_len={len(message.body or '')}")
    finally:
        await sink.stop()


def _print_line(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m simulators.twilio_sink_cli``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument(
        "--contract", type=Path, default=None, help="twilio_api_v2010.json to validate against"
    )
    args = parser.parse_args(argv)

    async def serve() -> None:
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await run_forever(
            account_sid=args.account_sid,
            auth_token=args.auth_token,
            host=args.host,
            port=args.port,
            contract_path=args.contract,
        )

    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
