"""A prefork TCP server whose child accepts connections and never reads or
closes them: the CLOSE_WAIT leak of tcplinger's real-software scenarios.

The parent creates the listening socket, forks one child that accepts, and
waits. Sockets the clients close stay in CLOSE_WAIT in the child."""

import os
import signal
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
listener = socket.socket(family, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port))
listener.listen(128)

child = os.fork()
if child == 0:
    held = []
    while True:
        conn, _ = listener.accept()
        held.append(conn)  # never read, never closed
else:
    # The harness waits for this line (both pids) instead of sleeping.
    print(f"listening parent={os.getpid()} child={child}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (os.kill(child, signal.SIGKILL), sys.exit(0)))
    os.waitpid(child, 0)
