"""The mooncake-connector command: save, load, list, inspect, verify and
remove models in a Mooncake Store (or memory://), move single keys and
files, and run a local standalone instance.

Exit codes: 0 success; 1 other errors; 2 bad usage; 3 not found; 4 data
loss or a failed verify; 5 the store is unavailable; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

from . import standalone
from ._errors import (DataLossError, InvalidArgumentError, MooncakeConnectorError, NotFoundError,
                      UnavailableError)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_DATA_LOSS, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130


class _Progress:
    """A tqdm byte bar on stderr (bytes, throughput, ETA); silent when stderr
    is not a terminal or --quiet is given."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                             dynamic_ncols=True, disable=None, file=sys.stderr)

    def __call__(self, done: int, total: int) -> None:
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def _printable(text: str) -> str:
    """Stored text (model names, manifest strings) for a terminal: control
    characters and escape sequences shown escaped, never interpreted."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _version() -> str:
    """This tool's version, and the Mooncake wheel's when it is installed."""
    from importlib import metadata  # noqa: PLC0415

    from . import __version__  # noqa: PLC0415

    text = f"mooncake-connector {__version__}"
    for wheel in ("mooncake-transfer-engine-non-cuda", "mooncake-transfer-engine",
                  "mooncake-transfer-engine-cuda13"):
        try:
            return f"{text} (Mooncake: {wheel} {metadata.version(wheel)})"
        except metadata.PackageNotFoundError:
            continue
    return f"{text} (no Mooncake wheel installed)"


def _connect(url: str, device: Optional[str] = None, **options: str):
    """The CLI's connector. On mooncake:// it is a pure client (no segment,
    whatever MOONCAKE_GLOBAL_SEGMENT_SIZE says): Mooncake may place objects
    in the writer's own segment, which goes when the process exits, so a
    CLI that contributed memory could print "saved" for a model that is
    gone a moment later. What it writes lives in the cluster's storage,
    hard-pinned unless the URL's pin= or MOONCAKE_PIN says otherwise."""
    from .connector import create_remote_connector, writer_options
    return create_remote_connector(url, device=device or "cpu", **{**writer_options(url), **options})


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        print(text)


def _run_with_progress(args: argparse.Namespace, desc: str,
                       work: Callable[[Callable[[int, int], None]], Any]) -> Any:
    bar = _Progress(desc, enabled=not args.quiet)
    try:
        return work(bar)
    finally:
        bar.close()


def _save(args: argparse.Namespace) -> int:
    with _connect(args.url) as c:
        start = time.perf_counter()
        written = _run_with_progress(args, "save", lambda p: c.save_directory(
            args.dir, progress=p, follow_links_outside=args.follow_links_outside, pin=not args.no_pin))
        seconds = time.perf_counter() - start
        info = c.inspect_model()
    # The rate of what moved: values an earlier save left intact are not sent again.
    rate = written / seconds / 1e9 if seconds > 0 else 0.0
    moved = (f"{_human(written)} sent in {seconds:.2f} s ({rate:.2f} GB/s)" if written else
             f"0 bytes to send (all already stored; checked in {seconds:.2f} s)")
    _emit(args, {"model": info["name"], "bytes": info["bytes"], "written_bytes": written,
                 "tensors": info["tensors"], "files": info["files"], "seconds": seconds, "gb_per_s": rate,
                 "layout": info["layout"], "serves_tp": _serves(info)},
          f"saved {info['name']}: {info['tensors']} tensors, {info['files']} files, {_human(info['bytes'])}; "
          f"{moved}; layout {info['layout']}, serves tensor-parallel degree {_serves(info)}")
    return EXIT_OK


def _launched_group() -> Any:
    """A gloo group of the processes torchrun (or any launcher that sets
    WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT) started; None for one
    process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist  # noqa: PLC0415

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.group.WORLD


def _load(args: argparse.Namespace) -> int:
    group = _launched_group()
    with _connect(args.url, args.device) as c:
        start = time.perf_counter()
        tensors = _run_with_progress(
            args, f"load rank {args.rank}",
            lambda p: c.load_state_dict(args.rank, device=args.device, verify=not args.no_verify,
                                        progress=p, group=group))
        if args.device and args.device.startswith("cuda"):
            import torch
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        # Checksums are checked only against a manifest: a model SGLang saved has none.
        verified = not args.no_verify and c.model_manifest(args.rank) is not None
    seen: set[int] = set()
    nbytes = 0
    for t in tensors.values():
        key = t.data_ptr()  # tied weights share it; views into one buffer do not
        if key not in seen or t.numel() == 0:
            seen.add(key)
            nbytes += t.numel() * t.element_size()
    rate = nbytes / seconds / 1e9 if seconds > 0 else 0.0
    stats = c.load_stats if group is not None else {}
    shared = (f"; process {stats['group_rank']} of {stats['world']} fetched "
              f"{_human(stats['fetched_bytes'])} and received {_human(stats['received_bytes'])}"
              if stats else "")
    _emit(args, {"url": args.url, "rank": args.rank, "device": args.device or "cpu",
                 "tensors": len(tensors), "bytes": nbytes, "seconds": seconds, "gb_per_s": rate,
                 "verified": verified, "group": stats or None},
          f"loaded {len(tensors)} tensors, {_human(nbytes)} in {seconds:.3f} s "
          f"({rate:.2f} GB/s) onto {args.device or 'cpu'}"
          f"{', checksums verified' if verified else ', not verified (no manifest)' if not args.no_verify else ''}"
          f"{shared}")
    return EXIT_OK


def _status(info: dict[str, Any]) -> str:
    if not info["has_manifest"]:
        return "no manifest"
    if info.get("missing"):
        return f"damaged ({info['missing']} of {info['listed']} values gone)"
    return "complete" if info["complete"] else "incomplete"


def _serves(info: dict[str, Any]) -> str:
    """Which tensor-parallel degrees SGLang can serve the model at."""
    if info.get("layout") == "checkpoint":
        return "any"
    return str(info["world_size"]) if info["world_size"] else "?"


def _ls(args: argparse.Namespace) -> int:
    with _connect(args.url) as c:
        models = c.list_models()
    rows = [{"name": m["name"], "bytes": m["bytes"], "ranks": m["ranks"], "world_size": m["world_size"],
             "tensors": m["tensors"], "files": m["files"], "status": _status(m), "created": m["created"],
             "layout": m["layout"], "serves_tp": _serves(m)}
            for m in models]
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    if not rows:
        print("no models")
        return EXIT_OK
    width = max(len("MODEL"), *(len(r["name"]) for r in rows))
    print(f"{'MODEL':<{width}}  {'SIZE':>11}  {'RANKS':>5}  {'TENSORS':>7}  {'FILES':>5}  {'LAYOUT':<10}  "
          f"{'TP':>3}  STATUS")
    for r in rows:
        size = _human(r["bytes"]) if r["status"] != "no manifest" else "?"
        print(f"{_printable(r['name']):<{width}}  {size:>11}  {len(r['ranks']):>5}  {r['tensors']:>7}  "
              f"{r['files']:>5}  {r['layout'] or '-':<10}  {r['serves_tp']:>3}  {r['status']}")
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    with _connect(args.url) as c:
        info = c.inspect_model()
    lines = [f"model      {_printable(info['name'])}", f"status     {_status(info)}",
             f"size       {_human(info['bytes'])}" if info["has_manifest"] else "size       unknown",
             f"ranks      {info['ranks']} (world size {info['world_size']})",
             f"layout     {info['layout'] or 'unknown (no manifest)'}: serves tensor-parallel degree "
             f"{_serves(info)}",
             f"tensors    {info['tensors']}", f"files      {info['files']}"]
    if info["created"]:
        lines += [f"created    {_printable(info['created'])}", f"written by {_printable(info['tool'])}"]
    lines += [f"problem    {_printable(p)}" for p in info["problems"]]
    _emit(args, {**info, "serves_tp": _serves(info)}, "\n".join(lines))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    with _connect(args.url) as c:
        report = _run_with_progress(args, "verify", lambda p: c.verify_model(progress=p))
    ok = not report["problems"]
    text = (f"{'OK' if ok else 'FAILED'}: {report['tensors']} tensors, {report['files']} files, "
            f"{_human(report['bytes'])} read")
    text += "".join(f"\n  {p}" for p in report["problems"])
    _emit(args, {**report, "ok": ok}, text)
    return EXIT_OK if ok else EXIT_DATA_LOSS


def _rm(args: argparse.Namespace) -> int:
    with _connect(args.url) as c:
        if not args.key:
            try:
                removed = c.remove_model()
                _emit(args, {"model": c.model_name, "removed_keys": removed},
                      f"removed model {c.model_name} ({removed} keys)")
                return EXIT_OK
            except NotFoundError:
                pass  # not a model: a key
        if not c.remove(c.model_name):
            raise NotFoundError(f"no model or key '{c.model_name}'")
        _emit(args, {"key": c.model_name, "removed_keys": 1}, f"removed key {c.model_name}")
    return EXIT_OK


def _put(args: argparse.Namespace) -> int:
    from .connector import chosen_pin
    data = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
    mooncake = args.url.split("://", 1)[0].lower() == "mooncake"
    with _connect(args.url, **({"pin": args.pin} if mooncake and args.pin else {})) as c:
        c.setbytes(c.model_name, data)
        pin = (args.pin or chosen_pin(args.url) or "hard") if mooncake else None  # as _connect writes
        note = {"hard": "never evicted; rm frees it", "soft": "evicted last under memory pressure",
                "none": "Mooncake may evict it under memory pressure"}.get(pin or "", "")
        _emit(args, {"key": c.model_name, "bytes": len(data), "pin": pin},
              f"stored {len(data)} bytes at {c.model_name}" + (f" (pin {pin}: {note})" if pin else ""))
    return EXIT_OK


def _get(args: argparse.Namespace) -> int:
    with _connect(args.url) as c:
        data = c.getbytes(c.model_name)
        if data is None:
            raise NotFoundError(f"no key '{c.model_name}'")
    if args.output in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        with open(args.output, "wb") as f:
            f.write(data)
        print(f"wrote {len(data)} bytes to {args.output}", file=sys.stderr)
    return EXIT_OK


def _standalone(args: argparse.Namespace) -> int:
    try:
        inst = standalone.start(segment_size=args.segment_size,
                                local_buffer_size=args.local_buffer_size,
                                lease_ttl_ms=args.lease_ttl_ms, log_dir=args.log_dir,
                                storage_processes=args.storage_processes, host=args.host)
    except (standalone.StandaloneError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"Mooncake standalone instance running ({args.storage_processes} storage process(es) "
          f"of {args.segment_size} each); "
          f"logs in {inst.log_dir}", flush=True)
    time.sleep(0.3)  # the storage processes open their transfer listeners just after they serve
    for name, address, port, why in inst.listening():
        print(f"# {name} listens on {address}:{port}" + (f" (all interfaces: {why})" if why else ""))
    print("# export these in the shell that runs your program:")
    for k, v in inst.env().items():
        print(f"export {k}={v}")
    print("# Everything stored here lives in these processes' memory: stopping the instance drops it.")
    print("# Ctrl-C (or SIGTERM) stops it.", flush=True)
    try:
        while not stop.wait(0.5):
            if not inst.alive():
                print(f"error: a Mooncake process exited; see {inst.log_dir}", file=sys.stderr)
                return EXIT_ERROR
    finally:
        held = inst.stored_keys() if inst.alive() else None
        inst.stop()
        print("stopped" + (f"; the {held} key(s) it held are gone" if held else ""), flush=True)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="show Mooncake's own log lines (by default they go to a log file)")
    parser = argparse.ArgumentParser(
        prog="mooncake-connector", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="URLs: mooncake:///MODEL (master from MOONCAKE_MASTER), mooncake://HOST:PORT/MODEL, "
               "memory://NAME/MODEL.\n\n"
               "examples:\n"
               "  mooncake-connector standalone --segment-size 8gb     # a local Mooncake; prints what to export\n"
               "  mooncake-connector save ~/models/Qwen2.5-0.5B mooncake:///qwen\n"
               "  mooncake-connector ls\n"
               "  mooncake-connector load mooncake:///qwen --device cuda\n"
               "  torchrun --nproc-per-node 2 -m mooncake_connector.cli load mooncake:///qwen\n"
               "  mooncake-connector verify mooncake:///qwen && mooncake-connector rm mooncake:///qwen\n"
               "  echo '{}' | mooncake-connector put mooncake:///cfg/x - && mooncake-connector get mooncake:///cfg/x\n"
               "\nSGLang: --model-path mooncake:///qwen --load-format remote (this package installed beside it).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("save", parents=[common], help="store a Hugging Face model directory (rank 0)")
    p.add_argument("dir")
    p.add_argument("url")
    p.add_argument("--no-pin", action="store_true",
                   help="save without Mooncake's hard pin (by default saved models are never evicted; "
                        "unpinned ones may be under memory pressure, and ls then shows them damaged)")
    p.add_argument("--follow-links-outside", action="store_true",
                   help="also follow links that lead outside DIR (by default only links inside it, or "
                        "into a Hugging Face cache's blobs, are followed)")
    p.set_defaults(func=_save)
    p = sub.add_parser("load", parents=[common], help="load a model's rank and print the throughput",
                       description="Loads one rank of a model and prints bytes, seconds and GB/s. Started by "
                       "torchrun (WORLD_SIZE > 1), the processes load it cooperatively over gloo: each "
                       "fetches a share, they exchange the rest, and each prints what it fetched.")
    p.add_argument("url")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu (default) or cuda[:N]")
    p.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    p.set_defaults(func=_load)
    p = sub.add_parser("ls", parents=[common], help="list models with size, ranks and status")
    p.add_argument("url", nargs="?", default="mooncake://")
    p.set_defaults(func=_ls)
    p = sub.add_parser("inspect", parents=[common], help="show a model's manifest summary")
    p.add_argument("url")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("verify", parents=[common],
                       help="read every tensor and file back and check it (exit 4 on a mismatch)")
    p.add_argument("url")
    p.set_defaults(func=_verify)
    p = sub.add_parser("rm", parents=[common], help="remove a model (or, if none, the key)")
    p.add_argument("url")
    p.add_argument("--key", action="store_true", help="remove the key the URL path names, not a model")
    p.set_defaults(func=_rm)
    p = sub.add_parser("put", parents=[common], help="store a file's bytes at the key the URL path names")
    p.add_argument("url")
    p.add_argument("file", help="a file, or - for stdin")
    p.add_argument("--pin", choices=["none", "soft", "hard"], default=None,
                   help="Mooncake's pin for the value (default hard: never evicted; none: may be evicted "
                        "under memory pressure)")
    p.set_defaults(func=_put)
    p = sub.add_parser("get", parents=[common], help="write the value at the URL's key to stdout or a file")
    p.add_argument("url")
    p.add_argument("-o", "--output", default=None)
    p.set_defaults(func=_get)
    p = sub.add_parser("standalone",
                       help="run a local mooncake_master + storage process on loopback until Ctrl-C")
    p.add_argument("--segment-size", default="1gb",
                   help="memory the storage process contributes (default: 1gb)")
    p.add_argument("--local-buffer-size", default="64mb", help="its local buffer (default: 64mb)")
    p.add_argument("--lease-ttl-ms", type=int, default=1000,
                   help="master's read lease in ms (default 1000; removes wait it out)")
    p.add_argument("--log-dir", default=None, help="where the processes log (default: a temp dir)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address its sockets bind to (default 127.0.0.1; give this machine's address "
                        "to serve other machines). Mooncake binds three to all interfaces regardless: the "
                        "output names them")
    p.add_argument("--storage-processes", type=int, default=1,
                   help="storage processes, each contributing --segment-size (default 1; 2 or more "
                        "give replica_num=2 distinct segments)")
    p.set_defaults(func=_standalone)
    return parser


def _mooncake_log_aside(verbose: bool) -> Optional[str]:
    """Mooncake's client logs a dozen lines to stderr (file descriptor 2,
    from C++) whenever it connects, one of them an 'E… metadata not found'
    that is no error. Unless ``verbose``, descriptor 2 goes to a log file and
    this command's own messages (sys.stderr) to a duplicate of the terminal's
    stderr. Returns the log file's path (None when it could not be opened)."""
    if verbose:
        return None
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                          "mooncake-connector")
    path: Optional[str] = os.path.join(folder, "mooncake.log")
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        fd, path = os.open(os.devnull, os.O_WRONLY), None
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    return path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log = _mooncake_log_aside(getattr(args, "verbose", True))  # standalone has no -v: its processes log to files
    try:
        return _run(args, log)
    finally:
        sys.stderr.flush()


def _run(args: argparse.Namespace, log: Optional[str]) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except DataLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DATA_LOSS
    except UnavailableError as e:
        print(f"error: {e}" + (f" (Mooncake's log: {log})" if log else ""), file=sys.stderr)
        return EXIT_UNAVAILABLE
    except InvalidArgumentError as e:  # bad usage: a bad URL, option, name or input
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (MooncakeConnectorError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
