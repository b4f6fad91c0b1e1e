"""The device simulator (``dropsync simulate``) and the one-command demo (``dropsync demo``).

``device`` is one virtual device behaving like the firmware on the wire; ``fleet`` runs
thousands of them in one asyncio loop; ``faults`` injects misbehaviour on demand;
``stats`` tallies what happened; ``demo`` starts a throw-away hub with a small fleet.
"""
