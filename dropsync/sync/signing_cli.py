"""``dropsync keys new`` and ``dropsync sign``: run on the operator's machine, never the hub.

Neither opens a data directory or talks to a hub. They refuse to leave a private key
where the hub would take it in or keep it: in a hub's data folder or its staging folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..config import load_config
from ..errors import StartupError
from ..store.files import write_atomically
from .firmware_images import IMAGE_MAGIC


def hub_folders(ctx: click.Context) -> list[Path]:
    """The data and staging folders of the hub this invocation's settings name."""
    try:
        settings = load_config(ctx.obj or {}, config_file=(ctx.obj or {}).get("CONFIG_FILE"))
    except StartupError:
        return []
    return [Path(settings["DATA_DIR"]).resolve(), Path(settings["STAGING_DIR"]).resolve()]


def refuse_hub_folder(ctx: click.Context, path: Path) -> None:
    where = path.resolve().parent
    for folder in hub_folders(ctx):
        if where == folder or folder in where.parents:
            raise click.ClickException(
                f"{path} is inside the hub's folder {folder}: a private key must stay off "
                "the hub (a staged key would be refused, a data folder one stops the hub)")


@click.group("keys")
def keys_group() -> None:
    """Signing keys for firmware images (on the machine that signs, not the hub)."""


@keys_group.command("new")
@click.option("--kind", type=click.Choice(["rsa-2048", "rsa-3072", "rsa-4096",
                                           "ecdsa-p256", "ecdsa-p384"]),
              default="rsa-2048", show_default=True,
              help="RSA signs for both cores; the ESP8266 core verifies RSA only.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Folder for private.key and public.key.")
@click.option("--force", is_flag=True, help="Replace keys already there.")
@click.pass_context
def keys_new(ctx: click.Context, kind: str, out_dir: str, force: bool) -> None:
    """Make a key pair: private.key (mode 0600) and public.key, and print the public key
    in the forms each board needs."""
    from . import signing

    folder = Path(out_dir)
    private_path, public_path = folder / "private.key", folder / "public.key"
    refuse_hub_folder(ctx, private_path)
    if not force and (private_path.exists() or public_path.exists()):
        raise click.ClickException(f"{private_path} or {public_path} exists; every node "
                                   "built with its public key needs it: --force replaces it")
    key = signing.new_private_key(kind)
    pem = signing.public_pem(key.public_key())
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(private_path, signing.private_pem(key), mode=0o600)
    write_atomically(public_path, pem, mode=0o644)
    click.echo(f"Wrote {private_path} (mode 0600: keep it off the hub, back it up "
               f"offline) and {public_path}.")
    click.echo(f"Key {signing.key_id(key.public_key())} ({kind}).")
    click.echo("\nThe hub: FIRMWARE_SIGNING_KEYS=" + str(public_path.resolve()))
    if kind.startswith("rsa"):
        click.echo("\nESP8266 (Arduino core): copy public.key into the sketch folder beside "
                   "dropsync_node.ino; the IDE then builds a sketch that accepts only "
                   "images signed with this key. Or in code:\n"
                   "  BearSSL::PublicKey signPubKey(PUBLIC_KEY_PEM);\n"
                   "  BearSSL::HashSHA256 hash;\n"
                   "  BearSSL::SigningVerifier sign(&signPubKey);\n"
                   "  Update.installSignature(&hash, &sign);")
    click.echo("\nESP32 (Arduino core 3.3+, UpdaterRSAVerifier / UpdaterECDSAVerifier):")
    click.echo(signing.esp32_header(pem))
    click.echo("The public key (PEM):")
    click.echo(pem.decode().rstrip())


@click.command("sign")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False),
              default="private.key", show_default=True, help="The private key.")
@click.option("--format", "fmt", type=click.Choice(["esp8266", "esp32"]),
              default="esp8266", show_default=True,
              help="esp8266: image|signature|length (tools/signing.py); esp32: image|"
                   "signature padded to 512 bytes (tools/bin_signing.py).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write the signed image (default: IMAGE.signed).")
@click.pass_context
def sign(ctx: click.Context, image: str, key_file: str, fmt: str, out: str | None) -> None:
    """Sign a firmware image for nodes whose Update verifies signatures."""
    from . import signing

    data = Path(image).read_bytes()
    if not data or data[0] != IMAGE_MAGIC:
        raise click.ClickException(f"{image} is not an ESP firmware image (it must start "
                                   "with 0xE9: the sketch's .bin, not an .elf)")
    try:
        key = signing.load_private_key(Path(key_file).read_bytes())
        signed = signing.sign_image(data, key, fmt)
    except signing.SigningError as exc:
        raise click.ClickException(str(exc)) from None
    target = Path(out or image + ".signed")
    write_atomically(target, signed, mode=0o644)
    click.echo(f"Signed {image} ({len(data)} bytes) with key "
               f"{signing.key_id(key.public_key())} for {fmt}: {target} "
               f"({len(signed)} bytes). Stage it as staging/<target>/firmware/<name>.bin.")
    if os.path.samefile(target.parent, Path(key_file).parent):
        click.echo("Note: the signed image sits beside the private key; copy only the "
                   "image to the hub.")


def register(main: click.Group) -> None:
    for command in (keys_group, sign):
        main.add_command(command)
