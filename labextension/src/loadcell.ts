/**
 * The cell "Load into notebook" inserts: the code that loads one entry, for the
 * user to read and run (the viewer never runs code in a kernel itself).
 */
import { PathExt } from '@jupyterlab/coreutils';

const KEYWORDS = new Set(
  ('False None True and as assert async await break class continue def del elif else except finally for ' +
    'from global if import in is lambda nonlocal not or pass raise return try while with yield').split(' ')
);

/** A Python variable name made from an entry's dotted name (as nbckpt.jupyter.listing.variable_name). */
export function variableName(name: string): string {
  let text = name.replace(/\W+/g, '_').replace(/^_+|_+$/g, '');
  if (!text) {
    return 'value';
  }
  if (/^\d/.test(text)) {
    text = '_' + text;
  }
  if (KEYWORDS.has(text)) {
    text += '_';
  }
  return text;
}

function pyString(text: string): string {
  return JSON.stringify(text); // a JSON string is a valid Python string literal for these characters
}

/**
 * The code loading entry `name` (an array, or another value when `isValue`) of the checkpoint
 * at `checkpointPath` onto `device`, for a notebook at `notebookPath` (paths under the server root).
 */
export function loadCellCode(
  checkpointPath: string,
  notebookPath: string,
  name: string,
  device: string,
  isValue: boolean
): string {
  const relative = PathExt.relative(PathExt.dirname(notebookPath), checkpointPath);
  const variable = variableName(name);
  const read = isValue ? `checkpoint.values[${pyString(name)}]` : `checkpoint[${pyString(name)}]`;
  return [
    'import nbckpt',
    '',
    `with nbckpt.open(${pyString(relative)}, map_location=${pyString(device)}) as checkpoint:`,
    `    ${variable} = ${read}`,
    variable
  ].join('\n');
}
