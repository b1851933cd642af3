"""Drivers for real devices: Modbus TCP/RTU (register maps), SunSpec over Modbus, CAN BMS (DBC).

They implement the same Device interface as the simulators, on top of `PollingDevice`: all I/O
happens in the device's own task and the control cycle only ever reads their cache. See
docs/device-profiles.md for how to configure them.
"""
