// tokenkb's search page on Pagefind's JS API: a query box, facet checkboxes, a sort order, a
// result list and the BibTeX of the results. An empty query with filters lists every matching
// work (Pagefind's bundled UI needs a query). Within one facet the ticked values are
// alternatives (any of); across facets all must hold. The page's URL always holds the search
// (q, facets, sort), so a link restores it, facets and all.
(function () {
  var root = document.getElementById("tokenkb-search");
  if (!root) { return; }
  var FACETS = ["modality", "family", "training-free", "kind", "year", "venue"];
  var OPEN = ["modality", "family", "training-free"];
  var SORTS = { "year": { year: "desc" }, "year-asc": { year: "asc" }, "title": { title: "asc" } };
  var PAGE = 25;
  var base = new URL("../pagefind/", document.currentScript ? document.currentScript.src : location.href);
  var input = document.getElementById("tokenkb-q");
  var sortBox = document.getElementById("tokenkb-sort");
  var panel = document.getElementById("tokenkb-filters");
  var status = document.getElementById("tokenkb-status");
  var list = document.getElementById("tokenkb-results");
  var more = document.getElementById("tokenkb-more");
  var bibButton = document.getElementById("tokenkb-bib");
  var bibBox = document.getElementById("tokenkb-bibtex");
  var pagefind = null, allCounts = {}, selected = {}, results = [], shown = 0, token = 0;
  var isPhone = window.matchMedia("(max-width: 700px)");

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }  // text only: never innerHTML
    return node;
  }

  function filters() {
    var out = {};
    Object.keys(selected).forEach(function (facet) {
      if (selected[facet].length) { out[facet] = { any: selected[facet].slice() }; }
    });
    return out;
  }

  function syncUrl() {
    var params = new URLSearchParams();
    if (input.value.trim()) { params.set("q", input.value.trim()); }
    Object.keys(selected).forEach(function (f) { selected[f].forEach(function (v) { params.append(f, v); }); });
    if (sortBox.value) { params.set("sort", sortBox.value); }
    var query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
  }

  // Every facet and value of the whole base is shown, whatever the search: `counts` (the
  // current result set's) gives the numbers, and values it lacks show 0.
  function renderFacets(counts) {
    panel.textContent = "";
    FACETS.forEach(function (facet) {
      var values = allCounts[facet] || {};
      var names = Object.keys(values);
      (selected[facet] || []).forEach(function (v) { if (names.indexOf(v) < 0) { names.push(v); } });
      if (!names.length) { return; }
      if (facet === "year") { names.sort().reverse(); } else { names.sort(); }
      var box = el("details", { "class": "tokenkb-facet", "data-facet": facet });
      if ((!isPhone.matches && OPEN.indexOf(facet) >= 0) || (selected[facet] || []).length) {
        box.setAttribute("open", "");
      }
      box.appendChild(el("summary", {}, facet));
      names.forEach(function (value) {
        var label = el("label");
        var check = el("input", { type: "checkbox", value: value, name: facet });
        check.checked = (selected[facet] || []).indexOf(value) >= 0;
        check.addEventListener("change", function () {
          var chosen = selected[facet] = selected[facet] || [];
          var at = chosen.indexOf(value);
          if (check.checked && at < 0) { chosen.push(value); }
          if (!check.checked && at >= 0) { chosen.splice(at, 1); }
          run();
        });
        var n = counts && counts[facet] ? counts[facet][value] || 0 : values[value] || 0;
        label.appendChild(check);
        label.appendChild(document.createTextNode(" " + value + " (" + n + ")"));
        box.appendChild(label);
      });
      panel.appendChild(box);
    });
  }

  // Pagefind ranks by term statistics; a reader who types a nickname or a title wants that
  // work first. The top results are re-ranked: an exact nickname, then titles that start with
  // the phrase, then titles that contain it. Not when the reader chose an order.
  var RERANK = 60;
  function rerank(term, found) {
    if (!term || sortBox.value) { return Promise.resolve(found); }
    var phrase = term.toLowerCase();
    var head = found.slice(0, RERANK);
    return Promise.all(head.map(function (r) { return r.data(); })).then(function (pages) {
      var scored = head.map(function (r, i) {
        var page = pages[i];
        var title = (page.meta.title || "").toLowerCase();
        var aliases = (page.meta.aliases || "").toLowerCase().split(", ");
        var at = title.indexOf(phrase);
        var rank = aliases.indexOf(phrase) >= 0 ? 0 : at === 0 ? 1 : at > 0 ? 2 : 3;
        return { r: r, rank: rank, i: i };
      });
      scored.sort(function (a, b) { return a.rank - b.rank || a.i - b.i; });
      return scored.map(function (s) { return s.r; }).concat(found.slice(RERANK));
    });
  }

  function showMore() {
    var mine = token;
    var slice = results.slice(shown, shown + PAGE);
    shown += slice.length;
    more.hidden = shown >= results.length;
    return Promise.all(slice.map(function (r) { return r.data(); })).then(function (pages) {
      if (mine !== token) { return; }
      pages.forEach(function (page) {
        var item = el("li", { "class": "tokenkb-result", "data-year": page.meta.year || "" });
        item.appendChild(el("a", { href: page.url, "class": "tokenkb-result-link" }, page.meta.title || page.url));
        var facts = [page.meta.venue, page.meta.year].filter(function (x) { return x; });
        if (page.meta.venue && page.meta.year && page.meta.venue.indexOf(page.meta.year) >= 0) { facts = [page.meta.venue]; }
        if (facts.length) { item.appendChild(el("div", { "class": "tokenkb-result-meta" }, facts.join(" · "))); }
        var excerpt = el("p", { "class": "tokenkb-excerpt" });
        excerpt.textContent = (page.excerpt || "").replace(/<[^>]*>/g, "");
        item.appendChild(excerpt);
        list.appendChild(item);
      });
    });
  }

  function run() {
    var mine = ++token;
    syncUrl();
    bibBox.hidden = true;
    var term = input.value.trim() || null;
    var chosen = filters();
    if (!term && !Object.keys(chosen).length) {
      list.textContent = ""; more.hidden = true; bibButton.hidden = true; results = [];
      status.textContent = "Type a query or tick a filter.";
      renderFacets(null);
      return Promise.resolve();
    }
    // Filter-only results have no relevance: newest first unless the reader chose an order.
    var sort = SORTS[sortBox.value] || (term ? null : SORTS.year);
    var options = { filters: chosen };
    if (sort) { options.sort = sort; }
    return pagefind.search(term, options).then(function (search) {
      if (mine !== token || search === null) { return; }
      return rerank(term, search.results).then(function (ranked) {
        if (mine !== token) { return; }
        results = ranked; shown = 0; list.textContent = "";
        status.textContent = results.length + (results.length === 1 ? " work" : " works");
        bibButton.hidden = results.length === 0;
        bibButton.textContent = "BibTeX of " + (results.length === 1 ? "this work" : "these " + results.length + " works");
        renderFacets(search.filters);
        return showMore();
      });
    });
  }

  // The BibTeX of the whole result set (not only the shown page), cut from papers.bib, whose
  // keys are the record ids, which are the pages' names. Fetched only when asked for.
  var bib = null;
  function showBibtex() {
    var mine = token;
    bib = bib || fetch(new URL("../papers.bib", base).href).then(function (r) { return r.text(); });
    Promise.all([bib, Promise.all(results.map(function (r) { return r.data(); }))]).then(function (got) {
      if (mine !== token) { return; }
      var entries = {};
      got[0].split(/\n(?=@)/).forEach(function (block) {
        var m = /^@\w+\{([^,\s]+),/.exec(block.trim());
        if (m) { entries[m[1]] = block.trim(); }
      });
      var text = got[1].map(function (page) {
        var id = page.url.replace(/\/$/, "").split("/").pop();
        return entries[id] || "";
      }).filter(function (x) { return x; }).join("\n\n");
      bibBox.value = text + "\n";
      bibBox.hidden = false;
    });
  }

  var params = new URLSearchParams(location.search);
  params.forEach(function (value, key) {
    if (key === "q") { input.value = value; }
    else if (key === "sort") { sortBox.value = SORTS[value] ? value : ""; }
    else { (selected[key] = selected[key] || []).push(value); }
  });
  var timer = null;
  input.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(run, 200); });
  sortBox.addEventListener("change", run);
  more.addEventListener("click", showMore);
  bibButton.addEventListener("click", showBibtex);
  import(new URL("pagefind.js", base).href).then(function (module) {
    pagefind = module;
    return pagefind.options({ ranking: { pageLength: 0.1 } });
  }).then(function () {
    return pagefind.filters();
  }).then(function (counts) {
    allCounts = counts;
    return run();
  }).then(function () { root.setAttribute("data-ready", "true"); });
})();
