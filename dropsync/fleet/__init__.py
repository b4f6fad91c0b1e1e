"""The fleet: who the devices are and what they say.

Devices and their tokens, groups, poll pacing, operators' and admin credentials, the
first-start bootstrap, and device messages. Plain modules: no Flask request in here.
"""
