// Live view of a caia run: progress, per-site status, per-round curves (one chart per metric).
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, parent) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function chart(name, series, rounds, colorOf) {
  const W = 260, H = 150, L = 38, R = 8, T = 18, B = 22;
  const root = svg("svg", { width: W, height: H, class: "caia-chart", "data-metric": name });
  svg("text", { x: L, y: 12, class: "caia-chart-title" }, root).textContent = name;
  const values = Object.values(series).flat().map((p) => p[1]);
  if (!values.length) return root;
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const maxRound = Math.max(rounds, 1);
  const x = (r) => L + (r / maxRound) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "caia-axis" }, root);
  svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "caia-axis" }, root);
  for (const v of [lo, hi]) svg("text", { x: L - 4, y: y(v) + 4, class: "caia-tick", "text-anchor": "end" }, root).textContent = v.toPrecision(2);
  svg("text", { x: W - R, y: H - 6, class: "caia-tick", "text-anchor": "end" }, root).textContent = `round ${maxRound}`;
  for (const [site, points] of Object.entries(series)) {
    points.sort((a, b) => a[0] - b[0]);
    const d = points.map(([r, v]) => `${x(r)},${y(v)}`).join(" ");
    svg("polyline", { points: d, fill: "none", stroke: colorOf(site), "stroke-width": 2, class: "caia-line", "data-site": site }, root);
    for (const [r, v] of points) svg("circle", { cx: x(r), cy: y(v), r: 2.5, fill: colorOf(site) }, root);
  }
  return root;
}

function render({ model, el }) {
  el.classList.add("caia-run");
  const head = document.createElement("div");
  const bar = document.createElement("progress");
  const label = document.createElement("span");
  const sites = document.createElement("table");
  const charts = document.createElement("div");
  const notes = document.createElement("ul");  // what the run left out (missing metrics, updates left out)
  head.className = "caia-head";
  sites.className = "caia-sites";
  charts.className = "caia-charts";
  notes.className = "caia-notes";
  const progress = document.createElement("div");
  progress.className = "caia-progress";
  progress.append(bar, label);
  el.append(head, progress, sites, charts, notes);

  function draw() {
    const status = model.get("status");
    const siteStates = model.get("sites");
    const reasons = model.get("reasons");
    const names = Object.keys(siteStates);
    const colorOf = (site) => COLORS[names.indexOf(site) % COLORS.length];
    head.textContent = `${model.get("title")}: ${status}${model.get("message") ? " (" + model.get("message") + ")" : ""}`;
    head.dataset.status = status;
    bar.max = model.get("rounds");
    bar.value = model.get("rounds_done");
    label.textContent = ` round ${model.get("rounds_done")} of ${model.get("rounds")}`;
    sites.replaceChildren(...names.map((site) => {
      const row = document.createElement("tr");
      row.dataset.site = site;
      const swatch = document.createElement("td");
      swatch.style.color = colorOf(site);
      swatch.textContent = "●";
      const name = document.createElement("td");
      name.textContent = site;
      const state = document.createElement("td");
      state.className = `caia-state caia-${siteStates[site]}`;
      state.textContent = siteStates[site];
      const why = document.createElement("td");
      why.textContent = reasons[site] || "";
      row.append(swatch, name, state, why);
      return row;
    }));
    const byMetric = {};
    for (const [site, round, name, value] of model.get("records")) {
      if (name === "num_samples" || value === null) continue;  // null: missing, told in the notes
      ((byMetric[name] ??= {})[site] ??= []).push([round, value]);
    }
    charts.replaceChildren(...Object.keys(byMetric).sort().map((name) => chart(name, byMetric[name], model.get("rounds"), colorOf)));
    notes.replaceChildren(...model.get("notes").map((note) => {
      const item = document.createElement("li");
      item.textContent = note;
      return item;
    }));
  }
  for (const trait of ["status", "message", "rounds_done", "rounds", "sites", "reasons", "notes", "records", "title"]) {
    model.on(`change:${trait}`, draw);
  }
  draw();
}

export default { render };
