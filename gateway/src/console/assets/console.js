// execmesh console: live updates over server-sent events from the gateway. Every page reads and
// every form works without this script; it only saves a reload.
(function () {
  "use strict";
  if (!window.EventSource) {
    return;
  }

  // Lists that change (approvals): reload when the server says something changed, unless the
  // user is typing into a field (a denial reason), in which case the change is announced.
  var live = document.querySelector("[data-live]");
  if (live) {
    var changes = new EventSource(live.getAttribute("data-live"));
    // A form being sent (a decision) goes to its own page: the change it causes must not
    // reload this one under it.
    document.addEventListener("submit", function () {
      changes.close();
    });
    changes.addEventListener("change", function () {
      var active = document.activeElement;
      if (active && active.tagName === "INPUT" && active.value) {
        var note = document.getElementById("live-note");
        if (note) {
          note.hidden = false;
        }
        return;
      }
      changes.close();
      window.location.reload();
    });
  }

  // A running job's output: appended as it arrives, following the tail unless the reader
  // scrolled up.
  var output = document.querySelector("[data-follow]");
  if (output) {
    var stream = new EventSource(output.getAttribute("data-follow"));
    stream.addEventListener("output", function (event) {
      var following = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
      output.appendChild(document.createTextNode(JSON.parse(event.data).text));
      if (following) {
        output.scrollTop = output.scrollHeight;
      }
    });
    stream.addEventListener("exit", function (event) {
      var status = document.getElementById("job-state");
      if (status) {
        status.textContent = JSON.parse(event.data).summary;
      }
      var kill = document.getElementById("kill");
      if (kill) {
        kill.hidden = true;
      }
      stream.close();
    });
  }
})();
