"""A socket taken from an allowed binary (issue 17), run inside a sandbox.

python connects to the gateway, lets curl inherit the socket (curl idles,
reading its config from a pipe python keeps open, and never touches it),
and parks its own copy in flight: sent to itself with SCM_RIGHTS and
closed, so while the descriptor sits in a unix socket's queue the only fd
table holding the connection is curl's. Then python takes it back and
talks through it. Prints key=value lines:

  direct  python asking for HOST on its own socket (the control)
  late    the request written after python took the socket back
  corked  the request written before, held back by TCP_CORK: the kernel
          sends it ~200 ms later, while the descriptor is in flight
  again   a second request on the corked connection (keep-alive)

Each value is the HTTP status python read, "closed" if the gateway hung
up without answering, or "error ..." for anything else.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.parse

HOST = sys.argv[1]
proxy = urllib.parse.urlsplit(os.environ.get("http_proxy") or os.environ["HTTP_PROXY"])
PROXY = (proxy.hostname, proxy.port or 80)


def request(path):
    return ("GET http://%s/%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (HOST, path, HOST)).encode()


def status(s):
    """The status of one response; its body is consumed (keep-alive)."""
    s.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return "closed" if not data else "error truncated head"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = s.recv(4096)
            if not chunk:
                break
            body += chunk
        return lines[0].split(" ")[1]
    except OSError as x:
        return "error %s" % type(x).__name__


def borrowed(corked, wait):
    """A connection that only curl holds for `wait` seconds; returns it."""
    s = socket.create_connection(PROXY)
    curl = subprocess.Popen(["curl", "-s", "-K", "-"], stdin=subprocess.PIPE, pass_fds=[s.fileno()])
    if corked:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        s.sendall(request("corked"))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    socket.send_fds(a, [b"x"], [s.fileno()])
    s.close()
    time.sleep(wait)
    _, fds, _, _ = socket.recv_fds(b, 1, 1)
    a.close()
    b.close()
    return socket.socket(fileno=fds[0]), curl


def done(curl):
    curl.stdin.close()
    curl.kill()
    curl.wait()


with socket.create_connection(PROXY) as s:
    s.sendall(request("direct"))
    print("direct=%s" % status(s), flush=True)

s, curl = borrowed(corked=False, wait=0.4)
s.sendall(request("late"))
print("late=%s" % status(s), flush=True)
s.close()
done(curl)

s, curl = borrowed(corked=True, wait=0.6)
print("corked=%s" % status(s), flush=True)
try:
    s.sendall(request("again"))
    print("again=%s" % status(s), flush=True)
except OSError as x:
    print("again=error %s" % type(x).__name__, flush=True)
s.close()
done(curl)
