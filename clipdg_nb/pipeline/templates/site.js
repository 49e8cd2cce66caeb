// Every page of a report: full-text search, sortable and filterable tables, an "on this page" list
// and figures that fit their cards. The libraries are in clipdg-vendor.js (templates/vendor/:
// Tablesort, MiniSearch, tocbot); this file only wires them to the page. The search index is a
// script (search-index.js: window.CLIPDG_SEARCH = [...]) because a page opened from disk (file://)
// may not fetch() a JSON file.
(function () {
  // Search: MiniSearch over every page's title and text (prefix and slightly fuzzy terms, all required)
  var box = document.querySelector(".clipdg-search");
  var pages = window.CLIPDG_SEARCH || [];
  if (box && (!pages.length || !window.MiniSearch)) {
    box.querySelector("input").placeholder = "search index missing (search-index.js, clipdg-vendor.js)";
    box.querySelector("input").disabled = true;
  } else if (box) {
    var input = box.querySelector("input"), out = box.querySelector(".clipdg-search-results");
    var root = box.getAttribute("data-root") || "";
    // a term keeps its inner = . - _ (fraction=0.1, wise_ft_0.5, a run id); words are prefix- and typo-tolerant,
    // terms with digits or = must match as typed (else fraction=0.1 would find fraction=1)
    var exact = function (t) { return /[\d=]/.test(t); };
    var index = new MiniSearch({
      fields: ["title", "text"], storeFields: ["title", "url", "kind", "text"],
      tokenize: function (text) { return text.split(/[\s,;:!?()\[\]{}"'·\/|<>+*]+/); },
      processTerm: function (t) { return t.toLowerCase().replace(/^[.=_-]+|[.=_-]+$/g, "") || null; },
      searchOptions: {boost: {title: 3}, combineWith: "AND", prefix: true,
                      fuzzy: function (t) { return exact(t) || t.length < 5 ? false : 0.15; }}});
    index.addAll(pages.map(function (p, i) { return Object.assign({id: i}, p); }));
    var snippet = function (text, terms) {  // the text around the first term found
      var lower = text.toLowerCase(), at = -1;
      terms.some(function (t) { at = lower.indexOf(t.toLowerCase()); return at >= 0; });
      return at < 0 ? text.slice(0, 160) : (at > 25 ? "… " : "") + text.slice(Math.max(0, at - 25), at + 140);
    };
    var show = function () {
      out.textContent = "";
      if (!input.value.trim()) { out.hidden = true; return; }
      var hits = index.search(input.value);
      hits.slice(0, 30).forEach(function (h) {
        var a = document.createElement("a"), small = document.createElement("small");
        a.href = root + h.url; a.textContent = h.title;
        small.textContent = h.kind + " · " + snippet(h.text, h.terms);
        a.appendChild(small); out.appendChild(a);
      });
      if (hits.length === 0 || hits.length > 30) {
        var note = document.createElement("div");
        note.className = "clipdg-none";
        note.textContent = hits.length ? (hits.length - 30) + " more: type more words" : "no page matches";
        out.appendChild(note);
      }
      out.hidden = false;
    };
    input.addEventListener("input", show);
    input.addEventListener("focus", show);
    input.addEventListener("keydown", function (e) {
      if (e.key === "Escape") { input.value = ""; show(); input.blur(); }
      if (e.key === "Enter") { var first = out.querySelector("a"); if (first) window.location.href = first.href; }
    });
    document.addEventListener("click", function (e) { if (!box.contains(e.target)) out.hidden = true; });
  }

  // Tables: each scrolls inside its own box (the page never gets wider than the window); a header
  // click sorts (Tablesort); a table of more than 8 rows gets a filter box that hides the rows
  // without the typed text
  document.querySelectorAll(".clipdg-page table, .jp-RenderedHTMLCommon table").forEach(function (table) {
    if (table.closest(".clipdg-search-results, .plotly-graph-div, table.clipdg-table td")) return;
    var wrap = document.createElement("div");
    wrap.className = "clipdg-scroll";
    table.parentNode.insertBefore(wrap, table);
    wrap.appendChild(table);
    var rows = table.tBodies.length ? table.tBodies[0].rows : [];
    if (window.Tablesort && table.tHead && table.tHead.rows.length && rows.length > 1) new Tablesort(table);  // rows keep their order until a click
    if (rows.length > 8) {
      var filter = document.createElement("input");
      filter.type = "search"; filter.className = "clipdg-filter";
      filter.placeholder = "filter these " + rows.length + " rows"; filter.setAttribute("aria-label", "filter the table below");
      filter.addEventListener("input", function () {
        var words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
        Array.prototype.forEach.call(rows, function (row) {
          var text = row.textContent.toLowerCase();
          row.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
        });
      });
      wrap.parentNode.insertBefore(filter, wrap);
    }
  });

  // On this page: a contents list of the h1-h3 headings of a long page (tocbot)
  var content = document.querySelector("main");
  var headings = content ? content.querySelectorAll("h1, h2, h3") : [];
  if (window.tocbot && headings.length >= 6) {
    Array.prototype.forEach.call(headings, function (h, i) { if (!h.id) h.id = "section-" + i; });
    var toc = document.createElement("details");
    toc.className = "clipdg-toc";
    toc.open = window.innerWidth >= 1400;
    toc.innerHTML = "<summary>On this page</summary><div class=\"clipdg-toc-list\"></div>";
    document.body.insertBefore(toc, content);
    document.body.classList.add("clipdg-has-toc");
    tocbot.init({tocSelector: ".clipdg-toc-list", contentSelector: "main", headingSelector: "h1, h2, h3",
                 hasInnerContainers: true, orderedList: false, collapseDepth: 6, scrollSmooth: false,
                 headingsOffset: 60});
  }

  // Figures: plotly draws each figure as its script runs, before the page's layout is final; redraw
  // them at their card's width once the page has loaded, and whenever a card changes size
  if (window.Plotly && window.ResizeObserver) {
    var observer = new ResizeObserver(function (entries) {
      entries.forEach(function (e) {
        if (e.target.offsetParent !== null && e.target._fullLayout) Promise.resolve(Plotly.Plots.resize(e.target)).catch(function () {});
      });
    });
    document.querySelectorAll(".js-plotly-plot, .plotly-graph-div").forEach(function (div) { observer.observe(div); });
  }
})();
