// caia-jupyter in JupyterLab: federated cells marked in notebooks, the "Federated" sidebar,
// and commands (palette and notebook toolbar) to toggle a cell, validate, review and submit.
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, ToolbarButton } from '@jupyterlab/apputils';
import { Cell } from '@jupyterlab/cells';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';

import { FederatedPanel } from './panel';

const MAGIC = '%%federated';
const MARK = 'caia-federated-cell';

/** A cell is federated when its first non-empty line is a %%federated line. */
export function isFederated(source: string): boolean {
  const first = source.split('\n').find(line => line.trim() !== '') ?? '';
  const head = first.trim();
  return head === MAGIC || head.startsWith(MAGIC + ' ');
}

function mark(cell: Cell): void {
  cell.toggleClass(MARK, cell.model.type === 'code' && isFederated(cell.model.sharedModel.getSource()));
}

/** Keep every cell of a notebook marked as cells are added, moved or edited. */
function watch(panel: NotebookPanel): void {
  const notebook = panel.content;
  const watched = new WeakSet<Cell>();
  const refresh = (): void => {
    for (const cell of notebook.widgets) {
      if (!watched.has(cell)) {
        watched.add(cell);
        cell.model.sharedModel.changed.connect((_, change) => {
          if (change.sourceChange) {
            mark(cell);
          }
        });
      }
      mark(cell);
    }
  };
  void panel.context.ready.then(() => {
    notebook.model?.cells.changed.connect(() => requestAnimationFrame(refresh));
    refresh();
  });
}

function toggleFederated(cell: Cell): void {
  const shared = cell.model.sharedModel;
  const source = shared.getSource();
  if (isFederated(source)) {
    const lines = source.split('\n');
    const at = lines.findIndex(line => line.trim() !== '');
    lines.splice(at, 1);
    shared.setSource(lines.join('\n'));
  } else {
    shared.setSource(`${MAGIC}\n${source}`);
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'caia-jupyter:plugin',
  description: 'Federated cells, bundle id, validation, approvals and live runs',
  autoStart: true,
  requires: [ICommandPalette, INotebookTracker],
  optional: [ILayoutRestorer],
  activate: (app: JupyterFrontEnd, palette: ICommandPalette, tracker: INotebookTracker, restorer: ILayoutRestorer | null) => {
    const panel = new FederatedPanel(path => void app.commands.execute('docmanager:open', { path }));
    app.shell.add(panel, 'left', { rank: 900 });
    restorer?.add(panel, panel.id);

    tracker.forEach(watch);
    tracker.widgetAdded.connect((_, notebook) => watch(notebook));
    tracker.currentChanged.connect((_, notebook) => panel.setNotebook(notebook));
    panel.setNotebook(tracker.currentWidget);

    const commands: [string, string, () => unknown][] = [
      ['caia:toggle-federated', 'Toggle federated cell', () => tracker.activeCell && toggleFederated(tracker.activeCell)],
      ['caia:validate', 'Validate federated bundle', () => panel.validate()],
      ['caia:review', 'Review federated bundle', () => panel.review()],
      ['caia:submit', 'Submit federated bundle', () => panel.submit()],
      ['caia:open-panel', 'Open the Federated panel', () => app.shell.activateById(panel.id)]
    ];
    for (const [id, label, execute] of commands) {
      app.commands.addCommand(id, { label, execute, isEnabled: () => id === 'caia:open-panel' || !!tracker.currentWidget });
      palette.addItem({ command: id, category: 'Federated (caia)' });
    }
    app.commands.addKeyBinding({ command: 'caia:toggle-federated', keys: ['Accel Shift F'], selector: '.jp-Notebook' });

    tracker.widgetAdded.connect((_, notebook) => {
      const buttons: [string, string, string][] = [
        ['caia-toggle', 'caia:toggle-federated', 'Federated'],
        ['caia-validate', 'caia:validate', 'Validate'],
        ['caia-submit', 'caia:submit', 'Submit']
      ];
      for (const [name, command, label] of buttons) {
        const button = new ToolbarButton({
          label,
          tooltip: app.commands.label(command),
          onClick: () => void app.commands.execute(command)
        });
        notebook.toolbar.insertItem(10, name, button);
      }
    });
  }
};

export default plugin;
