"""An HTTP client whose requests run on named threads, as a JVM, Go or
tokio program's do: the kernel's per-thread name (what bpf_get_current_comm
reads) is not the process name. Each thread opens a connection per request."""

import ctypes
import http.client
import sys
import threading
import time

host, port = sys.argv[1], int(sys.argv[2])
threads, per_thread = int(sys.argv[3]), int(sys.argv[4])
pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.05
timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 10.0

PR_SET_NAME = 15
libc = ctypes.CDLL(None)
done = {"ok": 0, "failed": 0}
lock = threading.Lock()


def work(n):
    libc.prctl(PR_SET_NAME, f"req-worker-{n}".encode(), 0, 0, 0)
    for _ in range(per_thread):
        try:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
            with lock:
                done["ok"] += 1
        except OSError:
            with lock:
                done["failed"] += 1
        time.sleep(pause)


workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(f"threadclient: {done['ok']} ok, {done['failed']} failed", file=sys.stderr)
