// The panel's only door to caia: the server extension's REST API under /caia/api.
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface ICell {
  ordinal: number;
  index: number;
  first_line: string;
}

export interface ISite {
  name: string;
  path: string;
  approval: 'approved' | 'none' | 'rejected' | 'error';
  detail: string;
}

export interface INotebookState {
  bundle_id: string;
  cells: ICell[];
  job: { rounds: number; min_clients: number; params: Record<string, unknown> };
  datasets: string[];
  validation: { state: 'passed' | 'failed' | 'none'; summary: string };
  sites: ISite[];
}

export interface IRunState {
  run?: string;
  status: string;
  message: string;
  rounds_done: number;
  rounds: number;
  sites: Record<string, string>;
  reasons: Record<string, string>;
  notes: string[]; // what the run left out: updates left out of an average, metrics recorded as missing
  records: [string, number, string, number | null][]; // null: a value not finite at the site
  since: number;
  count: number;
}

export async function request<T>(endpoint: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'caia', 'api', endpoint);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.message || `${response.status} ${response.statusText}`);
  }
  return body as T;
}

export function post<T>(endpoint: string, body: unknown): Promise<T> {
  return request<T>(endpoint, { method: 'POST', body: JSON.stringify(body) });
}

/** Live run updates over the server's websocket; each message is a run state with new records. */
export function streamRun(run: string, onState: (state: IRunState) => void): WebSocket {
  const settings = ServerConnection.makeSettings();
  const query = URLExt.objectToQueryString({ path: run, ...(settings.token ? { token: settings.token } : {}) });
  const socket = new settings.WebSocket(URLExt.join(settings.wsUrl, 'caia', 'api', 'run', 'stream') + query);
  socket.onmessage = event => onState(JSON.parse(event.data));
  return socket;
}
