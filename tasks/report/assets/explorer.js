// layerdrift explorer: plain JavaScript over the JSON inlined in #explorer-data, drawing SVG
// and HTML. No libraries, no network. The URL fragment holds the view and its selection.
"use strict";
(() => {
  const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const COLOURS = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377",
    "#bbbbbb", "#000000", "#ee7733", "#0077bb"];
  const SOURCES = { base_sae: "base SAE", finetuned_sae: "fine-tuned SAE", crosscoder: "crosscoder" };
  const PAGE_ROWS = 100;
  const GROUPS = Object.fromEntries(DATA.groups.map((g) => [g.name, g]));
  const tip = document.getElementById("tooltip");
  let state = {};

  // ---- small helpers -------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else if (k === "text") node.textContent = v;
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  function sv(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function decode(p) {
    const bin = atob(p.b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const T = { uint8: Uint8Array, uint16: Uint16Array, int32: Int32Array }[p.dtype];
    return new T(bytes.buffer);
  }
  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (Number.isInteger(v)) return String(v);
    return v.toFixed(4);
  }
  const fixed = (v) => (v === null || v === undefined ? "–" : v.toFixed(4));  // a float, even 1
  function showTip(event, text) {
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = event.clientX + 12 + "px";
    tip.style.top = event.clientY + 12 + "px";
  }
  function hideTip() { tip.hidden = true; }
  function hover(node, text) {
    node.addEventListener("mouseenter", (e) => showTip(e, text));
    node.addEventListener("mousemove", (e) => showTip(e, text));
    node.addEventListener("mouseleave", hideTip);
    return node;
  }
  function choices(labels, current, onPick, names) {
    return el("div", { class: "choices" }, labels.map((label) => el("button", {
      class: String(label) === String(current) ? "on" : null, "data-choice": label,
      on: { click: () => onPick(label) }, text: names ? names(label) : String(label),
    })));
  }
  function labelName(i) {
    const names = DATA.run.label_names;
    return i >= 0 && i < names.length ? names[i] : String(i);
  }

  // ---- results groups: values by labels ------------------------------------------------
  function strides(g) {
    const out = new Array(g.dims.length);
    let s = 1;
    for (let i = g.dims.length - 1; i >= 0; i--) { out[i] = s; s *= g.coords[g.dims[i]].length; }
    return out;
  }
  function valueAt(g, labels) {
    const st = strides(g);
    let flat = 0;
    for (let i = 0; i < g.dims.length; i++) {
      const pos = g.coords[g.dims[i]].findIndex((v) => String(v) === String(labels[g.dims[i]]));
      if (pos < 0) return null;
      flat += pos * st[i];
    }
    return g.values[flat];
  }
  function combos(g, dims) {
    let out = [{}];
    for (const d of dims) {
      const next = [];
      for (const c of out) for (const v of g.coords[d]) next.push({ ...c, [d]: v });
      out = next;
    }
    return out;
  }
  const FACETS = ["metric", "quantity"];
  const isCurve = (g) => g.dims.includes("layer") && !g.dims.includes("bin") &&
    !g.dims.includes("layer_other") && !g.dims.includes("bound");
  const facetOf = (g) => g.dims.find((d) => FACETS.includes(d)) || null;

  // ---- state and the URL fragment -----------------------------------------------------
  function readHash() {
    state = Object.fromEntries(new URLSearchParams(location.hash.slice(1)));
  }
  function go(patch) {
    state = { ...state, ...patch };
    for (const k of Object.keys(state)) if (state[k] === null || state[k] === undefined) delete state[k];
    history.replaceState(null, "", "#" + new URLSearchParams(state).toString());
    render();
  }

  // ---- chart ----------------------------------------------------------------------------
  function lineChart(xs, series, ylabel) {
    const W = 840, H = 380, L = 76, R = 230, T = 16, B = 42;
    const all = series.flatMap((s) => s.ys.concat(s.lo || [], s.hi || [])).filter((v) => v !== null);
    let lo = Math.min(...all), hi = Math.max(...all);
    if (!all.length) { lo = 0; hi = 1; }
    if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.06; lo -= pad; hi += pad;
    const xmin = Math.min(...xs), xmax = Math.max(...xs);
    const x = (v) => L + (xmax === xmin ? 0.5 : (v - xmin) / (xmax - xmin)) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const root = sv("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H });
    root.append(sv("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    root.append(sv("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    for (const v of xs) {
      root.append(sv("text", { x: x(v), y: H - B + 16, "text-anchor": "middle" }, String(v)));
    }
    root.append(sv("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, "layer"));
    const digits = hi - lo > 50 ? 0 : hi - lo > 2 ? 2 : 3;
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      root.append(sv("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(digits)));
      root.append(sv("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eee" }));
    }
    root.append(sv("text", { x: 12, y: T + (H - T - B) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${T + (H - T - B) / 2})` }, ylabel));
    // The pointer picks the nearest visible point (points of several series often overlap).
    const points = [];
    // Bands first, under every line, and transparent to the pointer.
    const bands = series.map((s, k) => {
      const band = sv("g", { class: "bands", "data-series": s.name, "pointer-events": "none" });
      if (s.lo && s.hi) {
        const top = xs.map((v, i) => [v, s.hi[i]]).filter((p) => p[1] !== null);
        const bottom = xs.map((v, i) => [v, s.lo[i]]).filter((p) => p[1] !== null).reverse();
        if (top.length) {
          const pts = top.concat(bottom).map(([a, b]) => `${x(a)},${y(b)}`).join(" ");
          const colour = COLOURS[k % COLOURS.length];
          band.append(sv("polygon", { class: "band", points: pts, fill: colour, opacity: 0.18 }));
        }
      }
      root.append(band);
      return band;
    });
    series.forEach((s, k) => {
      const colour = COLOURS[k % COLOURS.length];
      const g = sv("g", { "data-series": s.name });
      const pts = xs.map((v, i) => [v, s.ys[i]]).filter((p) => p[1] !== null);
      g.append(sv("polyline", { points: pts.map(([a, b]) => `${x(a)},${y(b)}`).join(" "),
        fill: "none", stroke: colour, "pointer-events": "none", "stroke-width": 2, "stroke-dasharray": s.dash ? "5 4" : "" }));
      for (const [i, v] of xs.entries()) {
        if (s.ys[i] === null) continue;
        let text = `${s.name} · layer ${v}: ${fmt(s.ys[i])}`;
        if (s.lo && s.hi && s.lo[i] !== null) text += ` (interval ${fmt(s.lo[i])} – ${fmt(s.hi[i])})`;
        const dot = sv("circle", { cx: x(v), cy: y(s.ys[i]), r: 4, fill: colour, "pointer-events": "none",
          "data-series": s.name, "data-x": v, "data-value": s.ys[i] });
        points.push({ dot, group: g, text, px: x(v), py: y(s.ys[i]) });
        g.append(dot);
      }
      root.append(g);
      const ly = T + 14 + k * 18;
      const item = sv("g", { class: "legend", "data-series": s.name });
      item.append(sv("rect", { x: W - R + 14, y: ly - 9, width: 12, height: 12, fill: colour }));
      item.append(sv("text", { x: W - R + 32, y: ly + 1 }, s.name));
      item.addEventListener("click", () => {
        for (const part of [g, bands[k], item]) part.classList.toggle("off");
      });
      root.append(item);
    });
    const area = sv("rect", { x: L - 8, y: T - 8, width: W - L - R + 16, height: H - T - B + 16,
      fill: "transparent", class: "hover-area" });
    let lit = null;
    const pick = (event) => {
      const box = root.getBoundingClientRect();
      const scale = W / box.width;
      const mx = (event.clientX - box.left) * scale, my = (event.clientY - box.top) * scale;
      let best = null, dist = 24;
      for (const p of points) {
        if (p.group.classList.contains("off")) continue;
        const d = Math.hypot(p.px - mx, p.py - my);
        if (d < dist) { best = p; dist = d; }
      }
      if (lit && lit !== best) lit.dot.setAttribute("r", 4);
      lit = best;
      if (!best) { hideTip(); return; }
      best.dot.setAttribute("r", 6);
      showTip(event, best.text);
    };
    area.addEventListener("mousemove", pick);
    area.addEventListener("mouseenter", pick);
    area.addEventListener("mouseleave", () => { if (lit) lit.dot.setAttribute("r", 4); lit = null; hideTip(); });
    root.append(area);
    return root;
  }

  // ---- view: curves ------------------------------------------------------------------
  function curveSeries(g, facet, facetLabel) {
    const layers = g.coords.layer;
    const rest = g.dims.filter((d) => d !== "layer" && d !== facet);
    const ci = GROUPS[g.name + "_ci"];
    return combos(g, rest).map((c) => {
      const at = (extra) => layers.map((l) => {
        const v = valueAt(extra.group, { ...c, ...extra.labels, layer: l });
        return v === undefined ? null : v;
      });
      const labels = facet ? { [facet]: facetLabel } : {};
      const s = { name: rest.map((d) => c[d]).join(" · ") || g.name, ys: at({ group: g, labels }) };
      if (ci && ci.dims.includes("bound")) {
        s.lo = at({ group: ci, labels: { ...labels, bound: "low" } });
        s.hi = at({ group: ci, labels: { ...labels, bound: "high" } });
        if (s.lo.every((v) => v === null)) { delete s.lo; delete s.hi; }
      }
      return s;
    }).filter((s) => s.ys.some((v) => v !== null));
  }
  function viewCurves(main) {
    const groups = DATA.groups.filter(isCurve);
    if (!groups.length) { main.append(el("p", { text: "No per-layer results in this run." })); return; }
    const g = GROUPS[state.group] && isCurve(GROUPS[state.group]) ? GROUPS[state.group]
      : GROUPS.similarity || groups[0];
    const facet = facetOf(g);
    const facetLabels = facet ? g.coords[facet] : [];
    const facetLabel = facetLabels.includes(state.facet) ? state.facet : facetLabels[0];
    const side = el("div", { class: "side" }, el("h3", { text: "Results groups" }),
      groups.map((h) => el("button", { class: h === g ? "on" : null, "data-group": h.name,
        on: { click: () => go({ group: h.name, facet: null }) }, text: h.name })));
    const panel = el("div", { class: "grow panel", id: "curve-panel" },
      el("h2", { text: g.name + (facet ? ": " + facetLabel : "") }),
      el("p", { class: "muted small", text: `${g.description} (${g.stage || "?"} stage; dims ${g.dims.join(" × ")})` }),
      facet ? choices(facetLabels, facetLabel, (v) => go({ facet: v })) : null,
      lineChart(g.coords.layer, curveSeries(g, facet, facetLabel), facet ? facetLabel : g.name),
      el("p", { class: "muted small", text: "Hover a point for its value; click a legend entry to hide its line." +
        (GROUPS[g.name + "_ci"] ? " Shaded bands: the interval from " + g.name + "_ci." : "") }));
    main.append(el("div", { class: "layout" }, side, panel));
  }

  // ---- view: tokens --------------------------------------------------------------------
  const probe = DATA.probe;
  let driftQ = null, tokenStart = null, exampleIndex = null;
  function prepareProbe() {
    if (!probe || tokenStart) return;
    tokenStart = [];
    let s = 0;
    for (const c of probe.examples.count) { tokenStart.push(s); s += c; }
    exampleIndex = new Map(probe.examples.id.map((id, i) => [id, i]));
    if (probe.drift) driftQ = decode(probe.drift.q);
  }
  function driftAt(ci, li, token) {
    const d = probe.drift;
    const n = probe.tokens.length;
    return driftQ[(ci * d.layers.length + li) * n + token];
  }
  function tokenSpan(text, alpha, rgb, value, extra) {
    return el("span", { class: "tok" + (extra || ""), style: `background:rgba(${rgb},${alpha.toFixed(3)})`,
      "data-value": value, title: fmt(value) }, text);
  }
  function predictionTable(i) {
    const pred = probe.predictions;
    if (!pred) return el("p", { class: "muted", text: "No checkpoint folders: no predictions." });
    const label = probe.examples.label[i];
    const rows = pred.checkpoints.map((c, k) => {
      const p = pred.p[k][i];
      const best = p.indexOf(Math.max(...p));
      return el("tr", { "data-checkpoint": c }, el("td", { text: c }), el("td", { text: labelName(best) }),
        el("td", { text: p[best].toFixed(3) }),
        el("td", { class: best === label ? "ok" : "bad", text: best === label ? "right" : "wrong" }));
    });
    const note = pred.checkpoints.includes(DATA.run.base) ?
      `The ${DATA.run.base} checkpoint's classification head is untrained: its predictions are chance.` : "";
    return el("div", {}, el("table", { class: "rows", id: "predictions" },
      el("thead", {}, el("tr", {}, ["checkpoint", "prediction", "probability", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows)), el("p", { class: "muted small", text: note }));
  }
  function driftGrid(i, checkpoint, own) {
    const d = probe.drift;
    const ci = d.checkpoints.indexOf(checkpoint);
    const start = tokenStart[i], count = probe.examples.count[i];
    let top = 255;
    if (own) {
      top = 1;
      for (let li = 0; li < d.layers.length; li++) for (let t = 0; t < count; t++) top = Math.max(top, driftAt(ci, li, start + t));
    }
    const head = el("tr", {}, el("th", { text: "layer \\ token" }),
      Array.from({ length: count }, (_, t) => el("th", { class: "muted", text: String(t) })));
    const rows = d.layers.map((layer, li) => el("tr", { "data-layer": layer }, el("th", { text: String(layer) }),
      Array.from({ length: count }, (_, t) => {
        const q = driftAt(ci, li, start + t);
        const value = (q / 255) * d.scale;
        const cell = el("td", { class: "cell", "data-q": q, "data-value": value,
          style: `background:rgba(214,39,40,${(q / top).toFixed(3)})` }, probe.tokens[start + t]);
        return hover(cell, `layer ${layer} · “${probe.tokens[start + t]}” · drift ${fmt(value)}`);
      })));
    return el("div", { class: "scroll" }, el("table", { class: "grid", id: "drift-grid" },
      el("thead", {}, head), el("tbody", {}, rows)));
  }
  function viewTokens(main) {
    if (!probe) { main.append(el("p", { text: "No activation store: no probe tokens." })); return; }
    prepareProbe();
    const query = state.q || "";
    const list = el("ul", { id: "search-results" });
    const fill = (text) => {
      list.replaceChildren();
      const needle = text.toLowerCase();
      let shown = 0;
      for (let i = 0; i < probe.examples.id.length && shown < 50; i++) {
        if (needle && !probe.examples.text[i].toLowerCase().includes(needle)) continue;
        const id = probe.examples.id[i];
        list.append(el("li", { "data-example": id, class: String(id) === state.example ? "chosen" : null,
          on: { click: () => go({ example: id }) } },
        el("b", { text: `#${id} ` }), `(${labelName(probe.examples.label[i])}) `, probe.examples.text[i]));
        shown++;
      }
      if (!shown) list.append(el("li", { class: "muted", text: "no example contains this text" }));
    };
    const box = el("input", { type: "search", id: "token-search", placeholder: "search probe texts", value: query,
      on: { input: (e) => { state.q = e.target.value; history.replaceState(null, "", "#" + new URLSearchParams(state)); fill(e.target.value); } } });
    fill(query);
    const side = el("div", { class: "side", style: "flex-basis:340px" }, el("h3", { text: "Probe examples" }),
      box, list, probe.subsampled ? el("p", { class: "muted small", text: "Subsampled: see the rules below." }) : null);
    const panel = el("div", { class: "grow panel", id: "token-panel" });
    const i = exampleIndex.get(Number(state.example));
    if (i === undefined) {
      panel.append(el("p", { class: "muted", text: "Search and pick an example to see its tokens across layers." }));
    } else {
      const id = probe.examples.id[i];
      panel.append(el("h2", { text: `example ${id} · label ${labelName(probe.examples.label[i])}` }),
        el("p", { class: "example", id: "example-text", text: probe.examples.text[i] }), predictionTable(i));
      if (probe.drift) {
        const ckpts = probe.drift.checkpoints;
        const chosen = ckpts.includes(state.checkpoint) ? state.checkpoint : ckpts[ckpts.length - 1];
        const own = state.scale === "example";
        panel.append(el("h3", { text: `Drift at ${chosen} (1 − cosine to base), token × layer` }),
          choices(ckpts, chosen, (c) => go({ checkpoint: c })), driftGrid(i, chosen, own),
          el("div", { class: "small" }, "colour scale ", choices(["run", "example"], own ? "example" : "run",
            (v) => go({ scale: v === "example" ? "example" : null }))),
          el("p", { class: "muted small", text: own ? "Colour: darkest = this example's largest drift at this checkpoint; hover a cell for its value."
            : `Colour: drift on one scale for the run (darkest = ${fmt(probe.drift.scale)}); hover a cell for its value.` }));
      }
    }
    main.append(el("div", { class: "layout" }, side, panel));
  }

  // ---- view: latents -------------------------------------------------------------------
  const LAT = DATA.latents;
  const decoded = new Map();
  function tableOf(source, layer) {
    return LAT.tables.find((t) => t.source === source && String(t.layer) === String(layer));
  }
  function arrays(t) {
    if (!decoded.has(t)) {
      decoded.set(t, { examples: decode(t.examples), peaks: decode(t.peaks), windows: decode(t.windows), hist: decode(t.hist) });
    }
    return decoded.get(t);
  }
  function aurocText(a) {
    if (a === null) return "AUROC –";
    const specific = a >= LAT.auroc_high || a <= LAT.auroc_low;
    return `AUROC ${a.toFixed(3)} (${specific ? "task-specific" : "not task-specific"}: the thresholds are ≥ ${LAT.auroc_high} or ≤ ${LAT.auroc_low})`;
  }
  const SORTS = {
    latent: (t, j) => j, auroc: (t, j) => t.auroc[j], task: (t, j) => t.auroc[j] === null ? null : Math.abs(t.auroc[j] - 0.5),
    density: (t, j) => t.density[j], max: (t, j) => t.max[j], group: (t, j) => t.group ? t.group[j] : null,
    relative_norm: (t, j) => t.relative_norm ? t.relative_norm[j] : null,
    partner_cosine: (t, j) => t.partner_cosine ? t.partner_cosine[j] : null,
  };
  function latentRows(t) {
    const key = SORTS[state.sort] ? state.sort : "task";
    const dir = state.dir === "asc" ? 1 : -1;
    let idx = Array.from({ length: t.d_sae }, (_, j) => j);
    if (state.dead !== "show") idx = idx.filter((j) => t.density[j] > 0);
    const v = (j) => SORTS[key](t, j);
    idx.sort((a, b) => {
      const va = v(a), vb = v(b);
      if (va === null && vb === null) return a - b;
      if (va === null) return 1;
      if (vb === null) return -1;
      return va === vb ? a - b : (va - vb) * dir;
    });
    return { idx, key };
  }
  function exampleLine(t, a, j, slot) {
    prepareProbe();
    const k = a.examples.length / t.d_sae;
    const e = a.examples[j * k + slot];
    if (e < 0) return null;
    const i = exampleIndex.get(e);
    const peak = a.peaks[j * k + slot];
    const w = 2 * LAT.context + 1;
    const count = probe.examples.count[i];
    const maxAct = t.max[j] || 0;
    const spans = peak - LAT.context > 0 ? ["… "] : [];
    for (let o = -LAT.context; o <= LAT.context; o++) {
      const pos = peak + o;
      if (pos < 0 || pos >= count) continue;
      const q = a.windows[(j * k + slot) * w + o + LAT.context];
      const value = (q / 255) * maxAct;
      spans.push(tokenSpan(probe.tokens[tokenStart[i] + pos], q / 255, "31,119,180", value, o === 0 ? " peak" : ""), " ");
    }
    if (peak + LAT.context < count - 1) spans.push("…");
    return el("div", { class: "example", "data-example": e },
      el("a", { class: "link", on: { click: () => go({ view: "tokens", example: e }) }, text: `example ${e}` }),
      ` (${labelName(probe.examples.label[i])}, max ${fmt((a.windows[(j * k + slot) * w + LAT.context] / 255) * maxAct)}): `,
      spans);
  }
  function histogram(t, a, j) {
    const bins = LAT.hist_bins, W = 360, H = 120, L = 40, B = 22;
    const counts = Array.from(a.hist.slice(j * bins, (j + 1) * bins));
    const top = Math.max(1, ...counts);
    const root = sv("svg", { class: "chart", id: "latent-hist", viewBox: `0 0 ${W} ${H}`, width: W, height: H });
    const bw = (W - L - 8) / bins;
    counts.forEach((c, b) => {
      const h = (c / top) * (H - B - 8);
      const lo = (b / bins) * t.max[j], hi = ((b + 1) / bins) * t.max[j];
      root.append(hover(sv("rect", { x: L + b * bw, y: H - B - h, width: bw - 1, height: h, fill: "#1f77b4", "data-count": c }),
        `${fmt(lo)} – ${fmt(hi)}: ${c} tokens`));
    });
    root.append(sv("line", { class: "axis", x1: L, x2: W - 8, y1: H - B, y2: H - B }));
    root.append(sv("text", { x: L, y: H - 6 }, "0"));
    root.append(sv("text", { x: W - 8, y: H - 6, "text-anchor": "end" }, fmt(t.max[j])));
    root.append(sv("text", { x: L - 4, y: 12, "text-anchor": "end" }, String(top)));
    return root;
  }
  function latentDetail(t, j) {
    const a = arrays(t);
    const box = el("div", { class: "panel", id: "latent-detail", "data-latent": j });
    box.append(el("h2", { text: `layer ${t.layer} · ${SOURCES[t.source]} latent ${j}` }),
      el("p", { text: `${aurocText(t.auroc[j])} · fires on ${(100 * t.density[j]).toFixed(2)}% of tokens · max ${fmt(t.max[j])}` }));
    if (t.group) {
      box.append(el("p", { text: `crosscoder group ${LAT.groups[t.group[j]]} · relative decoder norm (fine-tuned share) ${fixed(t.relative_norm[j])}` }));
    }
    if (t.partner) {
      const other = t.source === "base_sae" ? "finetuned_sae" : "base_sae";
      const p = t.partner[j];
      box.append(el("p", { id: "partner" }, "partner: ",
        el("a", { class: "link", on: { click: () => go({ source: other, latent: p }) }, text: `${SOURCES[other]} latent ${p}` }),
        ` (decoder cosine ${fixed(t.partner_cosine[j])})`));
    }
    box.append(el("h3", { text: "Activation histogram (active tokens)" }), histogram(t, a, j));
    if (probe) {
      const k = a.examples.length / t.d_sae;
      const top = [], bottom = [];
      for (let s = 0; s < k; s++) (s < LAT.top ? top : bottom).push(exampleLine(t, a, j, s));
      box.append(el("h3", { text: "Top examples" }), el("div", { id: "top-examples" }, top.filter(Boolean)),
        el("h3", { text: "Bottom examples (weakest non-zero maximum)" }), el("div", { id: "bottom-examples" }, bottom.filter(Boolean)));
    }
    return box;
  }
  function viewLatents(main) {
    if (!LAT.tables.length) { main.append(el("p", { text: "No SAEs or crosscoders in this run." })); return; }
    const sources = Object.keys(SOURCES).filter((s) => LAT.tables.some((t) => t.source === s));
    const source = sources.includes(state.source) ? state.source : sources[0];
    const layers = LAT.tables.filter((t) => t.source === source).map((t) => t.layer);
    const layer = layers.map(String).includes(state.layer) ? Number(state.layer) : layers[layers.length - 1];
    const t = tableOf(source, layer);
    const { idx, key } = latentRows(t);
    const limit = Number(state.rows) || PAGE_ROWS;
    const cols = [["latent", "latent"], ["auroc", "AUROC"], ["task", "|AUROC − ½|"], ["density", "density"], ["max", "max act"]];
    if (t.group) cols.push(["group", "group"], ["relative_norm", "relative norm"]);
    if (t.partner) cols.push(["partner", "partner"], ["partner_cosine", "partner cosine"]);
    const head = el("tr", {}, cols.map(([k, name]) => el("th", {
      class: (SORTS[k] ? "sortable" : "") + (k === key ? " sorted" : ""), "data-sort": k,
      on: SORTS[k] ? { click: () => go({ sort: k, dir: k === key && state.dir !== "asc" ? "asc" : "desc", rows: null }) } : {},
      text: name + (k === key ? (state.dir === "asc" ? " ▲" : " ▼") : "") })));
    const cell = (k, j) => {
      if (k === "latent") return String(j);
      if (k === "group") return LAT.groups[t.group[j]];
      if (k === "partner") return String(t.partner[j]);
      if (k === "density") return (100 * t.density[j]).toFixed(2) + "%";
      return fixed(SORTS[k](t, j));
    };
    const rows = idx.slice(0, limit).map((j) => el("tr", { class: "pick" + (String(j) === state.latent ? " chosen" : ""),
      "data-latent": j, on: { click: () => go({ latent: j }) } }, cols.map(([k]) => el("td", { text: cell(k, j) }))));
    const more = idx.length > limit ? el("button", { on: { click: () => go({ rows: limit + PAGE_ROWS }) }, text: `show more (${idx.length - limit} left)` }) : null;
    const controls = el("div", { class: "panel" },
      el("div", {}, "dictionary ", choices(sources, source, (s) => go({ source: s, latent: null, rows: null }), (s) => SOURCES[s])),
      el("div", {}, "layer ", choices(layers, layer, (l) => go({ layer: l, latent: null, rows: null }))),
      el("label", { class: "small" }, el("input", { type: "checkbox", id: "show-dead", checked: state.dead === "show" ? "checked" : null,
        on: { change: (e) => go({ dead: e.target.checked ? "show" : null }) } }), " show dead latents"));
    const list = el("div", { class: "panel scroll", style: "max-height:640px;overflow-y:auto" },
      el("p", { class: "small muted", text: `${idx.length} latents; click a column to sort, a row to open it.` }),
      el("table", { class: "rows", id: "latent-table" }, el("thead", {}, head), el("tbody", {}, rows)), more);
    const j = Number(state.latent);
    const detail = state.latent !== undefined && j >= 0 && j < t.d_sae ? latentDetail(t, j)
      : el("div", { class: "panel muted", text: "Pick a latent." });
    main.append(controls, el("div", { class: "layout" }, el("div", { class: "grow", style: "flex-basis:480px" }, list),
      el("div", { class: "grow", style: "flex-basis:520px" }, detail)));
  }

  // ---- view: matrices ------------------------------------------------------------------
  const ROW_DIMS = ["layer_other", "checkpoint", "task", "run", "reference"];
  const matrixDims = (g) => g.dims.includes("layer") && !g.dims.includes("bin") ?
    g.dims.filter((d) => d !== "layer" && g.coords[d].length > 1 && !FACETS.includes(d) && d !== "bound") : [];
  function viewMatrices(main) {
    const groups = DATA.groups.filter((g) => matrixDims(g).length);
    if (!groups.length) { main.append(el("p", { text: "No layer matrices in this run." })); return; }
    const g = groups.includes(GROUPS[state.group]) ? GROUPS[state.group] : GROUPS.layer_similarity || groups[0];
    const dims = matrixDims(g);
    const rowDim = dims.includes(state.rows_dim) ? state.rows_dim : ROW_DIMS.find((d) => dims.includes(d)) || dims[0];
    const others = g.dims.filter((d) => d !== "layer" && d !== rowDim);
    // Defaults: the last checkpoint (final), the first label of anything else.
    const fallback = (d) => String(d === "checkpoint" ? g.coords[d][g.coords[d].length - 1] : g.coords[d][0]);
    const pick = Object.fromEntries(others.map((d) => [d, g.coords[d].map(String).includes(state["m_" + d]) ? state["m_" + d] : fallback(d)]));
    const values = [];
    const rows = g.coords[rowDim].map((r) => el("tr", {}, el("th", { text: String(r) }), g.coords.layer.map((l) => {
      const v = valueAt(g, { ...pick, [rowDim]: r, layer: l });
      values.push(v);
      return hover(el("td", { class: "cell", "data-value": v }, v === null ? "–" : v.toFixed(3)), `${rowDim} ${r} · layer ${l}: ${fmt(v)}`);
    })));
    const finite = values.filter((v) => v !== null);
    const lo = Math.min(...finite), hi = Math.max(...finite);
    let n = 0;
    for (const tr of rows) for (const td of tr.querySelectorAll("td")) {
      const v = values[n++];
      if (v !== null) td.style.background = `rgba(68,119,170,${(hi > lo ? (v - lo) / (hi - lo) : 0.5).toFixed(3)})`;
    }
    const side = el("div", { class: "side" }, el("h3", { text: "Groups" }), groups.map((h) => el("button", {
      class: h === g ? "on" : null, on: { click: () => go({ group: h.name, rows_dim: null }) }, text: h.name })));
    const panel = el("div", { class: "grow panel", id: "matrix-panel" }, el("h2", { text: `${g.name}: ${rowDim} × layer` }),
      el("p", { class: "muted small", text: g.description }),
      dims.length > 1 ? el("div", {}, "rows ", choices(dims, rowDim, (d) => go({ rows_dim: d }))) : null,
      others.map((d) => el("div", {}, d + " ", choices(g.coords[d], pick[d], (v) => go({ ["m_" + d]: v })))),
      el("div", { class: "scroll" }, el("table", { class: "grid", id: "matrix" },
        el("thead", {}, el("tr", {}, el("th", { text: `${rowDim} \\ layer` }), g.coords.layer.map((l) => el("th", { text: String(l) })))),
        el("tbody", {}, rows))),
      el("p", { class: "muted small", text: `Colour from ${fmt(lo)} (light) to ${fmt(hi)} (dark).` }));
    main.append(el("div", { class: "layout" }, side, panel));
  }

  // ---- view: every group as a table (histogram groups also as bars) ------------------------
  function binChart(g) {
    const others = g.dims.filter((d) => d !== "bin");
    const pick = Object.fromEntries(others.map((d) => [d, g.coords[d].map(String).includes(state["h_" + d]) ? state["h_" + d] : String(g.coords[d][0])]));
    const uppers = g.coords.bin_upper;
    const counts = g.coords.bin.map((b) => valueAt(g, { ...pick, bin: b }) || 0);
    const W = 560, H = 180, L = 50, B = 30;
    const top = Math.max(1, ...counts);
    const bw = (W - L - 10) / counts.length;
    const root = sv("svg", { class: "chart", id: "bin-chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H });
    counts.forEach((c, k) => {
      const h = (c / top) * (H - B - 10);
      const range = uppers ? `${fmt(g.coords.bin[k])} – ${fmt(uppers[k])}` : `bin ${fmt(g.coords.bin[k])}`;
      root.append(hover(sv("rect", { x: L + k * bw, y: H - B - h, width: Math.max(bw - 1, 1), height: h, fill: "#4477aa" }), `${range}: ${fmt(c)}`));
    });
    root.append(sv("line", { class: "axis", x1: L, x2: W - 10, y1: H - B, y2: H - B }));
    root.append(sv("text", { x: L, y: H - 10 }, fmt(g.coords.bin[0])));
    root.append(sv("text", { x: W - 10, y: H - 10, "text-anchor": "end" }, fmt(uppers ? uppers[uppers.length - 1] : g.coords.bin[g.coords.bin.length - 1])));
    root.append(sv("text", { x: L - 4, y: 14, "text-anchor": "end" }, fmt(top)));
    return el("div", {}, others.map((d) => el("div", {}, d + " ", choices(g.coords[d], pick[d], (v) => go({ ["h_" + d]: v })))), root);
  }
  function viewGroups(main) {
    const g = GROUPS[state.group] || DATA.groups[0];
    if (!g) { main.append(el("p", { text: "results.zarr has no groups yet." })); return; }
    const side = el("div", { class: "side" }, el("h3", { text: "results.zarr" }), DATA.groups.map((h) => el("button", {
      class: h === g ? "on" : null, on: { click: () => go({ group: h.name }) }, text: h.name })));
    const all = combos(g, g.dims);
    const body = all.slice(0, 2000).map((c) => el("tr", {}, g.dims.map((d) => el("td", { text: String(c[d]) })),
      el("td", { text: fmt(valueAt(g, c)) })));
    const panel = el("div", { class: "grow panel", id: "group-panel" }, el("h2", { text: g.name }),
      el("p", { class: "muted small", text: `${g.description} (${g.stage || "undeclared"}; dims ${g.dims.map((d) => `${d} ${g.coords[d].length}`).join(" × ")})` }),
      g.dims.includes("bin") ? binChart(g) : null,
      el("div", { class: "scroll", style: "max-height:640px;overflow-y:auto" }, el("table", { class: "rows", id: "group-table" },
        el("thead", {}, el("tr", {}, g.dims.map((d) => el("th", { text: d })), el("th", { text: "value" }))), el("tbody", {}, body))),
      all.length > 2000 ? el("p", { class: "muted", text: `first 2000 of ${all.length} rows (layerdrift show --group ${g.name} prints all)` }) : null);
    main.append(el("div", { class: "layout" }, side, panel));
  }

  // ---- frame -------------------------------------------------------------------------------
  const VIEWS = [
    ["curves", "Layer curves", viewCurves, () => DATA.groups.some(isCurve)],
    ["tokens", "Tokens", viewTokens, () => !!probe],
    ["latents", "Latents", viewLatents, () => LAT.tables.length > 0],
    ["matrices", "Matrices", viewMatrices, () => DATA.groups.some((g) => matrixDims(g).length)],
    ["groups", "All groups", viewGroups, () => DATA.groups.length > 0],
  ];
  function render() {
    hideTip();
    const live = VIEWS.filter((v) => v[3]());
    const view = live.find((v) => v[0] === state.view) || live[0];
    const tabs = document.getElementById("tabs");
    tabs.replaceChildren(...live.map(([name, title]) => el("button", { class: view && name === view[0] ? "on" : null,
      "data-view": name, on: { click: () => { state = { view: name }; go({}); } }, text: title })));
    const main = document.getElementById("view");
    main.replaceChildren();
    if (!view) { main.append(el("p", { text: "This run has no results yet." })); return; }
    main.dataset.view = view[0];
    view[2](main);
  }
  const run = DATA.run;
  document.getElementById("rules").append(
    el("p", { text: `model ${run.model} · dataset ${run.dataset} · config hash ${run.config_hash}` }),
    el("h3", { text: "What this page holds" }), el("ul", {}, DATA.rules.map((r) => el("li", { text: r }))));
  window.addEventListener("hashchange", () => { readHash(); render(); });
  readHash();
  render();
})();
