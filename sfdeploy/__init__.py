"""sfdeploy: Sampling-Free object detectors from training to deployment.

`import sfdeploy` stays light: heavy stages (training, export, serving) are imported where they are used.
"""

import os

# OpenMP threads that busy-wait turn any CPU contention (a second process, a data worker, DDP ranks on one
# machine) into 10-50x slower steps on small machines; sleeping waiters cost ~nothing when the machine is idle.
# Only effective when set before torch is first imported; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import ModelConfig  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ModelConfig", "__version__"]
