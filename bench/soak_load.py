#!/usr/bin/env python3
"""Steady HTTP load for bench/soak.sh (standard library only).

    soak_load.py HOST:PORT FRESH_HOST:FRESH_PORT SECONDS RATE OUT_DIR

Sends about RATE requests per second for SECONDS, half of them to /allowed/<n> (the mesh must
answer 200) and half to /denied/<n> (a DENY policy must answer 403). Each class runs on two
threads that send to HOST:PORT over one kept-alive HTTP/1.1 connection (a new one every
RECONNECT_EVERY requests), plus one thread at 5 requests per second that opens a new connection
to FRESH_HOST:FRESH_PORT for every request (soak.sh puts a proxy there that dials a new mTLS
connection per tunnel, so handshakes happen all through certificate rotations). Every request has a
2 s timeout (connect, send, each read, and the whole exchange). Pacing is by schedule: a thread
that falls behind does not burst to catch up, and no thread sends more than its share.

Writes OUT_DIR/load-summary.txt (`key value` lines) and OUT_DIR/load-failures.log (one line per
request that did not get the expected answer: wall time, class, path, what happened).
"""

import http.client
import os
import sys
import threading
import time

TIMEOUT_S = 2.0
RECONNECT_EVERY = 1000
EXPECTED = {"allowed": 200, "denied": 403}


class Tally:
    def __init__(self, failures_path):
        self.lock = threading.Lock()
        self.sent = {cls: 0 for cls in EXPECTED}
        self.bad = {cls: 0 for cls in EXPECTED}
        self.kinds = {}
        self.connections = 0
        self.max_latency = 0.0
        self.latencies = []
        self.failures = open(failures_path, "w", buffering=1)

    def record(self, cls, path, outcome, latency):
        with self.lock:
            self.sent[cls] += 1
            self.max_latency = max(self.max_latency, latency)
            if len(self.latencies) < 2_000_000:
                self.latencies.append(latency)
            if outcome != EXPECTED[cls]:
                self.bad[cls] += 1
                key = f"{cls}:{outcome}"
                self.kinds[key] = self.kinds.get(key, 0) + 1
                stamp = time.strftime("%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}"
                self.failures.write(f"{stamp} {cls} {path} {outcome} {latency * 1000:.0f}ms\n")

    def opened(self):
        with self.lock:
            self.connections += 1


def exchange(conn, path):
    """One GET on conn: the status code, or a short name of what went wrong instead."""
    started = time.monotonic()
    try:
        conn.request("GET", path, headers={"Host": "soak-server"})
        response = conn.getresponse()
        response.read()
        outcome = response.status
        if response.will_close:
            conn.close()
    except (TimeoutError, OSError, http.client.HTTPException) as error:
        conn.close()
        outcome = type(error).__name__
    latency = time.monotonic() - started
    # A reply that came in pieces, each within the socket timeout, but later than the request's
    # deadline counts as a timeout all the same.
    if latency > TIMEOUT_S and isinstance(outcome, int):
        outcome = f"late-{outcome}"
    return outcome, latency


def worker(tally, target, cls, rate, deadline, limit, fresh):
    host, port = target.rsplit(":", 1)
    period = 1.0 / rate
    conn = None
    count = 0
    due = time.monotonic()
    while count < limit:
        now = time.monotonic()
        if now >= deadline:
            break
        if due > now:
            time.sleep(min(due - now, deadline - now))
            continue
        if conn is None or fresh or count % RECONNECT_EVERY == 0:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
            tally.opened()
        path = f"/{cls}/{threading.get_ident() % 1000}-{count}"
        outcome, latency = exchange(conn, path)
        tally.record(cls, path, outcome, latency)
        count += 1
        if conn.sock is None:
            # Closed by a failure or by the server: the next request opens (and counts) a new one.
            conn = None
        # A thread that fell behind its schedule goes on from now rather than bursting.
        due = max(due + period, time.monotonic() - period)
    if conn is not None:
        conn.close()


def main():
    target, fresh_target, seconds, rate, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    tally = Tally(os.path.join(out, "load-failures.log"))
    deadline = time.monotonic() + seconds
    # Per class: two keep-alive threads carrying most of the load, one fresh-connection thread at
    # 5 requests per second.
    fresh_rate = 5.0
    keep_rate = (rate / 2 - fresh_rate) / 2
    threads = []
    for cls in EXPECTED:
        for rate_each, fresh in ((keep_rate, False), (keep_rate, False), (fresh_rate, True)):
            limit = int(rate_each * seconds) + 1
            where = fresh_target if fresh else target
            t = threading.Thread(target=worker, args=(tally, where, cls, rate_each, deadline, limit, fresh))
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    lat = sorted(tally.latencies)

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

    with open(os.path.join(out, "load-summary.txt"), "w") as f:
        for cls in EXPECTED:
            f.write(f"{cls}_sent {tally.sent[cls]}\n")
            f.write(f"{cls}_wrong {tally.bad[cls]}\n")
        f.write(f"connections_opened {tally.connections}\n")
        f.write(f"latency_p50_ms {pct(0.50):.1f}\n")
        f.write(f"latency_p99_ms {pct(0.99):.1f}\n")
        f.write(f"latency_max_ms {tally.max_latency * 1000:.1f}\n")
        kinds = " ".join(f"{k}={v}" for k, v in sorted(tally.kinds.items())) or "none"
        f.write(f"wrong_kinds {kinds}\n")


if __name__ == "__main__":
    main()
