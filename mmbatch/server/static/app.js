// mmbatch management server: times in the reader's time zone, sortable
// tables and a quick filter. Numbers come from the server as they are.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var d = new Date(el.getAttribute("datetime"));
    if (!isNaN(d.getTime())) {
      el.title = el.textContent;
      el.textContent = d.toLocaleString();
    }
  });
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var asc = th.getAttribute("data-sort") !== "asc";
        table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-sort"); });
        th.setAttribute("data-sort", asc ? "asc" : "desc");
        function key(row) {
          var cell = row.cells[col];
          var n = cell.querySelector("[data-value]");
          var t = cell.querySelector("time");
          if (n && n.getAttribute("data-value") !== "" && !isNaN(Number(n.getAttribute("data-value")))) {
            return Number(n.getAttribute("data-value"));
          }
          if (t) { return t.getAttribute("datetime"); }
          return cell.textContent.toLowerCase();
        }
        rows.sort(function (a, b) {
          var x = key(a), y = key(b);
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll("input.quickfilter").forEach(function (input) {
    input.addEventListener("input", function () {
      var q = input.value.toLowerCase();
      document.querySelectorAll("table.sortable tbody tr").forEach(function (tr) {
        tr.classList.toggle("hidden", q !== "" && tr.textContent.toLowerCase().indexOf(q) < 0);
      });
    });
  });
  document.body.setAttribute("data-js", "ready");
});
