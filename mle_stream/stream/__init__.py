"""Stream wiring: the Faust app (app.py) around a broker-free processor (processor.py)."""
