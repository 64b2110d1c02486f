// caia-jupyter in JupyterLab: federated cells marked in notebooks, the "Federated" sidebar,
// and commands (palette and notebook toolbar) to toggle a cell, validate, review and submit.
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, Notification } from '@jupyterlab/apputils';
import { Cell } from '@jupyterlab/cells';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { CommandToolbarButton } from '@jupyterlab/ui-components';

import { Action, FederatedPanel } from './panel';
import { FACTORY, ReviewFactory, ReviewView, ZIP_TYPE } from './review';

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

/** Add or remove the %%federated line of a code cell; other cells are never marked. */
function toggleFederated(cell: Cell): void {
  if (cell.model.type !== 'code') {
    Notification.warning(`Only code cells can be federated: this is a ${cell.model.type} cell.`, { autoClose: 4000 });
    return;
  }
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

/** A packed bundle (.zip) opens as its Review view; "Review bundle" in the file browser opens a zip or a folder so. */
function registerReview(app: JupyterFrontEnd, browser: IDefaultFileBrowser | null): void {
  app.docRegistry.addFileType({
    name: ZIP_TYPE,
    displayName: 'Zip archive (caia bundle)',
    extensions: ['.zip'],
    mimeTypes: ['application/zip'],
    fileFormat: 'base64',
    contentType: 'file'
  });
  app.docRegistry.addWidgetFactory(
    new ReviewFactory({ name: FACTORY, modelName: 'base64', fileTypes: [ZIP_TYPE], defaultFor: [ZIP_TYPE], readOnly: true })
  );
  const open = (path: string, isDir: boolean): void => {
    if (!isDir) {
      void app.commands.execute('docmanager:open', { path, factory: FACTORY });
      return;
    }
    const id = `caia-review-${path}`;
    const existing = Array.from(app.shell.widgets('main')).find(widget => widget.id === id);
    if (existing) {
      app.shell.activateById(id);
      return;
    }
    const widget = new MainAreaWidget({ content: new ReviewView(path) });
    widget.id = id;
    widget.title.label = `Review ${path.split('/').pop() || path}`;
    widget.title.closable = true;
    app.shell.add(widget, 'main');
  };
  app.commands.addCommand('caia:review-bundle', {
    label: 'Review bundle',
    caption: 'Review a bundle folder or a packed bundle (.zip) and approve or reject it for your site',
    isVisible: () => {
      const item = browser?.selectedItems().next();
      return !!item && !item.done && (item.value.type === 'directory' || item.value.path.toLowerCase().endsWith('.zip'));
    },
    execute: () => {
      const item = browser?.selectedItems().next();
      if (item && !item.done) {
        open(item.value.path, item.value.type === 'directory');
      }
    }
  });
  app.contextMenu.addItem({ command: 'caia:review-bundle', selector: '.jp-DirListing-item[data-isdir]', rank: 3 });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'caia-jupyter:plugin',
  description: 'Federated cells, bundle id, validation, approvals and live runs',
  autoStart: true,
  requires: [ICommandPalette, INotebookTracker],
  optional: [ILayoutRestorer, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette,
    tracker: INotebookTracker,
    restorer: ILayoutRestorer | null,
    browser: IDefaultFileBrowser | null
  ) => {
    registerReview(app, browser);
    const panel = new FederatedPanel(
      path => void app.commands.execute('docmanager:open', { path }),
      () => app.commands.notifyCommandChanged()
    );
    app.shell.add(panel, 'left', { rank: 900 });
    restorer?.add(panel, panel.id);

    tracker.forEach(watch);
    tracker.widgetAdded.connect((_, notebook) => watch(notebook));
    tracker.currentChanged.connect((_, notebook) => panel.setNotebook(notebook));
    panel.setNotebook(tracker.currentWidget);

    // On the notebook toolbar (args.toolbar) a command is labelled by its short name, or its progress.
    const actions: [string, string, Action][] = [
      ['caia:validate', 'Validate federated bundle', 'validate'],
      ['caia:review', 'Review federated bundle', 'review'],
      ['caia:submit', 'Submit federated bundle', 'submit']
    ];
    for (const [id, label, action] of actions) {
      app.commands.addCommand(id, {
        label: args => (args.toolbar ? panel.label(action) : label),
        caption: label,
        execute: () => panel[action](),
        isEnabled: () => !!tracker.currentWidget && !panel.busyWith()
      });
    }
    app.commands.addCommand('caia:toggle-federated', {
      label: args => (args.toolbar ? 'Federated' : 'Toggle federated cell'),
      caption: 'Toggle federated cell',
      execute: () => tracker.activeCell && toggleFederated(tracker.activeCell),
      isEnabled: () => !!tracker.currentWidget
    });
    app.commands.addCommand('caia:open-panel', { label: 'Open the Federated panel', execute: () => app.shell.activateById(panel.id) });
    for (const id of ['caia:toggle-federated', ...actions.map(([command]) => command), 'caia:open-panel']) {
      palette.addItem({ command: id, category: 'Federated (caia)' });
    }
    app.commands.addKeyBinding({ command: 'caia:toggle-federated', keys: ['Accel Shift F'], selector: '.jp-Notebook' });

    tracker.widgetAdded.connect((_, notebook) => {
      for (const [name, id] of [
        ['caia-toggle', 'caia:toggle-federated'],
        ['caia-validate', 'caia:validate'],
        ['caia-submit', 'caia:submit']
      ]) {
        notebook.toolbar.insertItem(10, name, new CommandToolbarButton({ commands: app.commands, id, args: { toolbar: true } }));
      }
    });
  }
};

export default plugin;
