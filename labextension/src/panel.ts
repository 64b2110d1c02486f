// The "Federated" sidebar: the current notebook's federated cells, bundle id, validation, the
// approval lifecycle per site, the runs list, the followed run (state per site, live curves) and the
// notebook's last exploration (Data).
import { NotebookPanel } from '@jupyterlab/notebook';
import type { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { FINAL_STATUSES, IExploration, INotebookState, IRunState, IRunSummary, Tone, post, remove, request, streamRun } from './api';
import { colorOf, disposeCharts, drawCharts, drawHistogram } from './chart';

/** The panel's actions on a notebook; one at a time per notebook. */
export type Action = 'validate' | 'review' | 'submit';
const ACTIONS: Action[] = ['validate', 'review', 'submit'];
const LABELS: Record<Action, string> = { validate: 'Validate', review: 'Review', submit: 'Submit' };
const PROGRESS: Record<Action, string> = { validate: 'validating…', review: 'rendering…', submit: 'submitting…' };
const POLL_MS = 3000; // approvals made in a terminal, `%federated validate`, widget runs show within this

export function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

/** A small button that copies `text` to the clipboard. */
function copyButton(text: string, what: string): HTMLButtonElement {
  const button = element('button', { class: 'caia-copy', title: `copy ${what}`, 'data-caia-copy': what }, 'copy');
  button.onclick = () =>
    void navigator.clipboard.writeText(text).then(
      () => (button.textContent = 'copied'),
      () => (button.textContent = 'select it to copy')
    );
  return button;
}

function shortOf(id: string): string {
  return id.replace(/^sha256:/, '').slice(0, 12);
}

/** A site's tone when the server does not say: only a failure or a refusal is bad. */
function toneOf(state: IRunState, site: string): Tone {
  const given = state.tones?.[site];
  if (given) {
    return given;
  }
  const siteState = state.sites[site];
  return siteState === 'failed' || siteState === 'refused' ? 'bad' : siteState === 'done' ? 'ok' : 'neutral';
}

/** A server path as code that wraps after its slashes (a long name wraps anywhere, as the last resort). */
function pathCode(path: string, attrs: Record<string, string> = {}): HTMLElement {
  const code = element('code', { class: 'caia-path', ...attrs });
  path.split('/').forEach((part, index) => {
    if (index) {
      code.append('/', element('wbr'));
    }
    code.append(part);
  });
  return code;
}

/** The key of a site's chart line: a line sample in its chart colour; never a state (the state has its tone). */
function legendKey(sites: string[], site: string): HTMLElement {
  const key = element('span', { class: 'caia-swatch', title: `chart colour of ${site}`, 'aria-label': `chart colour of ${site}` }, '—');
  key.style.color = colorOf(sites, site);
  return key;
}

/** `said` unless it only repeats `shown` (e.g. a headline "starting" under the status "starting"). */
function unlessRepeated(said: string | null | undefined, shown: string): string {
  const text = (said ?? '').trim();
  return text && text.toLowerCase() !== shown.trim().toLowerCase() ? text : '';
}

function seconds(duration: number | null): string {
  if (duration === null) {
    return 'live';
  }
  return duration < 90 ? `${Math.round(duration)} s` : `${Math.round(duration / 60)} min`;
}

function metrics(values: Record<string, number | null>): string {
  return Object.entries(values)
    .map(([name, value]) => `${name} ${value === null ? 'missing' : value.toPrecision(3)}`)
    .join(', ');
}

export class FederatedPanel extends Widget {
  /**
   * @param openFile opens a server path in JupyterLab (the review page)
   * @param onBusy called when an action starts or ends (the toolbar buttons follow)
   */
  constructor(
    private openFile: (path: string) => void,
    private onBusy: () => void
  ) {
    super();
    this.id = 'caia-federated-panel';
    this.title.label = 'Federated';
    this.title.caption = 'caia: federated cells, bundle, validation, approvals and runs';
    this.addClass('caia-panel');
    const actions = element('div', { class: 'caia-actions' });
    for (const action of ACTIONS) {
      const button = element('button', { class: 'jp-Button jp-mod-styled caia-button', 'data-caia-action': action }, LABELS[action]);
      button.onclick = () => void this.act(action);
      this.buttons.set(action, button);
      actions.appendChild(button);
    }
    this.target.append(new Option('simulator', 'simulator'), new Option('POC', 'poc'));
    this.target.className = 'caia-target';
    const refresh = element('button', { class: 'jp-Button jp-mod-styled caia-button', 'data-caia-action': 'refresh', title: 'Refresh' }, 'Refresh');
    refresh.onclick = () => void this.refresh();
    actions.append(this.target, refresh);
    // the run followed right under the actions, above the bundle's details and the runs list
    this.dataView.append(element('summary', {}, 'Data'), this.dataBody);
    this.node.append(this.heading, this.message, actions, this.submitReason, this.runView, this.summary, this.runsView, this.dataView);
    this.heading.className = 'caia-heading';
    this.message.setAttribute('data-caia', 'message');
    this.poller = window.setInterval(() => {
      if (this.isVisible && this.notebook && !document.hidden && !this.refreshing) {
        void this.refresh();
      }
    }, POLL_MS);
  }

  dispose(): void {
    window.clearInterval(this.poller);
    this.socket?.close();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh(); // polling pauses while the panel is hidden
  }

  /** The action running on the current notebook, if any. */
  busyWith(): Action | undefined {
    return this.notebook ? this.busy.get(this.notebook.context.path) : undefined;
  }

  /** A button's label: the action, or its progress while it runs. */
  label(action: Action): string {
    return this.busyWith() === action ? PROGRESS[action] : LABELS[action];
  }

  /** Follow another notebook (or none); refresh whenever it is saved. */
  setNotebook(notebook: NotebookPanel | null): void {
    if (notebook === this.notebook) {
      return;
    }
    this.notebook?.context.saveState.disconnect(this.onSaved, this);
    this.notebook = notebook;
    notebook?.context.saveState.connect(this.onSaved, this);
    this.unfollow();
    this.autoFollowed = '';
    this.lastState = this.lastRuns = this.lastData = '';
    this.summary.replaceChildren();
    this.runsView.replaceChildren();
    this.renderData(null);
    this.say('');
    this.updateButtons();
    void this.refresh();
  }

  /**
   * Fetch the notebook's state and runs and draw them once. Concurrent calls are fine: only the
   * newest one draws. With `clearMessage`, a changed state clears the last action's message.
   */
  async refresh(clearMessage = true): Promise<void> {
    const generation = ++this.generation;
    const notebook = this.notebook;
    this.heading.textContent = notebook ? notebook.context.path : 'Open a notebook';
    if (!notebook) {
      return;
    }
    this.refreshing = true;
    try {
      await notebook.context.ready;
      const path = encodeURIComponent(notebook.context.path);
      const [state, runs, data] = await Promise.all([
        request<INotebookState>(`notebook?path=${path}`),
        request<{ runs: IRunSummary[] }>(`runs?path=${path}`).catch(() => ({ runs: [] })),
        request<IExploration>(`explore?path=${path}`).catch(() => null)
      ]);
      if (generation !== this.generation || notebook !== this.notebook) {
        return; // a newer refresh draws
      }
      const digest = JSON.stringify(state);
      if (digest !== this.lastState) {
        if ((clearMessage && this.lastState && !this.busyWith()) || this.notebookError) {
          this.say('');
        }
        this.lastState = digest;
        this.render(state);
      } else if (this.notebookError) {
        this.say('');
      }
      const dataDigest = JSON.stringify(data);
      if (dataDigest !== this.lastData) {
        this.lastData = dataDigest;
        this.renderData(data && !data.exploration && data.run ? data : null);
      }
      const runsDigest = JSON.stringify(runs.runs) + this.following;
      if (runsDigest !== this.lastRuns) {
        this.lastRuns = runsDigest;
        this.renderRuns(runs.runs);
      }
      if (state.live_run && state.live_run !== this.autoFollowed) {
        this.autoFollowed = state.live_run; // a live run of this bundle: follow it once, e.g. after a reload
        this.follow(state.live_run);
      } else if (!state.live_run && !this.following && !this.autoFollowed && runs.runs.length) {
        this.autoFollowed = runs.runs[0].run; // no live run: show the newest of this notebook, once
        this.follow(runs.runs[0].run);
      }
    } catch (error) {
      if (generation === this.generation) {
        this.say(String((error as Error).message), true);
        this.notebookError = true;
        this.lastState = '';
      }
    } finally {
      if (generation === this.generation) {
        this.refreshing = false;
      }
    }
  }

  private onSaved(_: unknown, state: string): void {
    if (state === 'completed') {
      void this.refresh();
    }
  }

  private render(state: INotebookState): void {
    const bundle = element('div', { class: 'caia-inline' },
      element('code', { 'data-caia': 'bundle-id', title: state.bundle_id }, state.short_id ?? shortOf(state.bundle_id)),
      copyButton(state.bundle_id, 'the full bundle id'));
    const where = state.bundle_path ? [element('div', { class: 'caia-inline' }, 'folder ', pathCode(state.bundle_path, { 'data-caia': 'bundle-path' }))] : [];
    const job = `${state.job.rounds} ${state.job.rounds === 1 ? 'round' : 'rounds'}, min_clients ${state.job.min_clients}, datasets: ${state.datasets.join(', ') || 'none'}`;
    this.submitReason.textContent = state.submit && !state.submit.ready ? state.submit.reason : '';
    this.buttons.get('submit')!.title = this.submitReason.textContent;
    this.showReasonOnce();
    this.summary.replaceChildren(
      element('h3', {}, 'Bundle'), bundle, ...where, element('p', {}, job),
      ...this.changes(state),
      element('h3', {}, 'Validation'), this.validation(state),
      element('h3', {}, `Federated cells (${state.cells.length})`), this.cells(state),
      element('h3', {}, 'Approvals'), this.sites(state)
    );
  }

  private validation(state: INotebookState): HTMLElement {
    const { state: outcome, summary, cell, line } = state.validation;
    if (this.busyWith() === 'validate') {
      return this.validating();
    }
    // the summary says the state ("passed in 14.09 s", "not validated"); the state word only when there is none
    const node = element('div', { 'data-caia': 'validation', 'data-state': outcome, class: `caia-state caia-${outcome}` }, summary || outcome);
    if (outcome === 'failed' && typeof cell === 'number') {
      const where = `cell ${cell + 1}${typeof line === 'number' ? `, line ${line}` : ''}`;
      node.classList.add('caia-goto');
      node.title = `go to ${where}`;
      node.setAttribute('role', 'button');
      node.append(element('span', { class: 'caia-where' }, ` (${where})`));
      node.onclick = () => void this.goTo(cell, line ?? null);
    }
    return node;
  }

  private validating(): HTMLElement {
    return element('div', { 'data-caia': 'validation', 'data-state': 'validating', class: 'caia-state caia-running' }, PROGRESS.validate);
  }

  /** Activate notebook cell `index` and select its editor line `line` (1-based). */
  private async goTo(index: number, line: number | null): Promise<void> {
    const content = this.notebook?.content;
    const cell = content?.widgets[index];
    if (!content || !cell) {
      return;
    }
    content.activeCellIndex = index;
    await content.scrollToCell(cell);
    await cell.ready;
    content.mode = 'edit';
    const editor = cell.editor;
    if (editor && line !== null) {
      const text = editor.getLine(line - 1) ?? '';
      editor.setSelection({ start: { line: line - 1, column: 0 }, end: { line: line - 1, column: text.length } });
    }
    editor?.focus();
  }

  private changes(state: INotebookState): HTMLElement[] {
    const changes = state.changes;
    if (!changes) {
      return [];
    }
    return [element('div', { 'data-caia': 'changes', class: 'caia-changes' },
      element('strong', {}, `Changed since the version sites approved (${changes.short_id})`),
      element('ul', {}, ...changes.summary.map(line => element('li', {}, line))))];
  }

  private cells(state: INotebookState): HTMLElement {
    return element('ol', { 'data-caia': 'cells' },
      ...state.cells.map(cell => element('li', { title: `notebook cell ${cell.index + 1}` }, cell.first_line || '(empty)')));
  }

  private sites(state: INotebookState): HTMLElement {
    if (!state.sites.length) {
      return element('p', {}, 'No site directories beside this notebook (sites/).');
    }
    return element('div', { 'data-caia': 'sites', class: 'caia-sites' }, ...state.sites.map(site => {
      const approval = site.approval === 'older' ? 'older version' : site.approval; // the detail tells which version was approved
      const node = element('div', { class: 'caia-site', 'data-site': site.name },
        element('div', { class: 'caia-inline' }, element('span', { class: 'caia-site-name' }, site.name), ' ',
          element('span', { class: `caia-state caia-${site.approval}`, 'data-caia': 'approval', 'data-state': site.approval }, approval)),
        element('div', { class: 'caia-reason' }, unlessRepeated(site.detail, approval)));
      if (site.approve_command && site.approval !== 'approved') {
        node.append(element('div', { class: 'caia-command' },
          element('code', { 'data-caia': 'approve-command' }, site.approve_command),
          copyButton(site.approve_command, `the approve command for ${site.name}'s reviewer`)));
      }
      return node;
    }));
  }

  private renderRuns(runs: IRunSummary[]): void {
    if (!runs.length) {
      this.runsView.replaceChildren();
      return;
    }
    const rows = runs.map(run => {
      const started = new Date(run.started_at);
      const final = Object.entries(run.final ?? {}).map(([name, sites]) => `${name}: ${metrics(sites)}`);
      const row = element('div', { class: 'caia-run-row', 'data-run': run.run, role: 'button', title: `follow ${run.run}` },
        element('div', { class: 'caia-inline' },
          element('code', { title: run.bundle_id }, run.short_id), ' ',
          element('span', {}, isNaN(started.getTime()) ? run.started_at : started.toLocaleString()), ' · ',
          element('span', {}, seconds(run.duration_s)), ' ',
          element('span', { class: `caia-state caia-${run.status}`, 'data-caia': 'run-row-status' }, run.status)),
        element('div', { class: 'caia-reason' }, run.headline ?? ''));
      if (Object.keys(run.global ?? {}).length) {
        row.append(element('div', { class: 'caia-reason', 'data-caia': 'global' }, `global ${metrics(run.global)}`));
      }
      if (final.length) {
        row.append(element('div', { class: 'caia-reason caia-final' }, `final ${final.join('; ')}`));
      }
      row.classList.toggle('caia-selected', run.run === this.following);
      row.onclick = () => this.follow(run.run);
      return row;
    });
    this.runsView.replaceChildren(element('h3', {}, `Runs (${runs.length})`), element('div', { 'data-caia': 'runs' }, ...rows));
  }

  /** The Data section: the notebook's last exploration, per column its statistics per site and
   * pooled, its histogram, and the category counts; what a site withheld reads "suppressed". */
  private renderData(data: IExploration | null): void {
    disposeCharts(this.dataBody);
    this.dataView.hidden = data === null;
    if (!data) {
      this.dataBody.replaceChildren();
      return;
    }
    const dataset = data.datasets[0];
    const who = [...data.sites, 'pooled'];
    const rowOf = (statistic: string, feature: string) =>
      data.tables[statistic]?.find(row => row.dataset === dataset && row.feature === feature);
    const cell = (value: number | string | undefined) =>
      typeof value === 'number'
        ? element('td', {}, Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4))))
        : element('td', value === undefined ? {} : { class: 'caia-suppressed' }, value ?? '–');
    const statistics: [string, string][] = [['count', 'count'], ['failure_count', 'missing'], ['mean', 'mean'], ['stddev', 'stddev']];
    const columns = data.spec.columns.map(column => {
      const table = element('table', { class: 'caia-data-table', 'data-caia-column': column },
        element('thead', {}, element('tr', {}, element('th', {}, ''), ...statistics.map(([, label]) => element('th', {}, label)))),
        element('tbody', {}, ...who.map(site => element('tr', { 'data-site': site },
          element('th', {}, site), ...statistics.map(([statistic]) => cell(rowOf(statistic, column)?.[site]))))));
      const histogram = data.histograms[column];
      return element('div', { class: 'caia-data-column' }, element('h4', {}, column), table,
        ...(histogram ? [drawHistogram(column, histogram, data.sites)] : []));
    });
    const categories = (data.tables.count ?? []).filter(row => row.dataset === dataset && !data.spec.columns.includes(row.feature));
    const categoryTable = categories.length
      ? [element('h4', {}, 'Categories (count)'), element('table', { class: 'caia-data-table', 'data-caia': 'categories' },
          element('thead', {}, element('tr', {}, element('th', {}, ''), ...who.map(site => element('th', {}, site)))),
          element('tbody', {}, ...categories.map(row => element('tr', {}, element('th', {}, row.feature), ...who.map(site => cell(row[site]))))))]
      : [];
    const withheld = data.suppressed.length;
    this.dataBody.replaceChildren(
      element('div', { class: 'caia-reason' }, `Last exploration of dataset ${dataset} (statistics bundle ${shortOf(data.bundle_id)}): `,
        pathCode(data.run, { 'data-caia': 'data-run' })),
      ...columns, ...categoryTable,
      element('p', { class: 'caia-reason', 'data-caia': 'suppressed' }, withheld
        ? `${withheld} ${withheld === 1 ? 'statistic' : 'statistics'} suppressed by the sites' thresholds`
        : 'nothing suppressed'));
  }

  async validate(): Promise<void> {
    await this.act('validate');
  }

  async review(): Promise<void> {
    await this.act('review');
  }

  async submit(): Promise<void> {
    await this.act('submit');
  }

  private async work(action: Action, path: string): Promise<string | (string | Node)[]> {
    if (action === 'validate') {
      const result = await post<{ passed: boolean; summary: string }>('validate', { path });
      return result.passed ? 'validation passed' : `validation failed: ${result.summary}`;
    }
    if (action === 'review') {
      const result = await post<{ review: string }>('review', { path });
      this.openFile(result.review);
      return ['review: ', pathCode(result.review)];
    }
    const state = await post<IRunState>('runs', { path, target: this.target.value });
    this.autoFollowed = state.run!;
    this.follow(state.run!, state);
    return `run ${state.run}`;
  }

  /** Save first (the bundle is built from the saved notebook), then run the action and report it. */
  private async act(action: Action): Promise<void> {
    const notebook = this.notebook;
    if (!notebook) {
      return this.say('Open a notebook first.', true);
    }
    const path = notebook.context.path;
    if (this.busy.has(path)) {
      return; // one action at a time per notebook
    }
    this.busy.set(path, action);
    this.updateButtons();
    this.lastState = ''; // the next refresh draws (the validation line shows the progress)
    if (action === 'validate') {
      this.summary.querySelector('[data-caia="validation"]')?.replaceWith(this.validating());
    }
    this.say(PROGRESS[action]);
    try {
      await notebook.context.save();
      const said = await this.work(action, path);
      if (notebook === this.notebook) {
        this.say(said);
      }
    } catch (error) {
      if (notebook === this.notebook) {
        this.say(String((error as Error).message), true);
      }
    } finally {
      this.busy.delete(path);
      this.updateButtons();
      this.lastState = ''; // redraw the validation line, whatever the outcome
    }
    await this.refresh(false);
  }

  private updateButtons(): void {
    const busy = this.busyWith();
    for (const [action, button] of this.buttons) {
      button.disabled = busy !== undefined;
      button.textContent = this.label(action);
    }
    this.onBusy();
  }

  /** Show a run (from its first record on) and follow its stream until it ends. */
  private follow(run: string, state?: IRunState): void {
    this.unfollow();
    this.following = run;
    this.records = [];
    this.runsView.querySelectorAll<HTMLElement>('[data-run]').forEach(row => row.classList.toggle('caia-selected', row.dataset.run === run));
    if (state) {
      this.drawRun(state);
    }
    const socket = streamRun(run, update => this.drawRun(update), () => {
      if (socket === this.socket) {
        this.socket = null;
        void this.refresh(); // the run ended: its row and the notebook's live run change
      }
    });
    this.socket = socket;
  }

  private unfollow(): void {
    const socket = this.socket;
    this.socket = null;
    socket?.close();
    this.following = '';
    disposeCharts(this.charts);
    this.charts = element('div', { 'data-caia': 'charts', class: 'caia-charts' });
    this.runView.replaceChildren();
  }

  private async abort(run: string, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    button.textContent = 'aborting…';
    try {
      const state = await remove<IRunState>(`run?path=${encodeURIComponent(run)}`);
      if (run === this.following) {
        this.drawRun(state); // the state once the abort is recorded, whatever the stream last said
      }
    } catch (error) {
      this.say(String((error as Error).message), true);
      button.disabled = false;
      button.textContent = 'Abort';
    }
  }

  private drawRun(state: IRunState): void {
    const error = state as unknown as { error?: string; message: string };
    if (error.error) {
      return this.say(error.message, true);
    }
    if (state.since === 0) {
      this.records = []; // a state from the first record on (the submit answer, then the stream's first message)
    }
    this.records.push(...state.records);
    const run = this.following;
    const sites = Object.keys(state.sites);
    const heading = element('h3', { class: 'caia-inline' }, 'Run ');
    if (state.bundle_id) {
      heading.append(element('code', { 'data-caia': 'run-id', title: state.bundle_id }, state.short_id ?? shortOf(state.bundle_id)));
    }
    if (!FINAL_STATUSES.includes(state.status)) {
      const abort = element('button', { class: 'jp-Button jp-mod-styled caia-button', 'data-caia-action': 'abort' }, 'Abort');
      abort.onclick = () => void this.abort(run, abort);
      heading.append(' ', abort);
    }
    const headlineText = unlessRepeated(state.headline, state.status);
    const said = headlineText ? '' : unlessRepeated(state.message, state.status);
    const status = element('div', { 'data-caia': 'run-status', 'data-status': state.status, class: `caia-state caia-run-${state.status}` },
      `run ${state.status}${said ? ': ' + said : ''}`);
    status.title = state.message; // the whole message; the headline and the reasons per site tell it shorter
    const headline = element('div', { 'data-caia': 'headline', class: 'caia-reason' }, headlineText);
    const progress = element('div', { class: 'caia-inline' }, element('progress', { max: String(state.rounds), value: String(state.rounds_done) }),
      ` ${state.rounds_done} of ${state.rounds} ${state.rounds === 1 ? 'round' : 'rounds'} done`);
    const table = element('div', { 'data-caia': 'run-sites', class: 'caia-sites' }, ...sites.map(site => {
      const tone = toneOf(state, site);
      return element('div', { class: 'caia-site', 'data-site': site, 'data-tone': tone },
        element('div', { class: 'caia-inline' }, legendKey(sites, site), element('span', { class: 'caia-site-name' }, site), ' ',
          element('span', { class: `caia-state caia-tone-${tone}`, 'data-caia': 'site-state' }, state.sites[site])),
        element('div', { class: 'caia-reason' }, state.reasons[site] ?? ''));
    }));
    const charts = this.charts; // kept across states: the charts update in place
    drawCharts(charts, this.records, sites, state.rounds, state.global ?? [], state.final_round ?? null);
    const notes = element('ul', { 'data-caia': 'run-notes', class: 'caia-notes' }, ...state.notes.map(note => element('li', {}, note)));
    this.runView.replaceChildren(heading, status, headline, progress, table, charts, notes);
  }

  private say(text: string | (string | Node)[], error = false): void {
    this.notebookError = false;
    this.message.replaceChildren(...(typeof text === 'string' ? [text] : text));
    this.message.className = error ? 'caia-message caia-error' : 'caia-message';
    this.showReasonOnce();
  }

  /** Why Submit is not ready, under the buttons, unless the message above already says it. */
  private showReasonOnce(): void {
    const reason = (this.submitReason.textContent ?? '').trim();
    const said = (this.message.textContent ?? '').trim();
    this.submitReason.hidden = !!reason && !!said && (said.includes(reason) || reason.includes(said));
  }

  private notebook: NotebookPanel | null = null;
  private notebookError = false; // the message shows why the notebook cannot be bundled
  private busy = new Map<string, Action>(); // notebook path -> its running action
  private buttons = new Map<Action, HTMLButtonElement>();
  private generation = 0; // of refresh(): only the newest draws
  private refreshing = false;
  private poller: number;
  private lastState = ''; // the notebook state drawn, as JSON
  private lastRuns = '';
  private lastData = ''; // the exploration drawn, as JSON
  private following = ''; // the run shown
  private autoFollowed = ''; // the live run followed on its own (not again once left)
  private socket: WebSocket | null = null;
  private records: [string, number, string, number | null][] = [];
  private heading = element('h2');
  private message = element('div', { class: 'caia-message' });
  private submitReason = element('div', { 'data-caia': 'submit-reason', class: 'caia-reason caia-submit-reason' });
  private summary = element('div', { 'data-caia': 'summary' });
  private runsView = element('div', { 'data-caia': 'runs-view' });
  private runView = element('div', { 'data-caia': 'run' });
  private dataView = element('details', { 'data-caia': 'data', class: 'caia-data', open: '' });
  private dataBody = element('div');
  private charts = element('div', { 'data-caia': 'charts', class: 'caia-charts' });
  private target = element('select', { 'data-caia': 'target' });
}
