"""The gateway over HTTPS: `[gateway] tls_cert_file` / `tls_key_file` on a real daemon; the pair is
swapped and SIGHUP'd while a stream runs: the stream finishes on its connection, new connections get
the new certificate, and a broken pair is refused while the gateway keeps serving."""

from __future__ import annotations

import json
import shutil
import signal
import ssl

import httpx
import pytest
from cryptography import x509

from daemon_harness import CynodeProcess, wait_for
from tls_certs import TestCa


def served_cn(node: CynodeProcess) -> str:
    pem = ssl.get_server_certificate((node.host, node.ports["gateway"]), timeout=10)
    return x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()


@pytest.mark.timeout(240)
def test_sighup_swaps_the_certificate_for_new_connections_without_dropping_a_stream(tmp_path, redis_server, models_dir):
    ca = TestCa(tmp_path / "pki")
    first, second = ca.issue("gateway-one", file_stem="one"), ca.issue("gateway-two", file_stem="two")
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    node = CynodeProcess(tmp_path / "node", redis_url=redis_server.url, models_dir=models_dir, extra={
        "gateway": {"tls_cert_file": str(cert), "tls_key_file": str(key)},
        "worker": {"backend": "sim", "sim": {"tokens_per_second": 10.0, "answer_tokens": 200}}})
    node.start(timeout=120)
    try:
        url = f"https://{node.host}:{node.ports['gateway']}"
        trust = ssl.create_default_context(cafile=str(ca.pem))
        headers = {"Authorization": f"Bearer {node.api_key()}", "Cache-Control": "no-cache"}
        assert served_cn(node) == "CN=gateway-one"
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on the TLS port
            httpx.get(f"http://{node.host}:{node.ports['gateway']}/v1/models", headers=headers, timeout=5)

        body = {"model": "sim", "messages": [{"role": "user", "content": "tls stream"}], "max_tokens": 30, "stream": True}
        text, finish = "", None
        with httpx.Client(verify=trust, timeout=60) as client:
            with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as reply:
                assert reply.status_code == 200 and reply.headers["X-Cache"] == "miss"
                swapped = False
                for line in reply.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choice = json.loads(line[6:])["choices"]
                    if choice:
                        text += choice[0]["delta"].get("content") or ""
                        finish = choice[0]["finish_reason"] or finish
                    if not swapped and text:  # mid-stream: swap the pair and reload
                        swapped = True
                        mark = node.log_mark()
                        shutil.copy(second.cert, cert)
                        shutil.copy(second.key, key)
                        node.proc.send_signal(signal.SIGHUP)
                        wait_for(lambda: "gateway TLS reloaded" in node.log_since(mark), 20, "the gateway to reload")
                        assert served_cn(node) == "CN=gateway-two"  # a new connection, while the stream runs
            assert swapped and finish == "length" and len(text) > 0
            # The same client (its pooled connection, or a new one) keeps working.
            assert client.get(f"{url}/v1/models", headers=headers).status_code == 200

        mark = node.log_mark()
        key.write_text("not a key\n")
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "gateway TLS not reloaded" in node.log_since(mark), 20, "the broken pair to be refused")
        assert served_cn(node) == "CN=gateway-two"
        assert httpx.get(f"{url}/v1/models", headers=headers, verify=trust, timeout=10).status_code == 200
    finally:
        assert node.terminate() == 0
