"""What `lerobot-record` needs to record on the farm: a LeRobot-compatible dataset object
(dataset.py), the command that puts it in place (command.py), the check of the installed
LeRobot (compat.py), and a synthetic robot, teleoperator and cameras registered through
LeRobot's own mechanism (synthetic/).

Nothing here imports LeRobot at import time: the farm installs and runs without it.
"""
