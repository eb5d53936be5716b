// tokenkb's search page on Pagefind's JS API: a query box, facet checkboxes and a result list.
// An empty query with filters lists every matching work (Pagefind's bundled UI needs a query).
// Within one facet the ticked values are alternatives (any of); across facets all must hold.
(function () {
  var root = document.getElementById("tokenkb-search");
  if (!root) { return; }
  var FACETS = ["modality", "family", "training-free", "kind", "year", "venue"];
  var PAGE = 25;
  var base = new URL("../pagefind/", document.currentScript ? document.currentScript.src : location.href);
  var input = document.getElementById("tokenkb-q");
  var panel = document.getElementById("tokenkb-filters");
  var status = document.getElementById("tokenkb-status");
  var list = document.getElementById("tokenkb-results");
  var more = document.getElementById("tokenkb-more");
  var pagefind = null, selected = {}, results = [], shown = 0, token = 0;

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
    var query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
  }

  function renderFacets(counts) {
    panel.textContent = "";
    FACETS.forEach(function (facet) {
      var values = counts[facet] || {};
      var names = Object.keys(values);
      if (!names.length) { return; }
      if (facet === "year") { names.sort().reverse(); } else { names.sort(); }
      var box = el("details", { "class": "tokenkb-facet", "data-facet": facet });
      if (["modality", "training-free", "family"].indexOf(facet) >= 0 || (selected[facet] || []).length) {
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
        label.appendChild(check);
        label.appendChild(document.createTextNode(" " + value + " (" + values[value] + ")"));
        box.appendChild(label);
      });
      panel.appendChild(box);
    });
  }

  // Pagefind ranks by term statistics; a reader who types a nickname or a title wants that
  // work first. The top results are re-ranked: an exact nickname, then titles that start with
  // the phrase, then titles that contain it.
  var RERANK = 60;
  function rerank(term, found) {
    if (!term) { return Promise.resolve(found); }
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
        var item = el("li", { "class": "tokenkb-result" });
        var link = el("a", { href: page.url, "class": "tokenkb-result-link" }, page.meta.title || page.url);
        item.appendChild(link);
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
    var term = input.value.trim() || null;
    var chosen = filters();
    if (!term && !Object.keys(chosen).length) {
      list.textContent = ""; more.hidden = true;
      status.textContent = "Type a query or tick a filter.";
      return pagefind.filters().then(renderFacets);
    }
    return pagefind.search(term, { filters: chosen }).then(function (search) {
      if (mine !== token || search === null) { return; }
      return rerank(term, search.results).then(function (ranked) {
        if (mine !== token) { return; }
        results = ranked; shown = 0; list.textContent = "";
        status.textContent = results.length + (results.length === 1 ? " work" : " works");
        renderFacets(search.filters);
        return showMore();
      });
    });
  }

  var params = new URLSearchParams(location.search);
  params.forEach(function (value, key) {
    if (key === "q") { input.value = value; } else { (selected[key] = selected[key] || []).push(value); }
  });
  var timer = null;
  input.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(run, 200); });
  more.addEventListener("click", showMore);
  import(new URL("pagefind.js", base).href).then(function (module) {
    pagefind = module;
    return pagefind.options({ ranking: { pageLength: 0.1 } });
  }).then(run).then(function () { root.setAttribute("data-ready", "true"); });
})();
