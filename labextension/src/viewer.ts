/**
 * The checkpoint viewer: header, the tree of modules (filter, sort, open/close),
 * and the selected entry's statistics, pictures or value, all from the server
 * extension; "Load into notebook" inserts the loading cell in the active notebook.
 */
import { Widget } from '@lumino/widgets';

import {
  IEntry,
  IListing,
  IRecord,
  ITreeNode,
  IValue,
  requestJSON,
  requestPicture
} from './api';
import { filterTree, formatBytes, IRow, moduleSummary, modulePaths, nameMatcher, SortKey, visibleRows } from './tree';

/** Rows drawn at most; the filter narrows the rest down. */
const MAX_ROWS = 2000;
/** Trees of at most this many entries open fully; larger ones open their top-level modules. */
const OPEN_ALL_UP_TO = 50;

/** Inserts the cell loading an entry into the active notebook; returns a message for the status line. */
export type LoadHandler = (path: string, entry: IEntry, device: string) => string;

function element<K extends keyof HTMLElementTagNameMap>(tag: K, className = '', text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

export class CheckpointViewer extends Widget {
  constructor(path: string, load: LoadHandler) {
    super();
    this.path = path;
    this._load = load;
    this.addClass('nbckpt-viewer');
    this.id = `nbckpt-viewer-${Private.nextId++}`;
    const node = this.node;
    this._header = element('table', 'nbckpt-viewer-header');
    this._error = element('div', 'nbckpt-viewer-error');
    this._error.hidden = true;
    const toolbar = element('div', 'nbckpt-viewer-toolbar');
    this._filter = element('input', 'nbckpt-viewer-filter');
    this._filter.placeholder = 'filter: substring or glob, e.g. layers.1 or *.weight';
    this._filter.addEventListener('input', () => this._render());
    this._sort = element('select', 'nbckpt-viewer-sort');
    for (const [value, label] of [['order', 'in file order'], ['name', 'by name'], ['size', 'by size']]) {
      const option = element('option', '', label);
      option.value = value;
      this._sort.appendChild(option);
    }
    this._sort.addEventListener('change', () => this._render());
    this._count = element('span', 'nbckpt-viewer-count');
    toolbar.append(this._filter, this._sort, this._count);
    const body = element('div', 'nbckpt-viewer-body');
    this._tree = element('div', 'nbckpt-viewer-tree');
    this._tree.setAttribute('role', 'tree');
    this._details = element('div', 'nbckpt-viewer-details');
    this._details.append(element('p', 'nbckpt-viewer-hint', 'Select an entry to see its statistics and pictures.'));
    body.append(this._tree, this._details);
    node.append(this._header, this._error, toolbar, body);
    void this.refresh();
  }

  /** The checkpoint's path under the server root. */
  readonly path: string;

  /** Read the listing again (the server's cache notices a changed file). */
  async refresh(): Promise<void> {
    this._tree.textContent = 'reading…';
    try {
      this._listing = await requestJSON<IListing>('listing', { path: this.path });
    } catch (err) {
      this._tree.textContent = '';
      this._showError(`Cannot read ${this.path}: ${(err as Error).message}`);
      return;
    }
    this._error.hidden = true;
    this._header.textContent = '';
    for (const [label, value] of this._listing.header) {
      const row = element('tr');
      row.append(element('th', '', label), element('td', '', value));
      this._header.appendChild(row);
    }
    const root = this._listing.tree;
    this._expanded = modulePaths(root, new Set(), this._listing.entries.length <= OPEN_ALL_UP_TO ? Infinity : 1);
    this._render();
  }

  /** Open or close the module at `path`. */
  toggle(path: string): void {
    const set = this._filter.value.trim() ? this._closedWhileFiltering : this._expanded;
    if (set.has(path)) {
      set.delete(path);
    } else {
      set.add(path);
    }
    this._render();
  }

  private _render(): void {
    if (!this._listing) {
      return;
    }
    const { entries, tree } = this._listing;
    const filtering = !!this._filter.value.trim();
    let root: ITreeNode | null = tree;
    let rows: IRow[];
    if (filtering) {
      if (this._lastFilter !== this._filter.value) {
        this._closedWhileFiltering.clear();
        this._lastFilter = this._filter.value;
      }
      root = filterTree(tree, entries, nameMatcher(this._filter.value));
      const open = modulePaths(root!);
      for (const path of this._closedWhileFiltering) {
        open.delete(path);
      }
      rows = root ? visibleRows(root, open, this._sort.value as SortKey) : [];
    } else {
      rows = visibleRows(tree, this._expanded, this._sort.value as SortKey);
    }
    const matching = filtering && root ? root.count || 0 : entries.length;
    this._count.textContent = filtering
      ? `${matching.toLocaleString('en-US')} of ${entries.length.toLocaleString('en-US')} entries match`
      : `${entries.length.toLocaleString('en-US')} entries`;
    const fragment = document.createDocumentFragment();
    for (const row of rows.slice(0, MAX_ROWS)) {
      fragment.appendChild(this._row(row, entries));
    }
    if (rows.length > MAX_ROWS) {
      fragment.appendChild(element('div', 'nbckpt-viewer-more', `${(rows.length - MAX_ROWS).toLocaleString('en-US')} more… type in the filter to narrow the list`));
    }
    this._tree.textContent = '';
    this._tree.appendChild(fragment);
  }

  private _row(row: IRow, entries: IEntry[]): HTMLElement {
    const node = row.node;
    const line = element('div', 'nbckpt-viewer-row');
    line.style.paddingLeft = `${0.4 + row.depth * 1.2}em`;
    line.dataset.path = node.path;
    line.setAttribute('role', 'treeitem');
    if (node.children) {
      line.classList.add('nbckpt-viewer-module');
      line.setAttribute('aria-expanded', String(row.expanded));
      line.append(
        element('span', 'nbckpt-viewer-twisty', row.expanded ? '▾' : '▸'),
        element('span', 'nbckpt-viewer-name', `${node.name}/`),
        element('span', 'nbckpt-viewer-summary', moduleSummary(node))
      );
      line.addEventListener('click', () => this.toggle(node.path));
    } else {
      const entry = entries[node.entry!];
      line.classList.add('nbckpt-viewer-entry', `nbckpt-viewer-${entry.kind}`);
      if (this._selected === node.entry) {
        line.classList.add('nbckpt-viewer-selected');
      }
      line.append(
        element('span', 'nbckpt-viewer-twisty', ''),
        element('span', 'nbckpt-viewer-name', node.name),
        element('span', 'nbckpt-viewer-summary', entry.label)
      );
      line.addEventListener('click', () => void this.select(node.entry!));
    }
    return line;
  }

  /** Show the entry at `index` of the listing. */
  async select(index: number): Promise<void> {
    if (!this._listing) {
      return;
    }
    this._selected = index;
    this._render();
    const entry = this._listing.entries[index];
    const details = this._details;
    for (const url of this._urls) {
      URL.revokeObjectURL(url);
    }
    this._urls = [];
    details.textContent = '';
    const title = element('h3', 'nbckpt-viewer-title', entry.name || '(root)');
    details.appendChild(title);
    details.appendChild(this._loadPanel(entry));
    const body = element('div', 'nbckpt-viewer-entry-body', 'reading…');
    details.appendChild(body);
    const token = ++this._request;
    try {
      if (entry.kind === 'value') {
        const value = await requestJSON<IValue>('value', { path: this.path, name: entry.name });
        if (token !== this._request) {
          return;
        }
        body.textContent = '';
        body.append(element('p', 'nbckpt-viewer-record-header', value.type), element('pre', 'nbckpt-viewer-value', value.text));
        return;
      }
      const record = await requestJSON<IRecord>('record', { path: this.path, name: entry.name });
      if (token !== this._request) {
        return;
      }
      body.textContent = '';
      body.appendChild(element('p', 'nbckpt-viewer-record-header', record.header));
      const table = element('table', 'nbckpt-viewer-stats');
      for (const [label, value] of record.statistics) {
        const row = element('tr');
        row.append(element('th', '', label), element('td', '', value));
        table.appendChild(row);
      }
      body.appendChild(table);
      if (record.sampled) {
        body.appendChild(element('p', 'nbckpt-viewer-sampled', record.sampled));
      }
      const pictures = element('div', 'nbckpt-viewer-pictures');
      body.appendChild(pictures);
      body.appendChild(element('code', 'nbckpt-viewer-first', record.first_values));
      for (const kind of ['histogram', 'heatmap']) {
        if (!(record as any)[kind]) {
          continue;
        }
        const url = await requestPicture({ path: this.path, name: entry.name, kind });
        if (token !== this._request) {
          URL.revokeObjectURL(url);
          return;
        }
        this._urls.push(url);
        const image = element('img', `nbckpt-viewer-${kind}`);
        image.alt = `${kind} of ${entry.name}`;
        image.src = url;
        pictures.appendChild(image);
      }
    } catch (err) {
      if (token === this._request) {
        body.textContent = '';
        body.appendChild(element('div', 'nbckpt-viewer-error', (err as Error).message));
      }
    }
  }

  private _loadPanel(entry: IEntry): HTMLElement {
    const panel = element('div', 'nbckpt-viewer-load');
    const device = element('input', 'nbckpt-viewer-device');
    device.value = this._device;
    device.title = 'map_location: cpu, cuda:0, auto…';
    device.size = 8;
    device.addEventListener('change', () => (this._device = device.value.trim() || 'cpu'));
    const button = element('button', 'jp-mod-styled jp-mod-accept nbckpt-viewer-load-button', 'Load into notebook');
    button.title = 'insert a cell that loads this entry into the active notebook (you run it)';
    const status = element('span', 'nbckpt-viewer-load-status');
    button.addEventListener('click', () => {
      this._device = device.value.trim() || 'cpu';
      status.textContent = this._load(this.path, entry, this._device);
    });
    panel.append(element('label', '', 'device '), device, button, status);
    return panel;
  }

  private _showError(message: string): void {
    this._error.textContent = message;
    this._error.hidden = false;
  }

  dispose(): void {
    for (const url of this._urls) {
      URL.revokeObjectURL(url);
    }
    super.dispose();
  }

  private _load: LoadHandler;
  private _listing: IListing | null = null;
  private _header: HTMLTableElement;
  private _error: HTMLDivElement;
  private _filter: HTMLInputElement;
  private _sort: HTMLSelectElement;
  private _count: HTMLSpanElement;
  private _tree: HTMLDivElement;
  private _details: HTMLDivElement;
  private _expanded = new Set<string>();
  private _closedWhileFiltering = new Set<string>();
  private _lastFilter = '';
  private _selected: number | null = null;
  private _request = 0;
  private _urls: string[] = [];
  private _device = 'cpu';
}

namespace Private {
  export let nextId = 0;
}

export { formatBytes };
