"""sfdeploy: Sampling-Free object detectors from training to deployment.

`import sfdeploy` stays light: heavy stages (training, export, serving) are imported where they are used.
"""

import os

# OpenMP threads that busy-wait turn any CPU contention (a second process, a data worker, DDP ranks on one
# machine) into 10-50x slower steps on small machines; sleeping waiters cost ~nothing when the machine is idle.
# Only effective when set before torch is first imported; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The stages live in the repository's top-level folders (training/, export/, serving/). An installed wheel has them
# inside this package (pyproject [tool.setuptools.package-dir]); in a source checkout they sit next to it, so the
# checkout root joins this package's search path. Either way each stage has one import name: sfdeploy.serving etc.
# (the stages refuse to be imported under their bare folder names).
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_checkout, "pyproject.toml")) and os.path.isfile(
        os.path.join(_checkout, "serving", "__init__.py")):
    __path__.append(_checkout)  # type: ignore[name-defined]  # noqa: F821 - a package's own search path
del _checkout

from .config import ModelConfig  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ModelConfig", "__version__"]
