"""CAN bus drivers (python-can), decoding frames with DBC files (cantools)."""
