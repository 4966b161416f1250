/**
 * nbckpt's JupyterLab extension: a "Checkpoint viewer" for checkpoint files
 * (double-click, or Open With), a diff of two selected checkpoints, and
 * "Load into notebook". The data comes from nbckpt's server extension; no
 * kernel is used, and the file's bytes are never sent to the browser.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { ABCWidgetFactory, DocumentModel, DocumentRegistry, DocumentWidget } from '@jupyterlab/docregistry';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { Contents } from '@jupyterlab/services';

import { IEntry } from './api';
import { DiffView } from './diff';
import { loadCellCode } from './loadcell';
import { CheckpointViewer } from './viewer';

const FACTORY = 'Checkpoint viewer';
const MODEL = 'nbckpt-no-content';
const FILE_TYPES: Partial<DocumentRegistry.IFileType>[] = [
  {
    name: 'nbckpt-checkpoint',
    displayName: 'Checkpoint',
    extensions: ['.pt', '.pth', '.bin', '.ckpt', '.safetensors'],
    mimeTypes: ['application/octet-stream'],
    contentType: 'file',
    fileFormat: 'base64',
    iconClass: 'jp-MaterialIcon jp-JSONIcon'
  },
  {
    name: 'nbckpt-sharded-index',
    displayName: 'Sharded checkpoint index',
    extensions: ['.index.json'],
    mimeTypes: ['application/json'],
    contentType: 'file',
    fileFormat: 'text',
    iconClass: 'jp-MaterialIcon jp-JSONIcon'
  }
];

/** A model that never reads the file: the viewer asks the server for what it shows. */
class NoContentModelFactory implements DocumentRegistry.IModelFactory<DocumentRegistry.IModel> {
  readonly name = MODEL;
  readonly contentType: Contents.ContentType = 'file';
  readonly fileFormat: Contents.FileFormat = null;
  readonly collaborative = false;
  isDisposed = false;
  dispose(): void {
    this.isDisposed = true;
  }
  preferredLanguage(): string {
    return '';
  }
  createNew(options: DocumentRegistry.IModelOptions<any> = {}): DocumentRegistry.IModel {
    const model = new DocumentModel(options);
    model.readOnly = true;
    return model;
  }
}

class ViewerFactory extends ABCWidgetFactory<DocumentWidget<CheckpointViewer>, DocumentRegistry.IModel> {
  constructor(options: DocumentRegistry.IWidgetFactoryOptions, private _loadInto: (path: string, entry: IEntry, device: string) => string) {
    super(options);
  }
  protected createNewWidget(context: DocumentRegistry.IContext<DocumentRegistry.IModel>): DocumentWidget<CheckpointViewer> {
    const content = new CheckpointViewer(context.localPath, this._loadInto);
    const widget = new DocumentWidget({ content, context });
    widget.addClass('nbckpt-viewer-document');
    return widget;
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbckpt:viewer',
  description: 'Open checkpoint files (.pt, .pth, .bin, .ckpt, .safetensors, *.index.json) in a viewer.',
  autoStart: true,
  optional: [INotebookTracker, IDefaultFileBrowser],
  activate: (app: JupyterFrontEnd, notebooks: INotebookTracker | null, browser: IDefaultFileBrowser | null) => {
    const loadInto = (path: string, entry: IEntry, device: string): string => {
      const panel = notebooks && notebooks.currentWidget;
      if (!panel) {
        return 'Open a notebook first: the cell goes into the active notebook.';
      }
      const code = loadCellCode(path, panel.context.localPath, entry.name, device, entry.kind === 'value');
      const notebook = panel.content;
      if (notebook.widgets.length === 1 && notebook.activeCell && notebook.activeCell.model.sharedModel.getSource() === '') {
        notebook.activeCell.model.sharedModel.setSource(code); // an empty notebook: use its cell
      } else {
        NotebookActions.insertBelow(notebook);
        notebook.activeCell!.model.sharedModel.setSource(code);
      }
      app.shell.activateById(panel.id);
      return `Inserted a cell in ${PathExt.basename(panel.context.path)}: run it to load ${entry.name || '(root)'}.`;
    };

    for (const fileType of FILE_TYPES) {
      app.docRegistry.addFileType(fileType);
    }
    app.docRegistry.addModelFactory(new NoContentModelFactory());
    const factory = new ViewerFactory(
      {
        name: FACTORY,
        label: 'Checkpoint viewer',
        modelName: MODEL,
        fileTypes: FILE_TYPES.map(ft => ft.name!),
        defaultFor: FILE_TYPES.map(ft => ft.name!),
        readOnly: true
      },
      loadInto
    );
    app.docRegistry.addWidgetFactory(factory);

    app.commands.addCommand('nbckpt:diff', {
      label: 'Compare checkpoints (diff)',
      caption: 'The arrays that differ between the two selected checkpoints, most changed first',
      isVisible: () => !!browser && Array.from(browser.selectedItems()).length === 2,
      execute: args => {
        let a = args.a as string | undefined;
        let b = args.b as string | undefined;
        if ((!a || !b) && browser) {
          const items = Array.from(browser.selectedItems());
          if (items.length === 2) {
            [a, b] = [items[0].path, items[1].path];
          }
        }
        if (!a || !b) {
          return;
        }
        const content = new DiffView(a, b);
        const widget = new MainAreaWidget({ content });
        widget.id = content.id + '-panel';
        widget.title.label = content.title.label;
        widget.title.closable = true;
        app.shell.add(widget, 'main');
        app.shell.activateById(widget.id);
        return widget;
      }
    });
    app.contextMenu.addItem({ command: 'nbckpt:diff', selector: '.jp-DirListing-item[data-isdir]', rank: 3 });

    // A torch.distributed.checkpoint folder (or a folder of shards) is a folder: double-clicking enters it,
    // so the viewer is offered in its context menu.
    app.commands.addCommand('nbckpt:open', {
      label: 'Open in checkpoint viewer',
      caption: 'Open this checkpoint folder (torch.distributed.checkpoint, or shards with an index) in the viewer',
      isVisible: () => !!browser && Array.from(browser.selectedItems()).length === 1,
      execute: args => {
        let path = args.path as string | undefined;
        if (!path && browser) {
          const items = Array.from(browser.selectedItems());
          path = items.length === 1 ? items[0].path : undefined;
        }
        if (!path) {
          return;
        }
        const content = new CheckpointViewer(path, loadInto);
        const widget = new MainAreaWidget({ content });
        widget.id = content.id + '-panel';
        widget.title.label = PathExt.basename(path);
        widget.title.closable = true;
        app.shell.add(widget, 'main');
        app.shell.activateById(widget.id);
        return widget;
      }
    });
    app.contextMenu.addItem({ command: 'nbckpt:open', selector: '.jp-DirListing-item[data-isdir="true"]', rank: 3 });
  }
};

export default plugin;
