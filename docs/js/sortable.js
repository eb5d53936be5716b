// Sort any <table class="sortable"> by a column: each header holds a button (reachable by
// keyboard); the header's aria-sort says the order. Numbers sort numerically.
// Written for tokenkb; no dependencies, nothing fetched.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.querySelectorAll("thead th");
    headers.forEach(function (th, column) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "tokenkb-sort";
      while (th.firstChild) { button.appendChild(th.firstChild); }
      th.appendChild(button);
      button.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        rows.sort(function (a, b) {
          var x = a.cells[column].textContent.trim();
          var y = b.cells[column].textContent.trim();
          var nx = parseFloat(x), ny = parseFloat(y);
          var order = !isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y);
          return ascending ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
});

// A table that scrolls sideways can be scrolled from the keyboard: the box that scrolls (the
// wrapper, or material's table itself) takes focus, and only when it does overflow.
document.addEventListener("DOMContentLoaded", function () {
  var boxes = document.querySelectorAll(".tokenkb-table-scroll, .md-typeset__scrollwrap, .md-typeset__table > table");
  boxes.forEach(function (box) {
    if (box.scrollWidth <= box.clientWidth) { return; }
    box.setAttribute("tabindex", "0");
    if (box.tagName !== "TABLE") {
      box.setAttribute("role", "region");
      box.setAttribute("aria-label", "Table (scrolls sideways)");
    }
  });
});
