"""Python steps of the example deployments in ``configs/``: the digits preprocessing and the
custom-JSON forecast, named in those configs as ``pipelines.examples.<module>:<callable>``.
"""

__all__: list[str] = []
