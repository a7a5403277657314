"""The ``mooncake-connector`` command."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import standalone


def _standalone(args: argparse.Namespace) -> int:
    try:
        inst = standalone.start(segment_size=args.segment_size,
                                local_buffer_size=args.local_buffer_size,
                                lease_ttl_ms=args.lease_ttl_ms, log_dir=args.log_dir)
    except standalone.StandaloneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"Mooncake standalone instance running ({args.segment_size} of storage); "
          f"logs in {inst.log_dir}", flush=True)
    print("# export these in the shell that runs your program:")
    for k, v in inst.env().items():
        print(f"export {k}={v}")
    print("# Ctrl-C (or SIGTERM) stops it.", flush=True)
    try:
        while not stop.wait(0.5):
            if not inst.alive():
                print(f"error: a Mooncake process exited; see {inst.log_dir}", file=sys.stderr)
                return 1
    finally:
        inst.stop()
        print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooncake-connector", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("standalone",
                       help="run a local mooncake_master + storage process on loopback until Ctrl-C")
    p.add_argument("--segment-size", default="1gb",
                   help="memory the storage process contributes (default: 1gb)")
    p.add_argument("--local-buffer-size", default="64mb", help="its local buffer (default: 64mb)")
    p.add_argument("--lease-ttl-ms", type=int, default=1000,
                   help="master's read lease in ms (default 1000; removes wait it out)")
    p.add_argument("--log-dir", default=None, help="where the processes log (default: a temp dir)")
    p.set_defaults(func=_standalone)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
