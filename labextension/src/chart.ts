// Per-round curves, one chart per metric: a line per site, the dashed global line, the final-model
// round marked; and an exploration's histograms, per site overlaid with the pooled outline. The one
// chart code of the Federated panel and of the run widget (widget.ts).
import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  ChartDataset,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  Plugin,
  PointElement,
  Tooltip
} from 'chart.js';

Chart.register(LineController, LineElement, PointElement, LinearScale, Legend, Tooltip, BarController, BarElement, CategoryScale);

/** [site, round (0-based), metric name, value or null when the site recorded it missing] */
export type MetricRecord = [string, number, string, number | null];
/** [round, metric name, num_samples-weighted mean over sites or null] */
export type GlobalRecord = [number, string, number | null];

type Points = [number, number][];
const SITE_COLORS = 8; // --caia-site-0 .. --caia-site-7 in style/chart.css, one set per theme
const GLOBAL = 'global';

/** The CSS color of a site's line and swatch: a theme-aware variable of style/chart.css. */
export function colorOf(sites: string[], site: string): string {
  return `var(--caia-site-${Math.max(sites.indexOf(site), 0) % SITE_COLORS})`;
}

/** Resolve `var(--name)` (or a plain color) against the page's current theme. */
function resolve(color: string, element: Element): string {
  const name = /^var\((--[\w-]+)\)$/.exec(color)?.[1];
  return name ? style(element).getPropertyValue(name).trim() || '#777' : color;
}

// A detached element has no computed style; the theme's variables are the page's.
function style(element: Element): CSSStyleDeclaration {
  return getComputedStyle(element.isConnected ? element : document.body);
}

function theme(element: Element) {
  return {
    text: resolve('var(--jp-ui-font-color1)', element),
    muted: resolve('var(--jp-ui-font-color2)', element),
    grid: resolve('var(--jp-border-color2)', element),
    axis: resolve('var(--jp-border-color1)', element),
    font: style(element).getPropertyValue('--jp-ui-font-family').trim() || 'sans-serif'
  };
}

/** Draws the vertical marker of the final-model round (`chart.options.plugins.finalRound.round`). */
const finalRoundMarker: Plugin<'line', { round: number | null }> = {
  id: 'finalRound',
  afterDatasetsDraw(chart, _args, options) {
    if (options.round === null || options.round === undefined) {
      return;
    }
    const x = chart.scales.x.getPixelForValue(options.round);
    const { top, bottom } = chart.chartArea;
    const color = resolve('var(--jp-ui-font-color2)', chart.canvas);
    const context = chart.ctx;
    context.save();
    context.strokeStyle = color;
    context.fillStyle = color;
    context.setLineDash([2, 3]);
    context.beginPath();
    context.moveTo(x, top);
    context.lineTo(x, bottom);
    context.stroke();
    context.font = `10px ${theme(chart.canvas).font}`;
    // inside the plot area, at its top, to the left of the line: never cut at the chart's right edge
    const left = x - 3 - context.measureText('final').width >= chart.chartArea.left;
    context.textAlign = left ? 'right' : 'left';
    context.textBaseline = 'top';
    const width = context.measureText('final').width;
    const textX = left ? x - 3 : x + 3;
    context.fillStyle = resolve('var(--jp-layout-color1)', chart.canvas); // readable over the lines it crosses
    context.fillRect(left ? textX - width - 1 : textX - 1, top + 1, width + 2, 12);
    context.fillStyle = color;
    context.fillText('final', textX, top + 2);
    context.restore();
  }
};

/** Writes what Chart.js laid out (x tick values, y tick count, legend, line colors) onto the chart's element, for tests and tools. */
const layoutAttributes: Plugin<'line'> = {
  id: 'layoutAttributes',
  afterRender(chart) {
    if (chart.canvas.isConnected) {
      shown.add(chart);
    }
    const figure = chart.canvas.closest<HTMLElement>('.caia-chart');
    if (figure) {
      figure.dataset.xTicks = JSON.stringify(chart.scales.x.ticks.map(tick => tick.value));
      figure.dataset.yTicks = String(chart.scales.y.ticks.length);
      figure.dataset.yRange = JSON.stringify([chart.scales.y.min, chart.scales.y.max]);
      figure.dataset.legend = JSON.stringify(chart.legend?.legendItems?.map(item => item.text) ?? []);
      figure.dataset.colors = JSON.stringify(chart.data.datasets.map(line => line.borderColor));
    }
  }
};

Chart.register(finalRoundMarker, layoutAttributes);

function byMetric(records: MetricRecord[]): Map<string, Map<string, Points>> {
  const metrics = new Map<string, Map<string, Points>>();
  for (const [site, round, name, value] of records) {
    if (name === 'num_samples' || value === null) {
      continue; // null: a value recorded as missing, told in the run's notes
    }
    const series = metrics.get(name) ?? new Map<string, Points>();
    metrics.set(name, series);
    series.set(site, [...(series.get(site) ?? []), [round, value]]);
  }
  return metrics;
}

function globalOf(global: GlobalRecord[], name: string): Points {
  return global.filter(([, metric, value]) => metric === name && value !== null).map(([round, , value]) => [round, value as number]);
}

/** What a chart draws, kept to repaint it in another theme. */
interface ISpec {
  colors: string[]; // the CSS color of each dataset, `var(--...)` resolved at paint time
  lastRound: number;
  finalRound: number | null;
  histogram?: boolean; // bars per site (half transparent) and the pooled outline
}
const specs = new WeakMap<Chart, ISpec>();
const shown = new WeakSet<object>(); // charts that were drawn on the page

function datasets(series: Map<string, Points>, global: Points, sites: string[]): [ChartDataset<'line'>[], string[]] {
  const points = (values: Points) => [...values].sort((a, b) => a[0] - b[0]).map(([x, y]) => ({ x, y }));
  const named = [...series.keys()].sort((a, b) => sites.indexOf(a) - sites.indexOf(b));
  const lines: ChartDataset<'line'>[] = named.map(site => ({ label: site, data: points(series.get(site)!), borderWidth: 2, pointRadius: 2 }));
  const colors = named.map(site => colorOf(sites, site));
  if (global.length) {
    lines.push({ label: GLOBAL, data: points(global), borderDash: [6, 4], borderWidth: 2, pointRadius: 0 });
    colors.push('var(--jp-ui-font-color1)');
  }
  return [lines, colors];
}

/** Apply the current theme's colors to a chart and redraw it. */
function paint(chart: Chart): void {
  const spec = specs.get(chart);
  if (!spec) {
    return;
  }
  chart.data.datasets.forEach((line, index) => {
    const color = resolve(spec.colors[index], chart.canvas);
    const pooled = spec.histogram && index === chart.data.datasets.length - 1;
    const fill = !spec.histogram ? color : pooled ? 'transparent' : withAlpha(color, 0.45);
    Object.assign(line, { borderColor: color, backgroundColor: fill });
  });
  chart.options = spec.histogram ? histogramOptions(chart.canvas) : options(spec.lastRound, spec.finalRound, chart.canvas);
  chart.update('none');
}

/** What every caia chart's options share: the theme's colors and font, and the layout (the container's width). */
function common(element: Element) {
  const colors = theme(element);
  const font = { family: colors.font, size: 10 };
  const layout = {
    responsive: true,
    maintainAspectRatio: true,
    aspectRatio: 1.4,
    animation: false as const, // redrawn on every streamed record
    color: colors.text
  };
  return { colors, font, layout };
}

function options(lastRound: number, finalRound: number | null, element: Element) {
  const { colors, font, layout } = common(element);
  return {
    ...layout,
    parsing: false as const,
    interaction: { mode: 'nearest' as const, axis: 'x' as const, intersect: false },
    scales: {
      x: {
        type: 'linear' as const,
        min: 0,
        max: Math.max(lastRound, 1),
        title: { display: true, text: 'round', color: colors.muted, font },
        ticks: { stepSize: 1, precision: 0, maxRotation: 0, autoSkipPadding: 8, color: colors.muted, font },
        grid: { color: colors.grid },
        border: { color: colors.axis }
      },
      y: {
        type: 'linear' as const,
        // no grace: the range ends at the data's nice bounds (accuracy stops at 1); Chart.js widens a flat series itself
        ticks: { maxTicksLimit: 6, color: colors.muted, font },
        grid: { color: colors.grid },
        border: { color: colors.axis }
      }
    },
    plugins: {
      legend: { position: 'bottom' as const, labels: { color: colors.text, font, boxWidth: 16, boxHeight: 2 } },
      tooltip: {
        callbacks: {
          title: (items: { parsed: { x: number | null } }[]) => `round ${items[0]?.parsed.x ?? ''}`,
          label: (item: { dataset: { label?: string }; parsed: { y: number | null } }) =>
            `${item.dataset.label}: ${item.parsed.y === null ? '–' : Number(item.parsed.y.toPrecision(4))}`
        }
      },
      finalRound: { round: finalRound }
    }
  };
}

/** `color` (any CSS color) with opacity `alpha`, as the canvas reads it. */
function withAlpha(color: string, alpha: number): string {
  const context = document.createElement('canvas').getContext('2d');
  if (!context) {
    return color;
  }
  context.fillStyle = color;
  const hex = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(context.fillStyle);
  return hex ? `rgba(${hex.slice(1).map(h => parseInt(h, 16)).join(', ')}, ${alpha})` : context.fillStyle;
}

function histogramOptions(element: Element) {
  const { colors, font, layout } = common(element);
  return {
    ...layout,
    datasets: { bar: { grouped: false, barPercentage: 1, categoryPercentage: 1, borderWidth: 1 } },
    scales: {
      x: {
        type: 'category' as const,
        ticks: { maxRotation: 45, autoSkipPadding: 4, color: colors.muted, font },
        grid: { display: false },
        border: { color: colors.axis }
      },
      y: {
        type: 'linear' as const,
        beginAtZero: true,
        title: { display: true, text: 'count', color: colors.muted, font },
        ticks: { maxTicksLimit: 6, precision: 0, color: colors.muted, font },
        grid: { color: colors.grid },
        border: { color: colors.axis }
      }
    },
    plugins: {
      legend: { position: 'bottom' as const, labels: { color: colors.text, font, boxWidth: 12, boxHeight: 8 } },
      finalRound: { round: null }
    }
  };
}

/** One histogram row: a bin [low, high) and its count per site and "pooled" ("suppressed": withheld). */
export type HistogramRow = { low: number; high: number } & Record<string, number | string>;

/**
 * Draw the histogram of `column` into a new `figure.caia-chart[data-metric=column]` and return it: a
 * bar per bin for each site of `sites` (overlaid, half transparent; a suppressed bin is left out and
 * counted in the legend, "SITE (2 bins suppressed)"; a site that withheld it all is only named there,
 * "SITE (suppressed)") and the pooled counts as outlined bars on top (a partial bin left out). Its
 * `data-series` is the JSON {site or "pooled": [count or null, ...]} drawn.
 */
export function drawHistogram(column: string, rows: HistogramRow[], sites: string[]): HTMLElement {
  sweep();
  const node = figure(column, `histogram of ${column} per site and pooled`);
  node.querySelector('figcaption')!.textContent = 'histogram'; // under the column's own heading
  const labels = rows.map(row => `${Number(row.low.toPrecision(3))}–${Number(row.high.toPrecision(3))}`);
  const counts = (who: string) => rows.map(row => (typeof row[who] === 'number' ? (row[who] as number) : null));
  const bars: ChartDataset<'bar'>[] = [];
  const colors: string[] = [];
  const drawn: Record<string, (number | null)[]> = {};
  for (const site of sites) {
    const hidden = rows.filter(row => typeof row[site] !== 'number').length;
    const withheld = hidden === rows.length && rows.length > 0;
    const label = withheld ? `${site} (suppressed)` : hidden ? `${site} (${hidden} ${hidden === 1 ? 'bin' : 'bins'} suppressed)` : site;
    bars.push({ label, data: withheld ? [] : counts(site) });
    colors.push(colorOf(sites, site));
    if (!withheld) {
      drawn[site] = counts(site);
    }
  }
  drawn.pooled = counts('pooled'); // a partial bin: null, a gap, never a smaller bar
  const partial = drawn.pooled.filter(count => count === null).length;
  bars.push({ label: partial ? `pooled (${partial} ${partial === 1 ? 'bin' : 'bins'} partial)` : 'pooled', data: drawn.pooled, borderWidth: 2 });
  colors.push('var(--jp-ui-font-color1)');
  node.dataset.series = JSON.stringify(drawn);
  const chart = new Chart(node.querySelector('canvas')!, { type: 'bar', data: { labels, datasets: bars as ChartDataset[] } }) as unknown as Chart;
  specs.set(chart, { colors, lastRound: 0, finalRound: null, histogram: true });
  paint(chart);
  watchTheme();
  return node;
}

function figure(name: string, label = `${name} per round and site`): HTMLElement {
  const root = document.createElement('figure');
  root.className = 'caia-chart';
  root.dataset.metric = name;
  const title = document.createElement('figcaption');
  title.className = 'caia-chart-title';
  title.textContent = name;
  const frame = document.createElement('div'); // Chart.js sizes the canvas to this box: nothing else in it
  frame.className = 'caia-chart-frame';
  const canvas = document.createElement('canvas');
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', label);
  frame.append(canvas);
  root.append(title, frame);
  return root;
}

/**
 * Draw one chart per metric of `records` into `container`, updating in place the charts it already
 * holds (the widget redraws its container on every change; the panel passes a new one each time).
 * `rounds` is the planned number of rounds (x runs over rounds 0 .. rounds-1); `global` the run's
 * global records; `finalRound` the round whose model is the final one (a vertical marker), or null.
 * Each chart is a `figure.caia-chart[data-metric]` whose `data-series` is the JSON
 * {site or "global": [[round, value], ...]} drawn, and whose data-x-ticks/-y-ticks/-y-range/-legend/-colors tell
 * what Chart.js laid out.
 */
export function drawCharts(
  container: HTMLElement,
  records: MetricRecord[],
  sites: string[],
  rounds: number,
  global: GlobalRecord[] = [],
  finalRound: number | null = null
): void {
  sweep();
  const metrics = byMetric(records);
  // A loop, not Math.max(...values): spreading a long run's records overflows the call stack.
  let lastRound = Math.max(rounds - 1, finalRound ?? 0);
  records.forEach(r => (lastRound = Math.max(lastRound, r[1])));
  global.forEach(g => (lastRound = Math.max(lastRound, g[0])));
  const existing = new Map<string, HTMLElement>();
  container.querySelectorAll<HTMLElement>(':scope > .caia-chart').forEach(node => existing.set(node.dataset.metric!, node));
  const figures = [...metrics.keys()].sort().map(name => {
    const node = existing.get(name) ?? figure(name);
    const series = metrics.get(name)!;
    const globalPoints = globalOf(global, name);
    const drawn: Record<string, Points> = {};
    series.forEach((points, site) => (drawn[site] = points));
    if (globalPoints.length) {
      drawn[GLOBAL] = globalPoints;
    }
    node.dataset.series = JSON.stringify(drawn);
    node.dataset.finalRound = finalRound === null ? '' : String(finalRound);
    const canvas = node.querySelector('canvas')!;
    const [lines, colors] = datasets(series, globalPoints, sites);
    const chart = Chart.getChart(canvas) ?? (new Chart(canvas, { type: 'line', data: { datasets: [] } }) as unknown as Chart);
    chart.data.datasets = lines as ChartDataset[];
    specs.set(chart, { colors, lastRound, finalRound });
    paint(chart);
    return node;
  });
  for (const [name, node] of existing) {
    if (!metrics.has(name)) {
      Chart.getChart(node.querySelector('canvas')!)?.destroy();
    }
  }
  container.replaceChildren(...figures);
  watchTheme();
}

/** Destroy the charts of a container (its figures stay, blank). */
export function disposeCharts(container: HTMLElement): void {
  container.querySelectorAll('canvas').forEach(canvas => Chart.getChart(canvas)?.destroy());
}

// A chart whose canvas left the page (the panel replaced its run view) would live on: free it. Only
// charts of this module, and only once they were on the page: a view renders into a detached element
// before it is attached, and Chart.js may be shared with other extensions.
function sweep(): void {
  for (const chart of Object.values(Chart.instances)) {
    if (specs.has(chart) && shown.has(chart) && !chart.canvas.isConnected) {
      chart.destroy();
    }
  }
}

let themeWatch: MutationObserver | null = null;

// JupyterLab marks the theme on <body data-jp-theme-light="true|false">: repaint every chart on a
// change, again on the next frame in case the theme's variables land after the attribute.
function watchTheme(): void {
  if (themeWatch || typeof MutationObserver === 'undefined') {
    return;
  }
  const repaint = () => Object.values(Chart.instances).forEach(paint);
  themeWatch = new MutationObserver(() => {
    repaint();
    requestAnimationFrame(repaint);
  });
  themeWatch.observe(document.body, { attributes: true, attributeFilter: ['data-jp-theme-light', 'data-jp-theme-name'] });
}
