// The "Federated" sidebar: the current notebook's federated cells, bundle id, validation,
// approvals per site, and runs (status per site, round progress, live per-round curves).
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { INotebookState, IRunState, post, request, streamRun } from './api';
import { colorOf, drawCharts, GlobalRecord } from './chart';

function element<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, value);
  }
  node.textContent = text;
  return node;
}

export class FederatedPanel extends Widget {
  constructor(private openFile: (path: string) => void) {
    super();
    this.id = 'caia-federated-panel';
    this.title.label = 'Federated';
    this.title.caption = 'caia: federated cells, bundle, validation, approvals and runs';
    this.addClass('caia-panel');
    const actions = element('div', { class: 'caia-actions' });
    for (const [label, action] of [
      ['Validate', () => this.validate()],
      ['Review', () => this.review()],
      ['Submit', () => this.submit()]
    ] as [string, () => Promise<void>][]) {
      const button = element('button', { class: 'jp-Button jp-mod-styled caia-button', 'data-caia-action': label.toLowerCase() }, label);
      button.onclick = () => void action();
      actions.appendChild(button);
    }
    this.target.append(new Option('simulator', 'simulator'), new Option('POC', 'poc'));
    this.target.className = 'caia-target';
    actions.appendChild(this.target);
    this.node.append(this.heading, this.message, actions, this.summary, this.runView);
    this.heading.className = 'caia-heading';
    this.message.setAttribute('data-caia', 'message');
  }

  /** Follow another notebook (or none); refresh whenever it is saved. */
  setNotebook(notebook: NotebookPanel | null): void {
    this.notebook?.context.saveState.disconnect(this.onSaved, this);
    this.notebook = notebook;
    notebook?.context.saveState.connect(this.onSaved, this);
    void this.refresh();
  }

  async refresh(): Promise<void> {
    const notebook = this.notebook;
    this.heading.textContent = notebook ? notebook.context.path : 'Open a notebook';
    this.summary.replaceChildren();
    if (!notebook) {
      return;
    }
    await notebook.context.ready;
    try {
      const state = await request<INotebookState>(`notebook?path=${encodeURIComponent(notebook.context.path)}`);
      if (notebook === this.notebook) {
        this.render(state);
        if (this.notebookError) {
          this.say('');
        }
      }
    } catch (error) {
      this.say(String((error as Error).message), true);
      this.notebookError = true;
    }
  }

  private onSaved(_: unknown, state: string): void {
    if (state === 'completed') {
      void this.refresh();
    }
  }

  private render(state: INotebookState): void {
    const id = element('code', { 'data-caia': 'bundle-id', title: state.bundle_id }, state.bundle_id);
    const validation = element('span', { 'data-caia': 'validation', class: `caia-${state.validation.state}` },
      `${state.validation.state}: ${state.validation.summary}`);
    const cells = element('ol', { 'data-caia': 'cells' });
    for (const cell of state.cells) {
      cells.appendChild(element('li', { title: `notebook cell ${cell.index + 1}` }, cell.first_line || '(empty)'));
    }
    const sites = element('table', { 'data-caia': 'sites', class: 'caia-sites' });
    for (const site of state.sites) {
      const row = sites.insertRow();
      row.setAttribute('data-site', site.name);
      row.insertCell().textContent = site.name;
      const approval = row.insertCell();
      approval.textContent = site.approval;
      approval.className = `caia-${site.approval}`;
      row.insertCell().textContent = site.detail;
    }
    const job = `${state.job.rounds} ${state.job.rounds === 1 ? 'round' : 'rounds'}, min_clients ${state.job.min_clients}, datasets: ${state.datasets.join(', ') || 'none'}`;
    this.summary.append(
      element('h3', {}, 'Bundle'), id, element('p', {}, job),
      element('h3', {}, 'Validation'), validation,
      element('h3', {}, `Federated cells (${state.cells.length})`), cells,
      element('h3', {}, 'Approvals'), state.sites.length ? sites : element('p', {}, 'No site directories beside this notebook (sites/).')
    );
  }

  async validate(): Promise<void> {
    await this.act('validating in a fresh kernel…', async path => {
      const result = await post<{ passed: boolean; summary: string }>('validate', { path });
      return result.passed ? 'validation passed' : `validation failed: ${result.summary}`;
    });
  }

  async review(): Promise<void> {
    await this.act('rendering the review…', async path => {
      const result = await post<{ review: string }>('review', { path });
      this.openFile(result.review);
      return `review: ${result.review}`;
    });
  }

  async submit(): Promise<void> {
    await this.act(`submitting to the ${this.target.value}…`, async path => {
      const state = await post<IRunState>('runs', { path, target: this.target.value });
      this.follow(state);
      return `run ${state.run}`;
    });
  }

  /** Save first (the bundle is built from the saved notebook), then run `work` and report it. */
  private async act(busy: string, work: (path: string) => Promise<string>): Promise<void> {
    const notebook = this.notebook;
    if (!notebook) {
      return this.say('Open a notebook first.', true);
    }
    this.say(busy);
    try {
      await notebook.context.save();
      this.say(await work(notebook.context.path));
    } catch (error) {
      this.say(String((error as Error).message), true);
    }
    await this.refresh();
  }

  private follow(state: IRunState): void {
    this.socket?.close();
    this.drawRun(state);
    this.socket = streamRun(state.run!, update => this.drawRun(update));
  }

  private drawRun(state: IRunState): void {
    if ((state as unknown as { error?: string }).error) {
      return this.say((state as unknown as { message: string }).message, true);
    }
    if (state.since === 0) {
      this.records = []; // a state from the first record on (the submit answer, then the stream's first message)
    }
    this.records.push(...state.records);
    const sites = Object.keys(state.sites);
    const status = element('p', { 'data-caia': 'run-status', 'data-status': state.status, class: `caia-run-${state.status}` },
      `run ${state.status}${state.message ? ': ' + state.message : ''}`);
    const progress = element('progress', { max: String(state.rounds), value: String(state.rounds_done) });
    const table = element('table', { 'data-caia': 'run-sites', class: 'caia-sites' });
    for (const site of sites) {
      const row = table.insertRow();
      row.setAttribute('data-site', site);
      const swatch = row.insertCell();
      swatch.textContent = '●';
      swatch.style.color = colorOf(sites, site);
      row.insertCell().textContent = site;
      const cell = row.insertCell();
      cell.textContent = state.sites[site];
      cell.className = `caia-${state.sites[site]}`;
      row.insertCell().textContent = state.reasons[site] ?? '';
    }
    const charts = element('div', { 'data-caia': 'charts', class: 'caia-charts' });
    const { global, final_round } = state as { global?: GlobalRecord[]; final_round?: number | null };
    drawCharts(charts, this.records, sites, state.rounds, global ?? [], final_round ?? null);
    const notes = element('ul', { 'data-caia': 'run-notes', class: 'caia-notes' });
    notes.append(...state.notes.map(note => element('li', {}, note)));
    this.runView.replaceChildren(element('h3', {}, 'Run'), status, progress,
      element('span', {}, ` ${state.rounds_done} of ${state.rounds} ${state.rounds === 1 ? 'round' : 'rounds'} done`), table, charts,
      notes);
  }

  private say(text: string, error = false): void {
    this.notebookError = false;
    this.message.textContent = text;
    this.message.className = error ? 'caia-message caia-error' : 'caia-message';
  }

  private notebook: NotebookPanel | null = null;
  private notebookError = false; // the message shows why the notebook cannot be bundled
  private socket: WebSocket | null = null;
  private records: [string, number, string, number | null][] = [];
  private heading = element('h2');
  private message = element('div', { class: 'caia-message' });
  private summary = element('div', { 'data-caia': 'summary' });
  private runView = element('div', { 'data-caia': 'run' });
  private target = element('select', { 'data-caia': 'target' });
}
