"""The step kinds of a pipeline: model (onnxruntime), python, check, random split and shadow.

Each module holds one kind; :mod:`pipelines.build` turns a config's steps into them and
:mod:`pipelines.runner` runs them under their timeouts and retries. Only ``model.py`` imports
onnxruntime.
"""

__all__: list[str] = []
