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

  // -- times: the hub sends absolute moments, the page says how long ago ------------------
  // <time datetime="ISO" class="ago">local time</time>: the text becomes "12 s ago (local
  // time)". The HTML then changes only with the data, so a live refresh can answer 304.
  function agoText(seconds) {
    if (seconds < 60) { return Math.max(0, Math.floor(seconds)) + " s ago"; }
    var units = [["d", 86400], ["h", 3600], ["min", 60]];
    for (var i = 0; i < units.length; i++) {
      if (seconds >= units[i][1]) { return Math.floor(seconds / units[i][1]) + " " + units[i][0] + " ago"; }
    }
    return "";
  }

  function drawTimes(root) {
    var now = Date.now();
    var times = (root || document).querySelectorAll("time.ago");
    for (var i = 0; i < times.length; i++) {
      var el = times[i];
      var at = Date.parse(el.getAttribute("datetime"));
      if (isNaN(at)) { continue; }
      if (!el.hasAttribute("data-local")) { el.setAttribute("data-local", el.textContent); }
      var local = el.getAttribute("data-local");
      var today = local.slice(0, 10) === new Date(now).toISOString().slice(0, 10);
      setText(el, agoText((now - at) / 1000) + " (" + (today ? local.slice(11) : local) + ")");
    }
  }

  // -- live regions ------------------------------------------------------------------
  var main = document.getElementById("main");
  var liveUrl = main && main.getAttribute("data-live");
  var liveStatus = document.getElementById("live-status");
  var banner = document.getElementById("live-banner");
  var timer = null;
  var stopped = false;
  var lastHtml = {};      // what the hub last sent for each region
  var failingSince = null;

  function showBanner(html) {
    if (!banner) { return; }
    banner.innerHTML = html;
    banner.hidden = false;
    if (main) { main.classList.add("stale"); }
  }

  function hideBanner() {
    if (banner) { banner.hidden = true; banner.textContent = ""; }
    if (main) { main.classList.remove("stale"); }
  }

  function sessionEnded() {
    stopped = true;
    var back = encodeURIComponent(window.location.pathname + window.location.search);
    showBanner("Your session has ended. <a href=\"/dashboard/login?next=" + back +
               "\">Log in again</a>; this page is not updated until then.");
    setText(liveStatus, "Live: stopped (session ended)");
  }

  // A text selection inside a region (an id being copied) holds its swap until it is gone.
  function selectionInside(region) {
    var selection = window.getSelection && window.getSelection();
    return selection && !selection.isCollapsed && selection.anchorNode &&
      region.contains(selection.anchorNode);
  }

  // A focused field keeps its region as it is (never pull a half-typed form away); a
  // focused button does not: the region is swapped and the same button focused again.
  function focusKey(region) {
    var active = document.activeElement;
    if (!active || !region.contains(active) || active === region) { return null; }
    if (/^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName) && active.type !== "checkbox") {
      return false;
    }
    var form = active.form;
    return {action: form ? form.getAttribute("action") : null, text: active.textContent,
            id: active.id};
  }

  function restoreFocus(region, key) {
    if (!key) { return; }
    var found = key.id ? document.getElementById(key.id) : null;
    if (!found) {
      var buttons = region.querySelectorAll("button");
      for (var i = 0; i < buttons.length && !found; i++) {
        var form = buttons[i].form;
        if (buttons[i].textContent === key.text &&
            (form ? form.getAttribute("action") : null) === key.action) { found = buttons[i]; }
      }
    }
    if (found) { found.focus(); }
  }

  function swapRegions(regions) {
    Object.keys(regions).forEach(function (id) {
      var region = document.getElementById(id);
      if (!region || regions[id] === lastHtml[id]) { return; }
      var key = focusKey(region);
      // a half-typed field, a selection, or ticked boxes (a bulk action being chosen)
      // keep the region as it is until they are done with
      if (key === false || selectionInside(region) ||
          region.querySelector("input[type=checkbox]:checked")) { return; }
      region.innerHTML = regions[id];
      lastHtml[id] = regions[id];
      drawTimes(region);
      restoreFocus(region, key);
    });
  }

  function refresh() {
    timer = null;
    if (stopped || !liveUrl) { return; }
    // The default cache mode revalidates with the ETag: an unchanged page costs a 304.
    fetch(liveUrl, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (response) {
        if (response.status === 401) { sessionEnded(); return null; }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        if (data && data.regions) {
          swapRegions(data.regions);
          failingSince = null;
          hideBanner();
          setText(liveStatus, "Live: updated " + new Date().toLocaleTimeString());
        }
      })
      .catch(function () {
        if (failingSince === null) { failingSince = new Date(); }
        showBanner("The hub is not answering (since " + failingSince.toLocaleTimeString() +
                   "): what this page shows may be out of date. Retrying…");
        setText(liveStatus, "Live: the hub did not answer; retrying");
      })
      .then(function () { drawTimes(document); schedule(); });
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
  drawTimes(document);
  if (!liveUrl) { window.setInterval(function () { drawTimes(document); }, 10000); }
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
          if (response.status === 401) { sessionEnded(); }
          if (!response.ok) { throw new Error(errorMessage(data, response.status)); }
          setText(result, "Command " + data.id + " (" + data.name + ") queued.");
          refreshSoon();
        });
      })
      .catch(function (error) {
        // fetch itself fails ("Failed to fetch") only when the hub does not answer
        setText(result, error instanceof TypeError
          ? "The hub is not answering: nothing was sent. Try again when it is back."
          : error.message);
      });
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
          var reach = data.progress ? ", for " + data.progress.targets + " device(s)" : "";
          setText(result, "Staged " + data.target + "/" + data.path + " as version " +
                  data.version + reach + (hold && hold.checked ? ", held for a rollout: " +
                  "start it on the package's page." : "."));
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
