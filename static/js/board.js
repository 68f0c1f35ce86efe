// After the desk moves or cancels the selected bookings, the ones that were dealt with
// are no longer selected: a moved card keeps its checkbox through the live redraw
// (hx-preserve), which would otherwise stay ticked and ride along with the next bulk
// action. Those left for the desk to decide (no free time, refused) stay selected.
// No inline script: the CSP allows scripts from our origin only.
document.addEventListener("htmx:afterSwap", function () {
  var done = document.querySelectorAll("#board-message [data-unselect][data-appointment-id]");
  done.forEach(function (line) {
    var box = document.getElementById("pick-" + line.dataset.appointmentId);
    if (box) box.checked = false;
  });
});
