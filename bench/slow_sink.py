"""A slow SMTP sink: a relay that holds each message `--delay` seconds before its 250.

Postfix's smtp-sink can only delay in whole seconds (-w, -W), so the relay-bound part of
bench/delivery.py uses this instead: asyncio on loopback, any number of concurrent
sessions, ESMTP with PIPELINING (as smtp-sink offers), and a sleep between the end of
the message data and its 250 reply, so each connection is busy `delay` per message and a
sender's throughput is bounded by its number of connections. The message data is read in
blocks up to the terminating CRLF.CRLF, not line by line, so the sink costs little CPU.

Usage: python bench/slow_sink.py PORT [--delay 0.02]
Prints "ready" once listening; on SIGTERM prints "received N" (messages accepted) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

TERMINATOR = b"\r\n.\r\n"


class Sink:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 slow-sink ESMTP\r\n")
        try:
            while line := await reader.readline():
                reply = await self.command(line.strip().upper(), reader, writer)
                if reply is None:
                    writer.write(b"221 Bye\r\n")
                    break
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def command(
        self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        verb = line.split(b" ", 1)[0].split(b":", 1)[0]
        if verb == b"QUIT":
            return None
        if verb == b"EHLO":
            return b"250-slow-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n"
        if verb == b"DATA":
            writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            await writer.drain()
            return await self.message(reader)
        if verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            return b"250 Ok\r\n"
        return b"502 Command not implemented\r\n"

    async def message(self, reader: asyncio.StreamReader) -> bytes:
        """The 250 for one message's data, `delay` after its last byte (an empty message
        ends with a lone ".\\r\\n" right after the 354)."""
        before = b"\r\n"  # the DATA command's line end counts for the terminator
        while True:
            block = await reader.readuntil(b".\r\n")
            if (before + block)[-5:] == TERMINATOR:
                break
            before = block[-2:]
        await asyncio.sleep(self.delay)
        self.received += 1
        return b"250 Ok: queued\r\n"


async def serve(port: int, delay: float) -> None:
    sink = Sink(delay)
    server = await asyncio.start_server(sink.session, "127.0.0.1", port, limit=64 * 1024 * 1024, backlog=1024)
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    print("ready", flush=True)
    async with server:
        await done.wait()
    print(f"received {sink.received}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", type=int)
    ap.add_argument("--delay", type=float, default=0.02, help="seconds each message is held before its 250")
    args = ap.parse_args()
    asyncio.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
