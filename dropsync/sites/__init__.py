"""Many sites composed through Syncthing: packages and commands down, exports up.

Each site hub stays the authority for its own devices; a central hub is a hub too. Nothing
here replicates anything itself: Syncthing carries whole files between folders, and these
modules only read and write files in those folders (``layout.py`` says which), plus the
one-off set-up that drives the local Syncthing's REST API (``setup.py``).
"""
