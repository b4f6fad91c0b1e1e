"""WSGI entry point: ``gunicorn -c python:dropsync.gunicorn_conf wsgi:app``."""

from dropsync import create_app

app = create_app()
