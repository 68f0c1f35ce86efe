// Keyboard focus across htmx swaps (WCAG 2.4.3 focus order, 2.4.7 focus visible).
// 1. What a person asked for takes focus: after a click or a form's submit (Enter and
//    Space on a button are clicks), the swapped-in alert, message or heading is focused,
//    so a screen reader reads it and the next Tab continues from there.
// 2. Nothing else moves focus: a live (websocket) update or a script's refresh that
//    replaces the focused element puts focus back on its successor (the same slot, the
//    same card's button, the same field), or on the nearest thing left to focus.
// Loaded from base.html; no inline script (the CSP allows scripts from our origin only).
(function () {
  var HOLDERS = ["data-slot-start", "data-appointment-id", "data-offer-id", "data-entry-id"];
  var remembered = null;

  function describe(el) {
    if (!el || el === document.body || !el.closest) return null;
    var holder = null;
    for (var i = 0; i < HOLDERS.length && !holder; i++) {
      var h = el.closest("[" + HOLDERS[i] + "]");
      if (h) holder = [HOLDERS[i], h.getAttribute(HOLDERS[i])];
    }
    var scopes = [];
    for (var a = el.parentElement; a; a = a.parentElement) if (a.id) scopes.push(a.id);
    return {
      el: el,
      id: el.id,
      tag: el.tagName,
      name: el.getAttribute("name"),
      text: (el.textContent || "").trim(),
      holder: holder,
      scopes: scopes,
    };
  }

  function focusable(el) {
    return el && !el.disabled && el.getClientRects().length > 0;
  }

  function successor(seen) {
    if (seen.id) {
      var same = document.getElementById(seen.id);
      if (same) return same;
    }
    var scope = null;
    for (var i = 0; i < seen.scopes.length && !scope; i++) {
      scope = document.getElementById(seen.scopes[i]);
    }
    if (!scope) return null;
    var candidates = Array.prototype.slice.call(scope.querySelectorAll(seen.tag));
    if (seen.holder) {
      var sel = "[" + seen.holder[0] + '="' + CSS.escape(seen.holder[1]) + '"]';
      candidates = candidates.filter(function (c) {
        return c.closest(sel);
      });
    }
    // Within its slot or card, the same field (by name) or button (by its words); a slot
    // is its own holder, and its words change with its state ("11:00 taken").
    var same = candidates.filter(function (c) {
      return seen.name ? c.getAttribute("name") === seen.name : (c.textContent || "").trim() === seen.text;
    });
    var match = same[0] || (seen.holder && candidates.length === 1 ? candidates[0] : undefined);
    if (focusable(match)) return match;
    // Gone or disabled (a slot someone else took): the next thing to focus in its place.
    var after = Array.prototype.slice
      .call(scope.querySelectorAll("button, a[href], input, select, textarea"))
      .filter(function (c) {
        return focusable(c) && (!match || match.compareDocumentPosition(c) & Node.DOCUMENT_POSITION_FOLLOWING);
      })[0];
    if (after) return after;
    if (!scope.hasAttribute("tabindex")) scope.setAttribute("tabindex", "-1");
    return scope;
  }

  function remember() {
    remembered = describe(document.activeElement);
  }

  function restore() {
    var seen = remembered;
    remembered = null;
    if (!seen || seen.el.isConnected) return; // focus was not disturbed
    var active = document.activeElement;
    if (active && active !== document.body) return; // it went somewhere on purpose
    var next = successor(seen);
    if (next) next.focus({ preventScroll: true });
  }

  function takeFocus(where) {
    // A field the new content asks to be focused (`autofocus`: a row just added) wins:
    // htmx focuses it while settling, and a heading taken after would steal it back.
    var wanted = where.querySelector("[autofocus]");
    if (wanted && focusable(wanted)) {
      wanted.focus();
      return;
    }
    var target =
      where.querySelector("[role=alert]") ||
      where.querySelector("[role=status]:not(:empty)") ||
      where.querySelector("h1, h2, h3") ||
      ((where.textContent || "").trim() ? where : null);
    if (!target) return;
    if (!target.matches("a[href], button, input, select, textarea, [tabindex]")) {
      target.setAttribute("tabindex", "-1");
    }
    target.focus();
  }

  function asked(detail) {
    var cause = detail.requestConfig && detail.requestConfig.triggeringEvent;
    return cause && (cause.type === "click" || cause.type === "submit");
  }

  document.addEventListener("htmx:wsBeforeMessage", remember);
  document.addEventListener("htmx:wsAfterMessage", restore);
  document.addEventListener("htmx:beforeSwap", remember);
  document.addEventListener("htmx:afterSwap", function (evt) {
    if (!asked(evt.detail)) restore();
  });
  // What a click or submit brought takes focus once settled: htmx wires up the new
  // content (hx-post on a swapped-in form) in its settle step, 20 ms after the swap, and
  // an Enter pressed on a button focused before that would submit the form the plain
  // way (a GET navigation) instead of through htmx.
  document.addEventListener("htmx:afterSettle", function (evt) {
    if (!asked(evt.detail)) return;
    var target = evt.detail.target;
    // An outerHTML swap leaves the old element in the event: look its successor up.
    if (target && !target.isConnected && target.id) target = document.getElementById(target.id);
    if (target) {
      remembered = null;
      takeFocus(target);
    }
  });
})();
