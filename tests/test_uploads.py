"""Device uploads: streamed, atomic, size and type limits, safe names only."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from support import ADMIN_TOKEN, assert_error
from sync_support import bearer, tree

from dropsync import create_app

FILES = "/api/v1/files"
RAW = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def token(admin):
    return admin.register_device("esp001")


def upload_raw(client, token, name, data, device="esp001", **kw):
    return client.post(f"{FILES}/upload/{device}", data=data, query_string={"filename": name},
                        headers={**bearer(token), **RAW}, **kw)


def upload_form(client, token, files, device="esp001"):
    return client.post(f"{FILES}/upload/{device}", data=files, headers=bearer(token),
                       content_type="multipart/form-data")


def uploads_dir(settings) -> Path:
    return Path(settings["DATA_DIR"]) / "uploads"


def test_raw_upload_is_stored_whole_and_answers_its_sha256(client, token, settings, admin):
    data = b"line\n" * 50_000  # 250 kB: more than one read buffer
    response = upload_raw(client, token, "boot.log", data)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["name"], body["size"]) == ("boot.log", len(data))
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert tree(uploads_dir(settings)) == {"esp001/boot.log": data}

    listed = client.get(f"{FILES}/list/esp001", headers=bearer(token)).get_json()
    assert [u["name"] for u in listed["uploads"]] == ["boot.log"]
    assert admin.get("/uploads").get_json()["count"] == 1
    download = admin.get("/uploads/esp001/boot.log", buffered=True)
    assert download.data == data and download.headers["X-Content-SHA256"] == body["sha256"]
    tail = client.get("/api/v1/admin/uploads/esp001/boot.log", buffered=True,
                      headers={**bearer(ADMIN_TOKEN), "Range": "bytes=-10"})
    assert (tail.status_code, tail.data) == (206, data[-10:])


def test_multipart_upload_streams_the_file_part(client, token, settings):
    data = bytes(range(256)) * 1000
    response = upload_form(client, token, {"note": "from the field",
                                           "file": (io.BytesIO(data), "capture.bin")})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert tree(uploads_dir(settings)) == {"esp001/capture.bin": data}


def test_multipart_with_no_file_or_two_files_is_refused(client, token, settings):
    assert_error(upload_form(client, token, {"note": "x"}), 400, "no_file")
    two = {"a": (io.BytesIO(b"1"), "a.txt"), "b": (io.BytesIO(b"2"), "b.txt")}
    assert_error(upload_form(client, token, two), 400, "too_many_files")
    assert tree(uploads_dir(settings)) == {}


def test_a_refused_two_file_form_leaves_the_earlier_upload_alone(client, token, settings):
    upload_raw(client, token, "a.txt", b"kept")
    two = {"a": (io.BytesIO(b"replacement"), "a.txt"), "b": (io.BytesIO(b"2"), "b.txt")}
    assert_error(upload_form(client, token, two), 400, "too_many_files")
    assert tree(uploads_dir(settings)) == {"esp001/a.txt": b"kept"}
    listed = client.get(f"{FILES}/list/esp001", headers=bearer(token)).get_json()
    assert [(u["name"], u["size"]) for u in listed["uploads"]] == [("a.txt", 4)]


def test_uploading_a_name_again_replaces_the_file(client, token, settings):
    upload_raw(client, token, "state.json", b"old")
    response = upload_raw(client, token, "state.json", b"new!")
    assert response.get_json()["size"] == 4
    listed = client.get(f"{FILES}/list/esp001", headers=bearer(token)).get_json()
    assert [(u["name"], u["size"]) for u in listed["uploads"]] == [("state.json", 4)]
    assert tree(uploads_dir(settings)) == {"esp001/state.json": b"new!"}


def test_delete_removes_file_and_record(client, token, settings):
    upload_raw(client, token, "a.txt", b"a")
    assert client.delete(f"{FILES}/files/esp001/a.txt",
                         headers=bearer(token)).get_json() == {"deleted": "a.txt"}
    assert tree(uploads_dir(settings)) == {}
    assert_error(client.delete(f"{FILES}/files/esp001/a.txt", headers=bearer(token)), 404)


def test_a_device_cannot_see_or_delete_another_devices_uploads(client, token, admin):
    other = admin.register_device("esp002")
    upload_raw(client, token, "mine.txt", b"private")
    for response in (client.get(f"{FILES}/list/esp001", headers=bearer(other)),
                     client.delete(f"{FILES}/files/esp001/mine.txt", headers=bearer(other)),
                     upload_raw(client, other, "x.txt", b"x", device="esp001")):
        assert_error(response, 403, "wrong_device")
    assert client.get(f"{FILES}/list/esp002", headers=bearer(other)).get_json()["count"] == 0


def test_size_limit_answers_413_and_leaves_no_file(settings, tmp_path):
    app = create_app({**settings, "UPLOAD_MAX_BYTES": 10_000})
    try:
        client = app.test_client()
        token = client.post("/api/v1/admin/devices/register", json={"id": "esp001"},
                            headers=bearer(ADMIN_TOKEN)).get_json()["token"]
        assert_error(upload_raw(client, token, "big.bin", b"x" * 10_001), 413)
        # without a Content-Length the limit holds while streaming
        chunked = upload_raw(client, token, "big.bin", None,
                             input_stream=io.BytesIO(b"x" * 50_000),
                             environ_base={"wsgi.input_terminated": True})
        assert_error(chunked, 413)
        form = upload_form(client, token, {"file": (io.BytesIO(b"x" * 20_000), "f.bin")})
        assert_error(form, 413)
        assert upload_raw(client, token, "ok.bin", b"x" * 10_000).status_code == 201
        assert tree(uploads_dir(settings)) == {"esp001/ok.bin": b"x" * 10_000}
    finally:
        app.extensions["dropsync"].close()


def test_a_body_cut_short_leaves_no_partial_file(client, token, settings):
    response = client.post(f"{FILES}/upload/esp001", input_stream=io.BytesIO(b"x" * 5000),
                           query_string={"filename": "cut.bin"},
                           environ_overrides={"CONTENT_LENGTH": "100000"},
                           headers={**bearer(token), **RAW})
    assert_error(response, 400)
    assert tree(uploads_dir(settings)) == {}
    assert client.get(f"{FILES}/list/esp001", headers=bearer(token)).get_json()["count"] == 0


def test_types_not_allowed_answer_415(client, token, settings):
    for name in ("run.sh", "noextension", "page.HTML"):
        assert_error(upload_raw(client, token, name, b"x"), 415, "file_type_not_allowed")
    assert upload_raw(client, token, "DATA.CSV", b"a,b").status_code == 201
    assert tree(uploads_dir(settings)) == {"esp001/DATA.CSV": b"a,b"}


UNSAFE_NAMES = ["../x.txt", "..", "../../devices.json", "/etc/passwd.txt", "a\0b.txt",
                "a\\b.txt", "dir/x.txt", "a\uff0fb.txt", "a\u2215b.txt", "\u2024\u2024.txt",
                "\uff0e\uff0e.txt", ".hidden.txt", "caf\u00e9.txt", "", "x" * 200 + ".txt",
                "a..txt"]


def test_unsafe_names_read_and_write_nothing_outside(client, token, tmp_path, settings):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not leak")
    before = tree(tmp_path)
    for name in UNSAFE_NAMES:
        raw = upload_raw(client, token, name, b"payload")
        assert_error(raw, 400, "unsafe_filename" if name else "no_filename")
        form = upload_form(client, token, {"file": (io.BytesIO(b"payload"), name)})
        assert form.status_code == 400, name
        assert_error(form, 400)
    for path in ("..%2F..%2Fsecret.txt", "%2E%2E", "..", "a%00b.txt", "a%5Cb.txt",
                 "a%EF%BC%8Fb.txt", "%E2%80%A4%E2%80%A4"):
        response = client.delete(f"{FILES}/files/esp001/{path}", headers=bearer(token))
        assert response.status_code in (400, 404), path
        assert_error(response, response.status_code)
        assert b"do not leak" not in response.data
    for device in ("..", "%2E%2E"):
        assert_error(client.get(f"{FILES}/list/{device}", headers=bearer(token)), 403)
    assert tree(tmp_path) == before


def test_admin_download_refuses_unsafe_names(admin, token, tmp_path):
    (tmp_path / "secret.txt").write_text("do not leak")
    for path in ("esp001/..%2F..%2F..%2Fsecret.txt", "esp001/..", "..%2F..%2Fsecret.txt/x"):
        response = admin.get(f"/uploads/{path}", buffered=True)
        assert response.status_code in (400, 404), path
        assert b"do not leak" not in response.data
