"""Training, evaluation (COCO AP), prior estimation hooks and distributed runs."""

if __name__ != "sfdeploy.training":  # one module, one import name (pyproject [tool.setuptools.package-dir])
    raise ImportError(f"the training stage is sfdeploy.training: import it under that name, not as {__name__!r}")
