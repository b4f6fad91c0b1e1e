"""Operating a hub: request log, metrics, trusted proxies, backups, TLS, mDNS, the service.

``dropsync.ops.app.init_app`` wires the per-request parts into an app; the rest are called
by the CLI (``dropsync.ops.cli``) and the admin API (``dropsync.api.admin_ops``). This
package's own import stays light: the CLI loads it on every command.
"""
