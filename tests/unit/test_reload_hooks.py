"""What SIGHUP re-reads: each file replaces what is in use only when it is good, in place."""

from __future__ import annotations

import base64

from cynode.api_keys import ApiKey, ApiKeyStore
from cynode.cluster_key import generate_key
from cynode.gossip import Keyring
from cynode.peer_auth import PeerAuth
from cynode.pki import derive_ca
from cynode.reload_hooks import ReloadHooks, api_keys_hook, keyring_hook


def private(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return path


async def test_a_good_key_file_reaches_every_consumer_in_place(tmp_path):
    old, new = base64.b64decode(generate_key()), base64.b64decode(generate_key())
    keyring, auth = Keyring([old]), PeerAuth((old,))
    path = private(tmp_path / "cluster.key", f"{base64.b64encode(new).decode()}\n{base64.b64encode(old).decode()}\n")
    hooks = ReloadHooks()
    hooks.add("cluster keyring", keyring_hook(path, [keyring.replace, auth.replace_keys]))
    assert await hooks.run() == {"cluster keyring": None}
    assert keyring.primary == new and keyring.keys == (new, old)
    # peer TLS: certificates under the new key's CA from the next handshake on, both CAs trusted
    assert auth.ca_fingerprints == (derive_ca(new).fingerprint, derive_ca(old).fingerprint)


async def test_a_bad_file_is_refused_and_the_others_still_reload(tmp_path):
    key = base64.b64decode(generate_key())
    keyring = Keyring([key])
    store = ApiKeyStore.from_keys([("sk-old", ApiKey(name="old"))])
    bad_ring = private(tmp_path / "cluster.key", "not a key\n")
    keys = private(tmp_path / "api-keys.toml", '[[keys]]\nname = "new"\nkey = "sk-new"\n')
    hooks = ReloadHooks()
    hooks.add("cluster keyring", keyring_hook(bad_ring, [keyring.replace]))
    hooks.add("API keys", api_keys_hook(store, keys))
    outcome = await hooks.run()
    assert "line 1: not base64" in outcome["cluster keyring"] and outcome["API keys"] is None
    assert keyring.keys == (key,)  # untouched
    assert store.authenticate("Bearer sk-new").name == "new"
