"""The status of every model: the live page the worker serves and `mle-stream status`."""
