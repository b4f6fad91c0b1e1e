"""Relaying commands from operators to devices: queue, lease, complete, expire.

Plain modules: no Flask request in here.
"""
