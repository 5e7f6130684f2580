"""Hypothesis profiles: "ci" (the default: derandomized, a few hundred examples per property, no
example database written into the tree) and "long" (scripts/fuzz --properties N: random, N examples).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), derandomize=True, **_common)
settings.register_profile("long", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100000")), derandomize=False, **_common)
settings.load_profile(os.environ.get("FUZZ_PROFILE", "ci"))
