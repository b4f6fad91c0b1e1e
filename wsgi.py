"""WSGI entry point: ``gunicorn -c python:dropsync.gunicorn_conf wsgi:app``."""

from dropsync.server import create_app_or_exit

app = create_app_or_exit()
