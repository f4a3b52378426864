"""HTTPS for the gateway: `[gateway] tls_cert_file` and `tls_key_file`, re-read on SIGHUP.

The one `ssl.SSLContext` the listening socket uses is loaded again in place on reload, so new
connections get the new certificate and connections already open keep theirs (nothing is dropped).
A bad pair is refused before it touches the live context: the gateway keeps serving the old one.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from cynode.errors import ConfigError

log = logging.getLogger(__name__)


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


class GatewayTls:
    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.context = _context()
        self._load(self.context)

    def _load(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except FileNotFoundError as exc:
            raise ConfigError("[gateway] tls_cert_file / tls_key_file", [f"{exc.filename}: not found"]) from None
        except PermissionError as exc:
            raise ConfigError("[gateway] tls_cert_file / tls_key_file", [f"{exc.filename}: permission denied"]) from None
        except ssl.SSLError as exc:
            raise ConfigError("[gateway] tls_cert_file / tls_key_file",
                              [f"{self.cert_file} and {self.key_file}: not a matching PEM certificate and key ({exc.reason})"]) from None

    def reload(self) -> str:
        """Load the files again; raises ConfigError (and keeps the old pair) when they are bad."""
        self._load(_context())  # check first, on a throwaway context
        self._load(self.context)
        return f"certificate {self.cert_file}"
