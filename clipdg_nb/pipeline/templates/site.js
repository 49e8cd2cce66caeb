// Offline search over the report's pages and their parameters. The index is a script
// (search-index.js: window.CLIPDG_SEARCH = [...]) because a page opened from disk (file://)
// may not fetch() a JSON file. Every term typed must appear in a page's title or text.
(function () {
  var box = document.querySelector(".clipdg-search");
  if (!box) return;
  var input = box.querySelector("input"), out = box.querySelector(".clipdg-search-results");
  var root = box.getAttribute("data-root") || "";
  var pages = window.CLIPDG_SEARCH || [];
  if (!pages.length) { input.placeholder = "search index missing (search-index.js)"; input.disabled = true; return; }
  function show() {
    var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    out.textContent = "";
    if (!terms.length) { out.hidden = true; return; }
    var hits = pages.filter(function (p) {
      var text = (p.title + " " + p.text).toLowerCase();
      return terms.every(function (t) { return text.indexOf(t) >= 0; });
    });
    hits.slice(0, 30).forEach(function (p) {
      var a = document.createElement("a"), small = document.createElement("small");
      a.href = root + p.url; a.textContent = p.title;
      small.textContent = p.kind + " · " + p.text;
      a.appendChild(small); out.appendChild(a);
    });
    if (!hits.length) {
      var none = document.createElement("div");
      none.className = "clipdg-none"; none.textContent = "no page matches"; out.appendChild(none);
    } else if (hits.length > 30) {
      var more = document.createElement("div");
      more.className = "clipdg-none"; more.textContent = (hits.length - 30) + " more: type more words"; out.appendChild(more);
    }
    out.hidden = false;
  }
  input.addEventListener("input", show);
  input.addEventListener("focus", show);
  input.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { input.value = ""; show(); input.blur(); }
    if (e.key === "Enter") { var first = out.querySelector("a"); if (first) window.location.href = first.href; }
  });
  document.addEventListener("click", function (e) { if (!box.contains(e.target)) out.hidden = true; });
})();
