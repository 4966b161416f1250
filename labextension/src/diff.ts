/**
 * The diff tab: the arrays that differ between two checkpoints, most changed
 * first, each with a bar of its relative change (log scale, as
 * nbckpt/jupyter/difftable.py draws it), and the other entries that differ.
 */
import { Widget } from '@lumino/widgets';

import { IDiff, requestJSON } from './api';

const STRUCTURAL = new Set(['only in A', 'only in B', 'shape and dtype', 'shape', 'dtype']);

function cell(row: HTMLTableRowElement, text: string, className = ''): HTMLTableCellElement {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) {
    td.className = className;
  }
  row.appendChild(td);
  return td;
}

function number(value: number | null): string {
  if (value === null || value === undefined) {
    return '';
  }
  return Number.isInteger(value) ? value.toLocaleString('en-US') : Number(value.toPrecision(3)).toString();
}

export class DiffView extends Widget {
  constructor(a: string, b: string) {
    super();
    this.addClass('nbckpt-diffview');
    this.id = `nbckpt-diff-${Private.nextId++}`;
    this.title.label = `Diff: ${a.split('/').pop()} ↔ ${b.split('/').pop()}`;
    this.title.closable = true;
    this.node.textContent = 'comparing…';
    void this._fill(a, b);
  }

  private async _fill(a: string, b: string): Promise<void> {
    let diff: IDiff;
    try {
      diff = await requestJSON<IDiff>('diff', { a, b });
    } catch (err) {
      this.node.textContent = '';
      const error = document.createElement('div');
      error.className = 'nbckpt-viewer-error';
      error.textContent = `Cannot compare ${a} and ${b}: ${(err as Error).message}`;
      this.node.appendChild(error);
      return;
    }
    this.node.textContent = '';
    const summary = document.createElement('p');
    summary.className = 'nbckpt-diff-summary';
    summary.textContent = diff.summary;
    this.node.appendChild(summary);
    const table = document.createElement('table');
    table.className = 'nbckpt-diff-table';
    const head = table.createTHead().insertRow();
    for (const title of ['name', 'change', 'A', 'B', 'relative change (log scale)', 'max rel', 'max abs', 'differing']) {
      const th = document.createElement('th');
      th.textContent = title;
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const row of diff.rows) {
      const tr = body.insertRow();
      tr.className = 'nbckpt-diff-row';
      tr.dataset.name = row.name;
      cell(tr, row.name, 'nbckpt-diff-name');
      cell(tr, row.change + (row.note ? ` (${row.note})` : ''));
      cell(tr, row.a);
      cell(tr, row.b);
      const barCell = cell(tr, '');
      const bar = document.createElement('div');
      bar.className = 'nbckpt-diff-bar';
      const fill = document.createElement('div');
      fill.className = STRUCTURAL.has(row.change) ? 'nbckpt-diff-fill nbckpt-diff-structural' : 'nbckpt-diff-fill';
      fill.style.width = `${(100 * row.bar).toFixed(1)}%`;
      bar.appendChild(fill);
      barCell.appendChild(bar);
      cell(tr, number(row.relative));
      cell(tr, number(row.absolute));
      cell(tr, row.fraction === null ? '' : `${Number((100 * row.fraction).toPrecision(3))}%`);
    }
    this.node.appendChild(diff.rows.length ? table : Object.assign(document.createElement('p'), { textContent: 'No array differs.' }));
    if (diff.values.length) {
      const caption = document.createElement('h4');
      caption.textContent = 'Other entries that differ';
      this.node.appendChild(caption);
      const values = document.createElement('table');
      values.className = 'nbckpt-diff-values';
      for (const value of diff.values) {
        const tr = values.insertRow();
        cell(tr, value.name);
        cell(tr, value.change);
        cell(tr, value.a);
        cell(tr, value.b);
      }
      this.node.appendChild(values);
    }
  }
}

namespace Private {
  export let nextId = 0;
}
