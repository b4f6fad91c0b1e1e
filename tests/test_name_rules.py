"""Every kind of name the hub stores is checked against its whole value: a trailing newline
(``$`` after ``re.match``) or any other control character is refused, on every way in."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from support import assert_error

BAD_ENDINGS = ["\n", "\r\n", "\t"]


@pytest.mark.parametrize("ending", BAD_ENDINGS)
def test_a_device_id_with_a_trailing_newline_is_refused(admin, client, ending):
    assert_error(admin.post("/devices/register", json={"id": "nl2" + ending}), 400)
    assert_error(admin.post("/devices/register", json={"id": "esp001",
                                                      "groups": ["grp" + ending]}), 400)
    assert [d["id"] for d in admin.get("/devices").get_json()["devices"]] == []


@pytest.mark.parametrize("ending", BAD_ENDINGS)
def test_a_group_name_with_a_trailing_newline_is_refused(admin, ending):
    admin.register_device("esp001")
    in_path = "grp" + quote(ending)  # a raw newline never reaches a path: urlsplit drops it
    assert_error(admin.put("/groups/" + in_path, json={}), 400)
    assert_error(admin.post("/groups/" + in_path + "/members",
                            json={"devices": ["esp001"]}), 400)
    assert_error(admin.patch("/devices/esp001", json={"groups": ["grp" + ending]}), 400)
    assert admin.get("/groups").get_json()["groups"] == []
    assert admin.get("/devices/esp001").get_json()["groups"] == []


@pytest.mark.parametrize("ending", BAD_ENDINGS)
def test_a_command_name_with_a_trailing_newline_is_refused(admin, ending):
    admin.register_device("esp001")
    for target in ("/devices/esp001/command", "/commands"):
        body = {"name": "reboot" + ending}
        if target == "/commands":
            body["target"] = "all"
        response = admin.post(target, json=body)
        assert response.status_code in (400, 404), response.get_json()
        if response.status_code == 400:
            assert_error(response, 400)
    assert admin.get("/devices/esp001/commands").get_json()["commands"] == []


@pytest.mark.parametrize("ending", BAD_ENDINGS)
def test_an_operator_name_with_a_trailing_newline_is_refused(admin, ending):
    before = admin.get("/operators").get_json()
    assert_error(admin.post("/operators", json={"username": "admin" + ending,
                                                "password": "a-long-enough-password"}), 400)
    assert admin.get("/operators").get_json() == before


def test_the_same_names_without_the_newline_are_taken(admin):
    admin.register_device("nl2", groups=["grp"])
    assert admin.post("/devices/nl2/command", json={"name": "reboot"}).status_code == 201
    assert admin.post("/operators", json={"username": "admin2",
                                          "password": "a-long-enough-password"}
                      ).status_code == 201
