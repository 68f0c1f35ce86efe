// Arrow keys in the slot grid, besides Tab: Up and Down move to the day's previous or next
// free time, Left and Right to the free time nearest the same place on the day before or
// after, Home and End to the day's first or last free time. A week holds some 170 times;
// Tab alone would mean as many key presses to reach a Friday. Taken times are disabled
// buttons, so they are skipped, as Tab skips them.
// No inline script: the CSP allows scripts from our origin only.
document.addEventListener("keydown", function (evt) {
  var slot = evt.target;
  if (!slot.matches || !slot.matches("#live .slot") || evt.altKey || evt.ctrlKey || evt.metaKey) return;
  var day = slot.closest(".day");
  var days = Array.prototype.slice.call(document.querySelectorAll("#live .day"));
  function free(d) {
    return Array.prototype.slice.call(d.querySelectorAll(".slot:not([disabled])"));
  }
  var here = free(day);
  var at = here.indexOf(slot);
  var next = null;
  if (evt.key === "ArrowDown") next = here[at + 1];
  else if (evt.key === "ArrowUp") next = here[at - 1];
  else if (evt.key === "Home") next = here[0];
  else if (evt.key === "End") next = here[here.length - 1];
  else if (evt.key === "ArrowRight" || evt.key === "ArrowLeft") {
    var step = evt.key === "ArrowRight" ? 1 : -1;
    var all = Array.prototype.slice.call(day.querySelectorAll(".slot"));
    var place = all.indexOf(slot);
    for (var i = days.indexOf(day) + step; i >= 0 && i < days.length && !next; i += step) {
      var other = Array.prototype.slice.call(days[i].querySelectorAll(".slot"));
      var best = null;
      other.forEach(function (s, j) {
        if (!s.disabled && (best === null || Math.abs(j - place) < Math.abs(best[1] - place))) best = [s, j];
      });
      next = best && best[0];
    }
  } else return;
  evt.preventDefault(); // no page scroll; at the grid's edge the focus stays put
  if (next) next.focus();
});
