#!/usr/bin/env python3
"""notify_listener.py SOCKET OUT MAX_SECONDS — stands in for systemd's end
of the sd_notify protocol: binds a unix datagram socket at SOCKET and
appends every datagram it receives to OUT, one per line (its newlines shown
as '|'), until MAX_SECONDS pass. systemd_spec.lua names SOCKET in the
NOTIFY_SOCKET of the chorus serve it starts."""
import os
import socket
import sys
import time

path, out, max_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
open(out, "ab").close()  # the file is there once the socket is
deadline = time.monotonic() + max_seconds
try:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            break
        with open(out, "ab") as f:
            f.write(data.replace(b"\n", b"|") + b"\n")
finally:
    sock.close()
    os.unlink(path)
