// Says politely what a live update changed in the slot grid ("09:30 is no longer
// available"), once per change: the grid is compared before and after each websocket
// message, so an identical push or a resync after reconnecting says nothing. The words
// come from the page (#live-announcer's data-gone and data-free, rendered by the
// template, translatable there); this script only puts the time in.
// No inline script: the CSP allows scripts from our origin only.
(function () {
  // Times that stop being bookable only because the clock moved on are not news.
  var CLOCK_STATES = ["past", "too_soon"];
  var before = null;

  function grid(root) {
    var seen = {};
    root.querySelectorAll(".slot[data-slot-start]").forEach(function (slot) {
      seen[slot.dataset.slotStart] = slot;
    });
    return seen;
  }

  function states(root) {
    var seen = grid(root);
    var free = {};
    Object.keys(seen).forEach(function (start) {
      free[start] = seen[start].dataset.available === "true";
    });
    return free;
  }

  document.addEventListener("htmx:wsBeforeMessage", function (evt) {
    before = document.getElementById("live-announcer") ? states(evt.target) : null;
  });

  document.addEventListener("htmx:wsAfterMessage", function (evt) {
    var region = document.getElementById("live-announcer");
    if (!region || !before) return;
    var now = grid(evt.target);
    var panel = document.getElementById("booking-panel");
    var chosen = panel && panel.dataset.slotStart; // the panel itself says so (role=alert)
    var lines = [];
    Object.keys(now)
      .sort()
      .forEach(function (start) {
        if (!(start in before) || start === chosen) return;
        var slot = now[start];
        var free = slot.dataset.available === "true";
        if (free === before[start]) return;
        if (!free && CLOCK_STATES.indexOf(slot.dataset.state) >= 0) return;
        var words = free ? region.dataset.free : region.dataset.gone;
        lines.push(words.replace("{time}", slot.dataset.label || start));
      });
    before = null;
    if (lines.length) region.textContent = lines.join(" ");
  });
})();
