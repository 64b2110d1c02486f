// The Review view: a packed bundle (.zip) or a bundle folder as its site's reviewer reads it — what
// the code can do, what changed since the site last approved, the full review page — and the
// Approve and Reject buttons, which sign on the server with the reviewer's key (never sent here).
import { ABCWidgetFactory, DocumentRegistry, DocumentWidget } from '@jupyterlab/docregistry';
import { Widget } from '@lumino/widgets';

import { IBundleChanges, IBundleView, ICapabilities, approveBundle, bundleView, rejectBundle } from './api';
import { element } from './panel';

export const FACTORY = 'Caia Review';
export const ZIP_TYPE = 'caia-bundle-zip';

export class ReviewView extends Widget {
  private view: IBundleView | null = null;
  private busy = false;

  constructor(readonly path: string) {
    super();
    this.addClass('caia-review');
    // No title of its own: in a document widget a changed title renames the file.
    void this.load();
  }

  /** Read the bundle again from the server and show it. */
  async load(): Promise<void> {
    this.node.replaceChildren(element('p', { class: 'caia-review-status' }, `reading ${this.path}…`));
    try {
      this.view = await bundleView(this.path);
    } catch (error) {
      this.node.replaceChildren(element('p', { class: 'caia-review-error', role: 'alert' }, String((error as Error).message ?? error)));
      return;
    }
    this.render(this.view);
  }

  private render(view: IBundleView): void {
    const header = element(
      'header',
      { class: 'caia-review-header' },
      element('h2', {}, 'Review of bundle ', element('code', { class: 'caia-review-id', title: view.bundle_id }, view.short_id)),
      element(
        'p',
        {},
        'site ',
        element('strong', { class: 'caia-review-site' }, view.site ?? 'none'),
        ' · reviewer key ',
        element('code', { class: 'caia-review-key' }, view.key_id ?? 'none')
      )
    );
    const frame = element('iframe', { class: 'caia-review-page', sandbox: '', title: `review page of ${view.short_id}` });
    frame.srcdoc = view.review_html;
    this.node.replaceChildren(
      header,
      this.actions(view),
      capabilitiesSection(view.capabilities),
      changesSection(view.changes),
      element('section', {}, element('h3', {}, 'Every file of the bundle'), frame)
    );
  }

  private actions(view: IBundleView): HTMLElement {
    const selects = view.requested.map(name => {
      const select = element('select', { 'data-caia-dataset': name, 'aria-label': `catalog dataset released as ${name}` });
      select.append(element('option', { value: '' }, '— choose a catalog dataset —'));
      for (const id of view.catalog) {
        select.append(element('option', { value: id }, id));
      }
      select.value = view.catalog.includes(name) ? name : '';
      return element('label', { class: 'caia-review-release' }, element('code', {}, name), ' ← ', select);
    });
    const expiry = element('input', {
      class: 'caia-review-expiry',
      type: 'number',
      min: '0',
      step: 'any',
      placeholder: 'site default',
      'aria-label': 'approval expires in days (empty: the site default)'
    });
    const approve = element('button', { class: 'caia-review-approve', type: 'button' }, 'Approve');
    const reason = element('input', { class: 'caia-review-reason', type: 'text', placeholder: 'reason for rejecting (required)', 'aria-label': 'reason for rejecting' });
    const reject = element('button', { class: 'caia-review-reject', type: 'button' }, 'Reject');
    const result = element('p', { class: 'caia-review-result', role: 'status' }, view.can_sign ? '' : view.reason);
    const buttons = [approve, reject];
    const refresh = (): void => {
      const unreleased = selects.some(label => !(label.querySelector('select') as HTMLSelectElement).value);
      approve.disabled = this.busy || !view.can_sign || unreleased || !expiry.validity.valid;
      reject.disabled = this.busy || !view.can_sign || !reason.value.trim();
    };
    const act = async (button: HTMLButtonElement, progress: string, work: () => Promise<Record<string, unknown>>, done: string) => {
      this.busy = true;
      const label = button.textContent;
      button.textContent = progress;
      result.className = 'caia-review-result';
      result.textContent = '';
      refresh();
      try {
        const answer = await work();
        result.textContent = done + (answer.expires_at ? `, expires ${answer.expires_at}` : '');
        result.classList.add('caia-ok');
      } catch (error) {
        result.textContent = String((error as Error).message ?? error);
        result.classList.add('caia-bad');
      } finally {
        this.busy = false;
        button.textContent = label;
        refresh();
      }
    };
    approve.onclick = () => {
      const datasets: Record<string, string> = {};
      for (const label of selects) {
        const select = label.querySelector('select') as HTMLSelectElement;
        datasets[select.dataset.caiaDataset as string] = select.value;
      }
      const days = expiry.value.trim() ? Number(expiry.value) : null; // the server refuses 0 or less, naming the field
      void act(approve, 'signing…', () => approveBundle(view.path, view.bundle_id, datasets, days), `approved ${view.short_id} at ${view.site}`);
    };
    reject.onclick = () =>
      void act(reject, 'signing…', () => rejectBundle(view.path, view.bundle_id, reason.value.trim()), `rejected ${view.short_id} at ${view.site}`);
    reason.oninput = refresh;
    expiry.oninput = refresh;
    for (const label of selects) {
      (label.querySelector('select') as HTMLSelectElement).onchange = refresh;
    }
    refresh();
    return element(
      'section',
      { class: 'caia-review-actions' },
      element('h3', {}, 'Datasets to release'),
      ...(selects.length ? selects : [element('p', {}, 'none requested')]),
      element(
        'div',
        { class: 'caia-review-buttons' },
        element('label', { class: 'caia-review-expiry-label' }, 'expires in ', expiry, ' days'),
        ...buttons.slice(0, 1),
        reason,
        ...buttons.slice(1)
      ),
      result
    );
  }
}

function capabilitiesSection(report: ICapabilities): HTMLElement {
  const section = element('section', { class: 'caia-review-capabilities' }, element('h3', {}, 'What the code can do'));
  section.append(element('p', { class: 'caia-review-advice' }, report.advice));
  const list = element('ul', {});
  for (const f of report.findings) {
    // the cell's line as the notebook editor numbers it (its %%federated line is line 1)
    const where = f.cell !== null ? `cell ${f.cell}, line ${f.cell_line}; federated.py line ${f.line}` : `federated.py line ${f.line}, before the first cell`;
    list.append(element('li', { 'data-caia-capability': f.capability }, element('strong', {}, f.heading), ': ', element('code', {}, f.what), ` (${where})`));
  }
  section.append(report.findings.length ? list : element('p', {}, 'nothing beyond computing with ctx'));
  for (const value of report.captured) {
    section.append(element('p', {}, 'captured ', element('code', {}, value.name), ` (${value.type}, ${value.size} bytes)`));
  }
  return section;
}

function changesSection(changes: IBundleChanges | null): HTMLElement {
  const section = element('section', { class: 'caia-review-changes' });
  if (!changes) {
    section.append(element('h3', {}, 'Changes'), element('p', {}, 'first bundle this site reviews: nothing to compare'));
    return section;
  }
  section.append(element('h3', {}, 'Changed since this site approved ', element('code', {}, changes.base.short_id)));
  if (changes.cosmetic) {
    section.append(
      element('p', { class: 'caia-review-cosmetic' }, 'cosmetic: same syntax tree (comments, blank lines, formatting); the bytes changed, so it still needs a new approval')
    );
  }
  for (const line of changes.other) {
    section.append(element('p', {}, line));
  }
  for (const cell of changes.cells.filter(c => c.status !== 'unchanged')) {
    section.append(element('h4', {}, `${cell.title}: ${cell.status}`), diffBlock(cell.diff));
  }
  return section;
}

/** A unified diff, its removed and added lines marked for colour. */
function diffBlock(diff: string): HTMLElement {
  const block = element('pre', { class: 'caia-review-diff' });
  for (const line of diff.split('\n')) {
    const kind = line.startsWith('+') ? 'caia-diff-add' : line.startsWith('-') ? 'caia-diff-del' : line.startsWith('@@') ? 'caia-diff-hunk' : '';
    block.append(element('span', kind ? { class: kind } : {}, line + '\n'));
  }
  return block;
}

/** Opens a .zip as its Review view (the file is loaded base64 by the registry; the view reads the server's copy). */
export class ReviewFactory extends ABCWidgetFactory<DocumentWidget<ReviewView>> {
  protected createNewWidget(context: DocumentRegistry.Context): DocumentWidget<ReviewView> {
    return new DocumentWidget({ content: new ReviewView(context.localPath), context });
  }
}
