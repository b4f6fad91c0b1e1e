// DropSync dashboard: a little plain JavaScript on pages that work without it.
// - live regions: every few seconds the page fetches its own URL with ?live=1 and swaps in
//   the regions it gets back (a short request each time: no connection held open);
// - confirmations, the JSON check of command arguments, posts by fetch with the CSRF token,
//   the upload with its progress bar, and copy buttons.
(function () {
  "use strict";
  var REFRESH_MS = 2500;
  var csrfToken = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function setText(el, text) { if (el) { el.textContent = text; } }

  // -- live regions ------------------------------------------------------------------
  var main = document.getElementById("main");
  var liveUrl = main && main.getAttribute("data-live");
  var liveStatus = document.getElementById("live-status");
  var timer = null;
  var stopped = false;

  function refresh() {
    timer = null;
    if (stopped || !liveUrl) { return; }
    // The default cache mode revalidates with the ETag: an unchanged page costs a 304.
    fetch(liveUrl, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (response) {
        if (response.status === 401) {
          stopped = true;
          setText(liveStatus, "Your session has ended: reload the page to log in again.");
          return null;
        }
        return response.ok ? response.json() : null;
      })
      .then(function (data) {
        if (data && data.regions) {
          Object.keys(data.regions).forEach(function (id) {
            var region = document.getElementById(id);
            // Never pull a control out from under the keyboard or a half-typed form.
            if (region && !region.contains(document.activeElement) &&
                region.innerHTML !== data.regions[id]) {
              region.innerHTML = data.regions[id];
            }
          });
          setText(liveStatus, "Live: updated " + new Date().toLocaleTimeString());
        }
      })
      .catch(function () { setText(liveStatus, "Live: the hub did not answer; retrying"); })
      .then(schedule);
  }

  function schedule(delay) {
    if (!stopped && liveUrl && timer === null && !document.hidden) {
      timer = window.setTimeout(refresh, typeof delay === "number" ? delay : REFRESH_MS);
    }
  }

  function refreshSoon() {
    if (timer !== null) { window.clearTimeout(timer); timer = null; }
    schedule(50);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden && timer !== null) { window.clearTimeout(timer); timer = null; }
    else { schedule(200); }  // a hidden tab costs the hub nothing
  });
  schedule();

  // -- confirmations -----------------------------------------------------------------
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (!question) { return; }
    if (!window.confirm(question)) { event.preventDefault(); return; }
    var field = form.querySelector('input[name="confirm"]');
    if (field) { field.value = "yes"; }
  });

  // -- JSON arguments ----------------------------------------------------------------
  function jsonProblem(text) {
    if (!text.trim()) { return ""; }
    try {
      var value = JSON.parse(text);
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        return "Arguments must be a JSON object, such as {\"delay_s\": 5}.";
      }
      return "";
    } catch (error) {
      return "Not valid JSON: " + error.message;
    }
  }

  function checkJson(field) {
    var problem = jsonProblem(field.value);
    field.setAttribute("aria-invalid", problem ? "true" : "false");
    setText(document.getElementById(field.getAttribute("aria-describedby")), problem);
    return !problem;
  }

  document.addEventListener("input", function (event) {
    if (event.target.hasAttribute && event.target.hasAttribute("data-json-object")) {
      checkJson(event.target);
    }
  });

  // -- posts by fetch (with the CSRF token in a header) ------------------------------
  function errorMessage(data, status) {
    if (data && data.error) {
      var details = data.error.details;
      var extra = details && typeof details === "object" ? " " + JSON.stringify(details) : "";
      return data.error.message + extra;
    }
    return "The hub answered " + status + ".";
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-fetch")) { return; }
    var jsonFields = form.querySelectorAll("[data-json-object]");
    for (var i = 0; i < jsonFields.length; i++) {
      if (!checkJson(jsonFields[i])) { event.preventDefault(); jsonFields[i].focus(); return; }
    }
    event.preventDefault();
    var result = form.querySelector(".form-result");
    setText(result, "Sending…");
    fetch(form.action, {method: "POST", body: new FormData(form), credentials: "same-origin",
                        headers: {"Accept": "application/json", "X-CSRFToken": csrfToken}})
      .then(function (response) {
        return response.json().catch(function () { return null; }).then(function (data) {
          if (!response.ok) { throw new Error(errorMessage(data, response.status)); }
          setText(result, "Command " + data.id + " (" + data.name + ") queued.");
          refreshSoon();
        });
      })
      .catch(function (error) { setText(result, error.message); });
  });

  // -- upload with progress ----------------------------------------------------------
  var upload = document.getElementById("upload-form");
  if (upload) {
    upload.addEventListener("submit", function (event) {
      event.preventDefault();
      var file = upload.querySelector('input[type="file"]').files[0];
      var target = upload.querySelector('[name="target"]').value.trim();
      var path = upload.querySelector('[name="path"]').value.trim() || (file && file.name);
      var bar = document.getElementById("upload-progress");
      var result = upload.querySelector(".form-result");
      if (!file || !target) { setText(result, "Choose a target and a file."); return; }
      var url = upload.getAttribute("data-action")
        .replace("TARGET", encodeURIComponent(target))
        .replace("PATH", path.split("/").map(encodeURIComponent).join("/"));
      var hold = upload.querySelector('[name="hold"]');
      if (hold && hold.checked) { url += "?release=draft"; }
      var request = new XMLHttpRequest();
      request.open("PUT", url);
      request.setRequestHeader("X-CSRFToken", csrfToken);
      request.setRequestHeader("Accept", "application/json");
      request.setRequestHeader("Content-Type", "application/octet-stream");
      request.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          bar.value = Math.round(100 * e.loaded / e.total);
          setText(result, "Uploading… " + bar.value + "%");
        }
      });
      request.addEventListener("load", function () {
        var data = null;
        try { data = JSON.parse(request.responseText); } catch (e) { data = null; }
        if (request.status >= 200 && request.status < 300) {
          bar.value = 100;
          setText(result, "Staged " + data.target + "/" + data.path + " as version " +
                  data.version + (hold && hold.checked ? ", held for a rollout: start it on " +
                  "the package's page." : "."));
          refreshSoon();
        } else {
          setText(result, errorMessage(data, request.status));
        }
      });
      request.addEventListener("error", function () { setText(result, "The upload failed."); });
      bar.value = 0;
      request.send(file);
    });
  }

  // -- "select all" boxes --------------------------------------------------------------
  document.addEventListener("change", function (event) {
    var all = event.target;
    var name = all.getAttribute && all.getAttribute("data-select-all");
    if (!name) { return; }
    var boxes = document.querySelectorAll("input." + name);
    for (var i = 0; i < boxes.length; i++) { boxes[i].checked = all.checked; }
  });

  // -- copy buttons ------------------------------------------------------------------
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button) { return; }
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) { return; }
    var text = source.value !== undefined ? source.value : source.textContent;
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done);
    } else {  // plain http on a LAN has no clipboard API: select and copy
      var area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* selected for the user */ }
      document.body.removeChild(area);
    }
  });
})();
