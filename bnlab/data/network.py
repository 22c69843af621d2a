"""Whether a download host can be reached, decided within seconds.

Before a download, bnlab opens one TCP connection to the host (or its proxy); when
that fails or hangs past :data:`CONNECT_TIMEOUT_S`, the caller stops with one line
instead of waiting for a library's retries.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
import urllib.request

CONNECT_TIMEOUT_S = 3.0  # how long the pre-download connectivity check may take


def unreachable(url: str, timeout: float | None = None) -> str | None:
    """None if a TCP connection to the URL's host (or its proxy) opens in time (CONNECT_TIMEOUT_S),
    else a short reason. Runs in a thread so a slow DNS lookup cannot hang us either."""
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or "", p.port or 80
    result: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"no connection to {host}:{port}: {e.strerror or e}")

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result[0] if result else f"no connection to {host}:{port} within {timeout:g} s"
