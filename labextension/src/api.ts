/**
 * Requests to nbckpt's server extension (nbckpt/labextension/handlers.py).
 *
 * Every request goes through ServerConnection, so it carries the server's
 * token or cookie: the handlers serve authenticated requests only.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** A module of the tree (`children`) or an entry (`entry` indexes `Listing.entries`). */
export interface ITreeNode {
  name: string;
  path: string;
  entry?: number;
  count?: number;
  params: number;
  bytes: number;
  dtypes?: { [dtype: string]: number };
  dtype?: string;
  first?: number;
  children?: ITreeNode[];
}

export interface IEntry {
  name: string;
  kind: 'array' | 'value';
  shape?: number[];
  dtype?: string;
  location?: string;
  bytes?: number;
  params?: number;
  label: string;
}

export interface IListing {
  header: [string, string][];
  entries: IEntry[];
  tree: ITreeNode;
}

export interface IRecord {
  name: string;
  header: string;
  statistics: [string, string][];
  sampled: string;
  first_values: string;
  histogram: boolean;
  heatmap: boolean;
}

export interface IValue {
  name: string;
  type: string;
  text: string;
}

export interface IDiffRow {
  name: string;
  change: string;
  a: string;
  b: string;
  relative: number | null;
  absolute: number | null;
  fraction: number | null;
  bar: number;
  note: string;
}

export interface IDiff {
  summary: string;
  equal: number;
  rows: IDiffRow[];
  values: { name: string; change: string; a: string; b: string }[];
}

/** An error the server answered with: its message says what went wrong. */
export class ViewerRequestError extends Error {}

/** The URL of a viewer endpoint with its query. */
export function viewerUrl(endpoint: string, query: { [key: string]: string }): string {
  const settings = ServerConnection.makeSettings();
  return (
    URLExt.join(settings.baseUrl, 'nbckpt', endpoint) + URLExt.objectToQueryString(query)
  );
}

/** GET a viewer endpoint; its JSON, or a ViewerRequestError with the server's message. */
export async function requestJSON<T>(
  endpoint: string,
  query: { [key: string]: string }
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const response = await ServerConnection.makeRequest(viewerUrl(endpoint, query), {}, settings);
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.message ? data.message : `${response.status} ${response.statusText}`;
    throw new ViewerRequestError(message);
  }
  return data as T;
}

/** GET a picture as an object URL (revoke it when done), or a ViewerRequestError. */
export async function requestPicture(query: { [key: string]: string }): Promise<string> {
  const settings = ServerConnection.makeSettings();
  const response = await ServerConnection.makeRequest(viewerUrl('picture', query), {}, settings);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).message || message;
    } catch {
      // keep the status line
    }
    throw new ViewerRequestError(message);
  }
  return URL.createObjectURL(await response.blob());
}
