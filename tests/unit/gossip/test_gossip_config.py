"""Timing presets (memberlist's defaults), their derived values, validation, and small helpers."""

from __future__ import annotations

import pytest

from cynode.gossip import GossipConfig, lan, local, preset, split_address, wan
from cynode.gossip.awareness import Awareness
from cynode.gossip.suspicion import Suspicion, remaining_time


def test_the_lan_preset_is_memberlists_default_lan_config():
    c = lan()
    assert (c.probe_interval, c.probe_timeout, c.indirect_checks) == (1.0, 0.5, 3)
    assert (c.retransmit_mult, c.suspicion_mult, c.suspicion_max_timeout_mult) == (4, 4, 6)
    assert (c.gossip_interval, c.gossip_nodes, c.gossip_to_the_dead_time) == (0.2, 3, 30.0)
    assert (c.push_pull_interval, c.tcp_timeout, c.awareness_max_multiplier, c.udp_buffer_size) == (30.0, 10.0, 8, 1400)


def test_the_wan_preset_is_more_patient():
    c = wan()
    assert (c.probe_interval, c.probe_timeout, c.suspicion_mult) == (5.0, 3.0, 6)
    assert (c.gossip_interval, c.gossip_nodes, c.push_pull_interval, c.tcp_timeout) == (0.5, 4, 60.0, 30.0)


def test_the_local_preset_is_quick_and_lean():
    c = local()
    assert (c.probe_timeout, c.indirect_checks, c.retransmit_mult, c.suspicion_mult) == (0.2, 1, 2, 3)
    assert (c.gossip_interval, c.push_pull_interval, c.tcp_timeout) == (0.1, 15.0, 1.0)


def test_presets_are_found_by_their_node_toml_name():
    assert preset("wan") == wan()
    with pytest.raises(ValueError, match="expected one of lan, wan, local"):
        preset("fast")


def test_nonsense_timings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="probe_timeout must not exceed probe_interval"):
        lan().with_(probe_timeout=2.0)
    with pytest.raises(ValueError, match="gossip_interval must be positive"):
        GossipConfig(gossip_interval=0)


def test_push_pull_backs_off_beyond_32_members():
    c = lan()
    assert [c.push_pull_period(n) for n in (10, 32, 33, 64, 1000)] == [30, 30, 60, 60, 180]


def test_the_local_health_multiplier_is_clamped():
    awareness = Awareness(8)
    assert awareness.apply_delta(-3) == 0
    assert awareness.apply_delta(20) == 7
    assert awareness.scale(1.0) == 8.0


def test_a_suspicion_without_wanted_confirmations_is_at_its_minimum():
    s = Suspicion("a", 0, 4.0, 24.0, start=100.0)
    assert s.deadline == 104.0
    assert not s.confirm("b")


def test_confirmations_beyond_k_change_nothing():
    s = Suspicion("a", 2, 4.0, 24.0, start=0.0)
    assert s.confirm("b") and s.confirm("c")
    assert not s.confirm("d")
    assert s.deadline == 4.0
    assert remaining_time(2, 2, elapsed=5.0, min_timeout=4.0, max_timeout=24.0) == -1.0


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.1:7000", ("10.0.0.1", 7000)),
    ("gpu-box", ("gpu-box", 7946)),
    ("[::1]:7000", ("::1", 7000)),
    ("fe80::1", ("fe80::1", 7946)),
])
def test_seed_addresses_may_omit_the_port_and_use_names(text, expected):
    assert split_address(text) == expected


def test_a_bad_seed_address_says_what_is_wrong():
    with pytest.raises(ValueError, match="port 'x' is not a number"):
        split_address("host:x")
    with pytest.raises(ValueError, match="out of range"):
        split_address("host:0")
