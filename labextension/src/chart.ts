// Per-round curves: one small SVG chart per metric, one line per site.
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];
const NS = 'http://www.w3.org/2000/svg';

function svg(tag: string, attrs: Record<string, string | number>, parent?: Element): SVGElement {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, String(value));
  }
  parent?.appendChild(node);
  return node;
}

export function colorOf(sites: string[], site: string): string {
  return COLORS[Math.max(sites.indexOf(site), 0) % COLORS.length];
}

export function drawCharts(
  container: HTMLElement,
  records: [string, number, string, number | null][],
  sites: string[],
  rounds: number
): void {
  const byMetric = new Map<string, Map<string, [number, number][]>>();
  for (const [site, round, name, value] of records) {
    if (name === 'num_samples' || value === null) {
      continue; // null: a value recorded as missing, told in the run's notes
    }
    const series = byMetric.get(name) ?? new Map<string, [number, number][]>();
    byMetric.set(name, series);
    const points = series.get(site) ?? [];
    series.set(site, points);
    points.push([round, value]);
  }
  container.replaceChildren(
    ...[...byMetric.keys()].sort().map(name => chart(name, byMetric.get(name)!, sites, rounds))
  );
}

function chart(name: string, series: Map<string, [number, number][]>, sites: string[], rounds: number): SVGElement {
  const [W, H, L, R, T, B] = [250, 140, 36, 8, 18, 20];
  const root = svg('svg', { width: W, height: H, class: 'caia-chart', 'data-metric': name });
  svg('text', { x: L, y: 12, class: 'caia-chart-title' }, root).textContent = name;
  const values = [...series.values()].reduce<number[]>((all, points) => all.concat(points.map(p => p[1])), []);
  let [low, high] = [Math.min(...values), Math.max(...values)];
  if (high - low < 1e-9) {
    [low, high] = [low - 0.5, high + 0.5];
  }
  const x = (round: number) => L + (round / Math.max(rounds, 1)) * (W - L - R);
  const y = (value: number) => T + (1 - (value - low) / (high - low)) * (H - T - B);
  svg('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'caia-axis' }, root);
  svg('line', { x1: L, y1: T, x2: L, y2: H - B, class: 'caia-axis' }, root);
  for (const value of [low, high]) {
    const tick = svg('text', { x: L - 3, y: y(value) + 4, class: 'caia-tick', 'text-anchor': 'end' }, root);
    tick.textContent = value.toPrecision(2);
  }
  for (const [site, points] of series) {
    points.sort((a, b) => a[0] - b[0]);
    const line = points.map(([round, value]) => `${x(round)},${y(value)}`).join(' ');
    svg('polyline', { points: line, fill: 'none', stroke: colorOf(sites, site), 'stroke-width': 2, class: 'caia-line', 'data-site': site }, root);
  }
  return root;
}
