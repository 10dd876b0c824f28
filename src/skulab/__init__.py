"""skulab: a reproducible ablation lab for retail product detection and recognition."""

import os

# OpenMP's default active wait spins each idle thread; on a machine whose cores are shared (parallel
# cells, a test run beside a training) that made a recognizer step about 10x slower (7 s vs 0.7 s per
# batch on 2 cores). Passive waiting changes no result. Set before torch loads libgomp; a user's own
# OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
