"""Would setstr gain from sending its existence check beside its put? The raw
wheel over TCP against one standalone instance, 100-byte values on new keys:
get_size then put, in turn, against get_size on this thread while put runs on
another (started first). Prints p50s, and what get_size found when beside the
put (-704: missing; -703: our own put under way)."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import RawWheel  # noqa: E402
from harness import write_result  # noqa: E402
from mooncake_connector import standalone  # noqa: E402


def main(count: int = 500) -> None:
    data = b"x" * 100
    with standalone.start(segment_size="512mb", local_buffer_size="64mb", lease_ttl_ms=None) as inst:
        raw = RawWheel(inst, "tcp", 1 << 20, 0)
        store = raw.store
        in_turn, beside, found = [], [], {}
        for i in range(count):
            start = time.perf_counter()
            assert store.get_size(f"t{i}") < 0
            assert store.put(f"t{i}", data) == 0
            in_turn.append((time.perf_counter() - start) * 1e6)

            key, result = f"b{i}", []
            start = time.perf_counter()
            putter = threading.Thread(target=lambda k=key: result.append(store.put(k, data)))
            putter.start()
            seen = store.get_size(key)
            putter.join()
            beside.append((time.perf_counter() - start) * 1e6)
            assert result == [0]
            found[seen] = found.get(seen, 0) + 1
        raw.close()
    p50 = {"in turn": statistics.median(in_turn), "beside": statistics.median(beside)}
    print(f"get_size + put in turn: p50 {p50['in turn']:.1f} us; beside: p50 {p50['beside']:.1f} us; "
          f"get_size beside the put found {found} ({count} keys)")
    write_result("bench/results/overlapped_exists.json", "overlapped_exists",
                 "python bench/experiments/overlapped_exists.py", p50_us=p50,
                 get_size_results={str(k): v for k, v in found.items()}, count=count)


if __name__ == "__main__":
    main()
