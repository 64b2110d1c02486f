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
  approval: 'approved' | 'older' | 'none' | 'rejected' | 'error'; // older: approved an older version
  detail: string;
  approve_command?: string; // ready to copy for the site's reviewer
}

/** What changed since the newest version some site approved. */
export interface IChanges {
  approved_id: string;
  short_id: string;
  summary: string[];
}

export interface INotebookState {
  bundle_id: string;
  short_id?: string;
  bundle_path?: string;
  cells: ICell[];
  job: { rounds: number; min_clients: number; params: Record<string, unknown> };
  datasets: string[];
  validation: {
    state: 'passed' | 'failed' | 'none';
    summary: string;
    cell?: number | null; // notebook cell index (0-based) of a failure
    line?: number | null; // 1-based editor line; the %%federated line is line 1
  };
  changes?: IChanges | null;
  sites: ISite[];
  submit?: { ready: boolean; reason: string };
  live_run?: string | null; // run folder of a live run of this bundle id
}

export type Tone = 'ok' | 'neutral' | 'bad';

/** One row of the runs list, newest first. */
export interface IRunSummary {
  run: string;
  bundle_id: string;
  short_id: string;
  target: string;
  started_at: string; // ISO 8601 UTC
  duration_s: number | null; // null while live
  status: string;
  headline: string;
  final: Record<string, Record<string, number | null>>;
  global: Record<string, number | null>;
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
  bundle_id?: string;
  short_id?: string;
  headline?: string;
  tones?: Record<string, Tone>;
  global?: [number, string, number | null][]; // num_samples-weighted mean over sites, per round
  final_round?: number | null;
}

/** A run that can no longer change. */
export const FINAL_STATUSES = ['finished', 'failed', 'refused', 'aborted'];

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

export function remove<T>(endpoint: string): Promise<T> {
  return request<T>(endpoint, { method: 'DELETE' });
}

export function post<T>(endpoint: string, body: unknown): Promise<T> {
  return request<T>(endpoint, { method: 'POST', body: JSON.stringify(body) });
}

/** Live run updates over the server's websocket; each message is a run state with new records;
 * `onClose` when the stream ends (the run ended, or the connection dropped). */
export function streamRun(run: string, onState: (state: IRunState) => void, onClose: () => void): WebSocket {
  const settings = ServerConnection.makeSettings();
  const query = URLExt.objectToQueryString({ path: run, ...(settings.token ? { token: settings.token } : {}) });
  const socket = new settings.WebSocket(URLExt.join(settings.wsUrl, 'caia', 'api', 'run', 'stream') + query);
  socket.onmessage = event => onState(JSON.parse(event.data));
  socket.onclose = () => onClose();
  return socket;
}

/** One thing the federated code can do beyond computing, from its syntax tree. */
export interface IFinding {
  capability: string;
  heading: string;
  what: string;
  line: number;
  cell: number | null;
  cell_line: number | null;
}

/** The capability report at the top of a review: advice, not a gate. */
export interface ICapabilities {
  advice: string;
  findings: IFinding[];
  captured: { name: string; type: string; size: number; sha256: string }[];
}

/** What changed since the closest bundle the review site approved before. */
export interface IBundleChanges {
  base: { bundle_id: string; short_id: string };
  cosmetic: boolean;
  cells: {
    cell: number | null;
    part: 'docstring' | 'head' | 'cell';
    title: string;
    status: 'unchanged' | 'changed' | 'cosmetic' | 'added' | 'removed';
    diff: string;
  }[];
  other: string[];
}

/** A bundle (a packed .zip or a bundle folder) as its reviewer sees it in the Review view. */
export interface IBundleView {
  path: string;
  bundle_id: string;
  short_id: string;
  review_html: string;
  capabilities: ICapabilities;
  changes: IBundleChanges | null;
  site: string | null;
  requested: string[];
  catalog: string[];
  key_id: string | null;
  can_sign: boolean;
  reason: string;
}

export function bundleView(path: string): Promise<IBundleView> {
  return request<IBundleView>(`bundle?path=${encodeURIComponent(path)}`);
}

/** Approve with the reviewer's key on the server; `expiresInDays` null: the site's default lifetime. */
export function approveBundle(
  path: string,
  bundleId: string,
  datasets: Record<string, string>,
  expiresInDays: number | null
): Promise<Record<string, unknown>> {
  return post('bundle/approve', { path, bundle_id: bundleId, datasets, ...(expiresInDays === null ? {} : { expires_in_days: expiresInDays }) });
}

export function rejectBundle(path: string, bundleId: string, reason: string): Promise<Record<string, unknown>> {
  return post('bundle/reject', { path, bundle_id: bundleId, reason });
}

/** A table's row: the dataset, the feature (a column, or "column=category" for a category count), then
 * one value per site and "pooled"; "suppressed" where a site withheld it under its thresholds. */
export type IStatisticRow = { dataset: string; feature: string } & Record<string, number | string>;

/** A notebook's last exploration (GET explore), or {exploration: null} when it has none. */
export interface IExploration {
  exploration?: null;
  run: string;
  bundle_id: string;
  sites: string[];
  datasets: string[];
  spec: { columns: string[]; statistics: string[]; histograms?: Record<string, unknown> };
  tables: Record<string, IStatisticRow[]>; // count, failure_count (values missing), mean, stddev, quantile
  histograms: Record<string, ({ low: number; high: number } & Record<string, number | string>)[]>;
  suppressed: { site: string; dataset: string; feature: string; statistic: string }[];
}
