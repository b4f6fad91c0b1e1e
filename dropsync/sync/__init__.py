"""Getting files onto devices: the staging folder and its watcher, packages and their
manifests, the blob store, device uploads, download tickets and firmware images.

Plain modules: no Flask request in here.
"""
