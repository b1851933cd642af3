"""Modbus TCP/RTU driver: register maps from device profiles, grouped reads, guarded writes."""
