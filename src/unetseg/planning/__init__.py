"""Self-configuration: from a dataset fingerprint, the device and a time budget to a training recipe
(:mod:`.rules` decide, :mod:`.timing` measures the device, :mod:`.plan` puts them together)."""

from __future__ import annotations

from unetseg.planning.plan import Decision, Plan, make_plan

__all__ = ["Decision", "Plan", "make_plan"]
