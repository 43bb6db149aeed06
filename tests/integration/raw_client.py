#!/usr/bin/env python3
"""raw_client.py — raw-socket HTTP clients for the integration specs (curl
cannot send malformed or slow requests).

  raw_client.py send HOST PORT HEXBYTES
      sends the bytes, half-closes, prints what came back (up to 10 s)
  raw_client.py loris HOST PORT COUNT SECONDS
      opens COUNT connections that each send one header line every 0.5 s,
      never finishing the request; after SECONDS prints how many the server
      closed ("closed N of COUNT")
"""
import socket
import sys
import time


def send(host, port, data):
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    sys.stdout.buffer.write(out)


def loris(host, port, count, seconds):
    socks = []
    for i in range(count):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"POST /workflows/x HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        socks.append(s)
    print("opened %d" % len(socks), flush=True)
    closed = set()
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end and len(closed) < count:
        time.sleep(0.5)
        n += 1
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                if s.recv(4096) == b"":
                    closed.add(i)
                    continue
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
                continue
            try:
                s.send(b"X-Slow-%d: %d\r\n" % (n, n))
            except OSError:
                closed.add(i)
    print("closed %d of %d" % (len(closed), count), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4]))
    elif sys.argv[1] == "loris":
        loris(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
