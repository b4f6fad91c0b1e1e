"""The stock updaters' requests, as their cores send them, over raw sockets: ESP8266httpUpdate's
and ESP32 HTTPUpdate's header sets, HTTP/1.0, HTTP Basic credentials."""

from __future__ import annotations

import base64
import json
import socket

import requests


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def esp8266_request(port, path, authorization, sketch_md5, mode="sketch", version="1.0.0"):
    """What ``ESPhttpUpdate.update(client, url, version)`` with ``setAuthorization``
    sends (ESP8266 Arduino core 3.1: ESP8266HTTPClient with useHTTP10(true))."""
    lines = [f"GET {path} HTTP/1.0", f"Host: 127.0.0.1:{port}", "User-Agent: ESP8266-http-Update"]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    lines += ["Connection: keep-alive", "x-ESP8266-Chip-ID: 10570127",
              "x-ESP8266-STA-MAC: 5C:CF:7F:A1:49:8F", "x-ESP8266-AP-MAC: 5E:CF:7F:A1:49:8F",
              "x-ESP8266-free-space: 2801664", "x-ESP8266-sketch-size: 301408",
              f"x-ESP8266-sketch-md5: {sketch_md5}", "x-ESP8266-chip-size: 4194304",
              "x-ESP8266-sdk-version: 2.2.2-dev(38a443e)", f"x-ESP8266-mode: {mode}",
              f"x-ESP8266-version: {version}"]
    return exchange(port, lines)


def esp32_request(port, path, authorization, sketch_sha256):
    """What ``httpUpdate.update(client, url)`` sends on an ESP32 (arduino-esp32's
    HTTPClient, HTTP/1.0); the sketch's SHA-256 in upper-case hex, as getSketchSHA256()."""
    lines = [f"GET {path} HTTP/1.0", f"Host: 127.0.0.1:{port}",
             "User-Agent: ESP32-http-Update", "Connection: keep-alive"]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    lines += ["Cache-Control: no-cache", "x-ESP32-STA-MAC: 24:0A:C4:12:34:56",
              "x-ESP32-AP-MAC: 24:0A:C4:12:34:57", "x-ESP32-free-space: 1310720",
              "x-ESP32-sketch-size: 912304", f"x-ESP32-sketch-sha256: {sketch_sha256}",
              "x-ESP32-chip-size: 4194304", "x-ESP32-sdk-version: v4.4.6",
              "x-ESP32-mode: sketch"]
    return exchange(port, lines)


class Answer:
    def __init__(self, status, headers, body):
        self.status_code, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def exchange(port, lines) -> Answer:
    """One request over a raw socket, read as the updaters do: status, headers, then
    exactly Content-Length bytes (they stop there even on a kept-alive connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            assert piece, data
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = requests.structures.CaseInsensitiveDict(
            line.split(": ", 1) for line in header_lines)
        assert status_line.startswith("HTTP/1."), status_line
        assert "chunked" not in headers.get("Transfer-Encoding", "")  # updaters cannot
        length = int(headers.get("Content-Length", "0"))
        while len(body) < length:
            piece = sock.recv(65536)
            assert piece, "connection closed before Content-Length bytes"
            body += piece
    return Answer(int(status_line.split()[1]), headers, body[:length])
