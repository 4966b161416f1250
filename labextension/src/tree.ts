/**
 * The rows a tree view shows: the same rules as nbckpt/jupyter/tree.py
 * (visible_rows), applied to the tree the server sends.
 */
import { IEntry, ITreeNode } from './api';

export type SortKey = 'order' | 'name' | 'size';

export interface IRow {
  depth: number;
  node: ITreeNode;
  expanded: boolean;
}

function naturalKey(name: string): (string | number)[] {
  return name
    .split(/(\d+)/)
    .filter(part => part !== '')
    .map(part => (/^\d+$/.test(part) ? Number(part) : part.toLowerCase()));
}

function compareNatural(a: string, b: string): number {
  const ka = naturalKey(a);
  const kb = naturalKey(b);
  for (let i = 0; i < Math.min(ka.length, kb.length); i++) {
    const x = ka[i];
    const y = kb[i];
    if (typeof x === typeof y) {
      if (x < y) {
        return -1;
      }
      if (x > y) {
        return 1;
      }
    } else {
      return typeof x === 'number' ? -1 : 1;
    }
  }
  return ka.length - kb.length;
}

function first(node: ITreeNode): number {
  return node.entry !== undefined ? node.entry : node.first || 0;
}

export function sortChildren(children: ITreeNode[], sort: SortKey): ITreeNode[] {
  const sorted = children.slice();
  if (sort === 'name') {
    sorted.sort((a, b) => compareNatural(a.name, b.name) || (a.children ? -1 : 1) - (b.children ? -1 : 1));
  } else if (sort === 'size') {
    sorted.sort((a, b) => b.bytes - a.bytes || first(a) - first(b));
  } else {
    sorted.sort((a, b) => first(a) - first(b));
  }
  return sorted;
}

/** The rows under `root`: modules in `expanded` (or every one, when `all`) are open. */
export function visibleRows(
  root: ITreeNode,
  expanded: Set<string>,
  sort: SortKey,
  all = false
): IRow[] {
  const rows: IRow[] = [];
  const stack: [number, ITreeNode][] = sortChildren(root.children || [], sort)
    .reverse()
    .map(node => [0, node] as [number, ITreeNode]);
  while (stack.length) {
    const [depth, node] = stack.pop()!;
    const isOpen = !!node.children && (all || expanded.has(node.path));
    rows.push({ depth, node, expanded: isOpen });
    if (isOpen) {
      for (const child of sortChildren(node.children!, sort).reverse()) {
        stack.push([depth + 1, child]);
      }
    }
  }
  return rows;
}

/** A matcher for what the user typed: a glob (`*`, `?`, `[`) on the whole name, else a substring. */
export function nameMatcher(pattern: string): (name: string) => boolean {
  const text = pattern.trim().toLowerCase();
  if (!text) {
    return () => true;
  }
  if (!/[*?[]/.test(text)) {
    return name => name.toLowerCase().includes(text);
  }
  let source = '';
  for (const ch of text) {
    source += ch === '*' ? '.*' : ch === '?' ? '.' : ch === '[' || ch === ']' ? ch : ch.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  let regex: RegExp;
  try {
    regex = new RegExp(`^${source}$`, 's');
  } catch {
    return () => false;
  }
  return name => regex.test(name.toLowerCase());
}

/** The tree holding only the entries that match: modules keep their matching entries, totals recomputed. */
export function filterTree(node: ITreeNode, entries: IEntry[], matches: (name: string) => boolean): ITreeNode | null {
  if (!node.children) {
    return matches(entries[node.entry!].name) ? node : null;
  }
  const children: ITreeNode[] = [];
  for (const child of node.children) {
    const kept = filterTree(child, entries, matches);
    if (kept) {
      children.push(kept);
    }
  }
  if (!children.length && node.path !== '') {
    return null;
  }
  const dtypes: { [dtype: string]: number } = {};
  let count = 0;
  let params = 0;
  let bytes = 0;
  for (const child of children) {
    count += child.children ? child.count || 0 : 1;
    params += child.params;
    bytes += child.bytes;
    if (child.children) {
      for (const [dtype, n] of Object.entries(child.dtypes || {})) {
        dtypes[dtype] = (dtypes[dtype] || 0) + n;
      }
    } else if (child.dtype) {
      dtypes[child.dtype] = (dtypes[child.dtype] || 0) + child.params;
    }
  }
  return { ...node, children, count, params, bytes, dtypes };
}

/** Every module path of a tree (to open all of it). */
export function modulePaths(node: ITreeNode, out: Set<string> = new Set(), maxDepth = Infinity, depth = 0): Set<string> {
  for (const child of node.children || []) {
    if (child.children && depth < maxDepth) {
      out.add(child.path);
      modulePaths(child, out, maxDepth, depth + 1);
    }
  }
  return out;
}

export function formatBytes(n: number): string {
  if (n < 1024) {
    return `${n} B`;
  }
  let value = n;
  for (const unit of ['KiB', 'MiB', 'GiB', 'TiB', 'PiB']) {
    value /= 1024;
    if (value < 1024 || unit === 'PiB') {
      return `${value.toFixed(1)} ${unit}`;
    }
  }
  return `${n} B`;
}

export function formatCount(n: number): string {
  for (const [unit, size] of [['T', 1e12], ['B', 1e9], ['M', 1e6], ['K', 1e3]] as [string, number][]) {
    if (n >= size) {
      const value = n / size;
      return value < 1000 ? `${Number(value.toPrecision(3))}${unit}` : `${Math.round(value)}${unit}`;
    }
  }
  return String(n);
}

/** `5 entries, 1.05K params, 4.1 KiB, float32 bfloat16` (as listing.module_summary). */
export function moduleSummary(node: ITreeNode): string {
  const dtypes = Object.entries(node.dtypes || {})
    .sort((a, b) => b[1] - a[1])
    .map(([dtype]) => dtype)
    .join(' ');
  const count = node.count || 0;
  const parts = [`${count.toLocaleString('en-US')} ${count === 1 ? 'entry' : 'entries'}`, `${formatCount(node.params)} params`, formatBytes(node.bytes)];
  return parts.join(', ') + (dtypes ? `, ${dtypes}` : '');
}
