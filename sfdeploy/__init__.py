"""sfdeploy: Sampling-Free object detectors from training to deployment.

`import sfdeploy` stays light: heavy stages (training, export, serving) are imported where they are used.
"""

from .config import ModelConfig

__version__ = "0.1.0"
__all__ = ["ModelConfig", "__version__"]
