"""The verdict of a check on a window, shared by the checks (core/checks.py) and the sequential
tests they run (core/sequential.py), which never give ERROR themselves."""

from enum import Enum


class Verdict(str, Enum):
    PASS = "PASS"  # for a sequential test: no evidence of harm so far
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"  # too few samples: hold the current step, never roll back
    ERROR = "ERROR"  # no data at all, or a source outage: hold and alert
