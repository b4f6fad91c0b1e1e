"""gunicorn settings for running ``wsgi:app`` directly::

    gunicorn -c python:dropsync.gunicorn_conf wsgi:app

``dropsync serve`` uses the same options; both read DropSync's settings (environment,
``DROPSYNC_CONFIG``) for the address, threads and log level.
"""

from dropsync.config import load_config
from dropsync.server import gunicorn_options

globals().update(gunicorn_options(load_config()))
