// The booking panel follows its slot: when a live update marks the chosen time as no
// longer free (someone else took it, the doctor went on leave), the panel asks the
// server again, which answers with why and no Confirm button. The reason typed so far
// travels along. No inline script: the CSP allows scripts from our origin only.
document.addEventListener("htmx:oobAfterSwap", function () {
  var panel = document.getElementById("booking-panel");
  var start = panel && panel.dataset.slotStart;
  if (!start) return;
  var slot = document.querySelector('#live .slot[data-slot-start="' + start + '"]');
  if (!slot || slot.dataset.available !== "false") return;
  var reason = panel.querySelector("[name=reason]");
  var url = "/doctors/" + panel.dataset.doctorId + "/book?start=" + encodeURIComponent(start);
  if (panel.dataset.reschedule) url += "&reschedule=" + panel.dataset.reschedule;
  if (panel.dataset.visitType) url += "&visit_type_id=" + panel.dataset.visitType;
  htmx.ajax("GET", url, {
    target: "#booking-panel",
    swap: "outerHTML",
    values: reason && reason.value ? { reason: reason.value } : {},
  });
});
