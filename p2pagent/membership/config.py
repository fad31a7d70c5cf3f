"""Membership settings (``[membership]``): SWIM timings, Lifeguard knobs, tag limits.

Defaults follow memberlist's LAN profile where the issue does not fix them: probe every 1 s,
gossip every 200 ms to 3 members, 3 indirect probes, suspicion multiplier 4.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent.errors import ConfigError


@dataclass
class MembershipConfig:
    #: Seconds between failure-detector probes of one random member.
    probe_interval: float = 1.0
    #: Seconds a direct probe waits for its ack before asking others to probe indirectly.
    probe_timeout: float = 0.5
    #: Members asked to probe indirectly when a direct probe times out.
    indirect_checks: int = 3
    #: Seconds between dissemination rounds (piggybacked updates sent to ``gossip_fanout``).
    gossip_interval: float = 0.2
    #: Members each gossip round sends to.
    gossip_fanout: int = 3
    #: Retransmit limit of an update is ``retransmit_mult * ceil(log10(N + 1))``.
    retransmit_mult: int = 4
    #: Suspicion timeout is ``suspicion_mult * log10(max(N, 1)) * probe_interval`` at best...
    suspicion_mult: int = 4
    #: ...and starts at this many times that, shrinking with independent confirmations.
    suspicion_max_mult: int = 6
    #: Lifeguard local health multiplier cap: probe interval and timeout scale up to (1 + cap).
    awareness_max: int = 8
    #: Seconds between full push-pull state exchanges with one random member; stretched in
    #: proportion to N past 8 members, so that their bytes per member stay flat.
    push_pull_interval: float = 15.0
    #: Seconds between re-join attempts to seeds and recently dead members (partition healing).
    rejoin_interval: float = 5.0
    #: Seconds a dead or left member is kept (as a tombstone) before being forgotten.
    dead_reap_s: float = 3600.0
    #: Largest total size of a member's tags, bytes (encoded keys + values).
    max_tags_bytes: int = 512
    #: Updates piggybacked on one protocol message at most.
    max_piggyback: int = 16

    def validate(self) -> MembershipConfig:
        positive = {
            "probe_interval": self.probe_interval,
            "probe_timeout": self.probe_timeout,
            "gossip_interval": self.gossip_interval,
            "push_pull_interval": self.push_pull_interval,
            "rejoin_interval": self.rejoin_interval,
            "dead_reap_s": self.dead_reap_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"membership.{name} must be > 0, got {value}")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError(
                f"membership.probe_timeout ({self.probe_timeout}) must be below"
                f" membership.probe_interval ({self.probe_interval})"
            )
        for name in ("indirect_checks", "gossip_fanout", "retransmit_mult", "suspicion_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"membership.{name} must be >= 1, got {getattr(self, name)}")
        if self.suspicion_max_mult < 1 or self.awareness_max < 0:
            raise ConfigError("membership.suspicion_max_mult must be >= 1, awareness_max >= 0")
        if not 64 <= self.max_tags_bytes <= 64 * 1024:
            raise ConfigError("membership.max_tags_bytes must be between 64 and 65536")
        if self.max_piggyback < 1:
            raise ConfigError("membership.max_piggyback must be >= 1")
        return self
