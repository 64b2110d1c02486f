// The run widget's view (an anywidget module): progress, per-site states, the per-round charts of
// chart.ts, and the run's notes. Bundled by esbuild into caia_jupyter/kernel/static/run_widget.js;
// the Python side is caia_jupyter/kernel/widgets.py.
import { disposeCharts, drawCharts, colorOf, GlobalRecord, MetricRecord } from './chart';
import '../style/chart.css';
import '../style/widget.css';

/** The part of anywidget's model this view uses. */
interface IModel {
  get(name: string): any;
  on(event: string, callback: () => void): void;
  off(event: string, callback: () => void): void;
}

// Traits widgets.py syncs; the ones after `records` are read when the Python side has them.
const TRAITS = ['title', 'status', 'message', 'rounds_done', 'rounds', 'sites', 'reasons', 'notes', 'records',
  'headline', 'tones', 'global_records', 'final_round', 'bundle_id'];

function node<K extends keyof HTMLElementTagNameMap>(tag: K, className = '', text = ''): HTMLElementTagNameMap[K] {
  const created = document.createElement(tag);
  created.className = className;
  created.textContent = text;
  return created;
}

/** A site's tone when the kernel does not say: only a failure or a refusal is bad. */
function toneOf(state: string): string {
  return state === 'failed' || state === 'refused' ? 'bad' : state === 'done' ? 'ok' : 'neutral';
}

function render({ model, el }: { model: IModel; el: HTMLElement }): () => void {
  el.classList.add('caia-run');
  const head = node('div', 'caia-head');
  const bundle = node('code', 'caia-bundle-id');
  const bar = node('progress');
  const label = node('span');
  const progress = node('div', 'caia-progress');
  const sites = node('table', 'caia-sites');
  const charts = node('div', 'caia-charts');
  const notes = node('ul', 'caia-notes'); // what the run left out (missing metrics, updates left out)
  progress.append(bar, label);
  el.append(head, bundle, progress, sites, charts, notes);

  function draw(): void {
    const status: string = model.get('status');
    const states: Record<string, string> = model.get('sites') ?? {};
    const reasons: Record<string, string> = model.get('reasons') ?? {};
    const tones: Record<string, string> = model.get('tones') ?? {};
    const names = Object.keys(states);
    const said = String(model.get('headline') || model.get('message') || '').trim();
    const repeated = said.toLowerCase() === String(status).toLowerCase(); // "starting (starting)": say it once
    head.textContent = `${model.get('title')}: ${status}${said && !repeated ? ` (${said})` : ''}`;
    head.dataset.status = status;
    const id: string = model.get('bundle_id') ?? '';
    bundle.textContent = id ? `bundle ${id.replace(/^sha256:/, '').slice(0, 12)}` : '';
    bundle.title = id;
    bar.max = model.get('rounds');
    bar.value = model.get('rounds_done');
    label.textContent = ` round ${model.get('rounds_done')} of ${model.get('rounds')}`;
    sites.replaceChildren(...names.map(site => {
      const row = document.createElement('tr');
      row.dataset.site = site;
      // the state's look comes from its tone only; the chart colour is a legend key (a line sample), not a state
      const key = node('td', 'caia-swatch', '—');
      key.style.color = colorOf(names, site);
      key.title = `chart colour of ${site}`;
      const tone = tones[site] ?? toneOf(states[site]);
      row.dataset.tone = tone;
      row.append(node('td', 'caia-site', site), node('td', `caia-state caia-tone-${tone}`, states[site]), key,
        node('td', 'caia-reason', reasons[site] ?? ''));
      return row;
    }));
    const global: GlobalRecord[] = model.get('global_records') ?? [];
    const finalRound: number | null = model.get('final_round') ?? null;
    drawCharts(charts, model.get('records') as MetricRecord[], names, model.get('rounds'), global, finalRound);
    notes.replaceChildren(...(model.get('notes') as string[]).map(note => node('li', '', note)));
  }

  for (const trait of TRAITS) {
    model.on(`change:${trait}`, draw);
  }
  draw();
  return () => {
    for (const trait of TRAITS) {
      model.off(`change:${trait}`, draw);
    }
    disposeCharts(charts);
  };
}

export default { render };
