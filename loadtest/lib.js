// Shared helpers for the retriever k6 scripts: request builders for the two client shapes,
// checks of the Search-R1 answer, overload-refusal checks, a /metrics reader and a text summary.
// No remote imports: everything the scripts use is here or in k6 itself.
import http from 'k6/http';
import { check } from 'k6';
import { SharedArray } from 'k6/data';
import { Counter, Rate, Trend } from 'k6/metrics';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
export const RESULTS_DIR = (__ENV.RESULTS_DIR || 'loadtest/results').replace(/\/+$/, '');
export const TOPK = num('TOPK', 3);
export const BATCH_SIZE = num('BATCH_SIZE', 16);
// verl's client gives up after 30 s; Search-R1 has no timeout, 60 s bounds our wait for it.
export const SINGLE_TIMEOUT = __ENV.SINGLE_TIMEOUT || '30s';
export const BATCH_TIMEOUT = __ENV.BATCH_TIMEOUT || '60s';
// The status the server answers overload with (RETRIEVER_OVERLOAD_STATUS: 503 default, or 429).
export const OVERLOAD_STATUS = num('OVERLOAD_STATUS', 503);
const AUTH_TOKEN = __ENV.AUTH_TOKEN || '';

// Summary statistics everywhere: p(99) is part of every SLO here.
export const TREND_STATS = ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'];

export function num(name, dflt) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v)) throw new Error(`${name}=${raw} is not a number`);
  return v;
}

// Arrival rates may be fractional (0.5 batch calls/s): k6 wants integers per timeUnit, so count per
// minute. Iterations are spaced evenly either way.
export function perMinute(ratePerSecond) {
  return Math.max(1, Math.round(ratePerSecond * 60));
}

// k6 duration string ('90s', '10m', '1h30m', '500ms') -> seconds.
export function durationSeconds(d) {
  const parts = String(d).match(/\d+(?:\.\d+)?(?:ms|s|m|h)/g);
  if (!parts || parts.join('') !== String(d)) throw new Error(`bad duration ${d}`);
  const unit = { ms: 0.001, s: 1, m: 60, h: 3600 };
  return parts.reduce((acc, p) => {
    const [, n, u] = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(p);
    return acc + Number(n) * unit[u];
  }, 0);
}

// ---------------------------------------------------------------------------------------------
// Queries (loadtest/queries.json, see make_queries.py). open() resolves relative to this file.
const QUERY_FILE = __ENV.QUERIES_FILE || './queries.json';
export const QUERIES = new SharedArray('queries', () => {
  const data = JSON.parse(open(QUERY_FILE));
  return data.labelled.map((x) => x.q).concat(data.open);
});
export const LABELLED = new SharedArray('labelled', () =>
  JSON.parse(open(QUERY_FILE)).labelled.filter((x) => x.specific),
);

export function randomQuery() {
  return QUERIES[Math.floor(Math.random() * QUERIES.length)];
}

export function randomQueries(n) {
  const out = [];
  for (let i = 0; i < n; i++) out.push(randomQuery());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Custom metrics shared by the scripts. The `shape` tag (single | batch) splits them per client.
export const queriesSent = new Counter('queries_sent');
export const queriesAnswered = new Counter('queries_answered');
export const timeouts = new Counter('timeouts'); // k6 gave up waiting (error_code 1050)
export const transportErrors = new Counter('transport_errors'); // reset, refused, ... (status 0, not a timeout)
export const unexpected = new Counter('unexpected_responses'); // anything but a valid 200 or a proper refusal
export const refused = new Rate('refused'); // share of /retrieve calls answered with OVERLOAD_STATUS
export const refusalDuration = new Trend('refusal_duration', true);
export const refusalNoRetryAfter = new Counter('refusal_without_retry_after');
export const badAnswers = new Counter('bad_answers'); // 200 whose body breaks the contract

// ---------------------------------------------------------------------------------------------
// Request builders.
function headers() {
  const h = { 'Content-Type': 'application/json' };
  if (AUTH_TOKEN) h.Authorization = `Bearer ${AUTH_TOKEN}`;
  return h;
}

export function retrieveBody(queries, topk = TOPK, returnScores = true) {
  return JSON.stringify({ queries, topk, return_scores: returnScores });
}

// One raw POST /retrieve. `tags.shape` names the client shape for thresholds.
export function postRetrieve(payload, { tags = {}, timeout = SINGLE_TIMEOUT, expected } = {}) {
  const params = { headers: headers(), tags: Object.assign({ name: 'POST /retrieve' }, tags), timeout };
  if (expected) params.responseCallback = http.expectedStatuses(...expected);
  return http.post(`${BASE_URL}/retrieve`, typeof payload === 'string' ? payload : JSON.stringify(payload), params);
}

// verl's search tool: one query per call, topk 3, scores on, 30 s timeout.
export function singleRequest(opts = {}) {
  const queries = [randomQuery()];
  return {
    queries,
    res: postRetrieve(retrieveBody(queries), Object.assign({ tags: { shape: 'single' }, timeout: SINGLE_TIMEOUT }, opts)),
  };
}

// Search-R1's rollout step: one call carrying the whole batch.
export function batchRequest(opts = {}) {
  const queries = randomQueries(BATCH_SIZE);
  return {
    queries,
    res: postRetrieve(retrieveBody(queries), Object.assign({ tags: { shape: 'batch' }, timeout: BATCH_TIMEOUT }, opts)),
  };
}

// ---------------------------------------------------------------------------------------------
// Answer validation. Returns a list of problems (empty = valid) so callers can both check() and log.
export function titleOf(contents) {
  // Search-R1 takes the first line as the title (quoted in wiki-18 / FlashRAG rows).
  const first = String(contents).split('\n')[0].trim();
  return first.replace(/^"(.*)"$/, '$1');
}

export function answerProblems(res, nQueries, topk = TOPK, withScores = true) {
  if (res.status !== 200) return [`status ${res.status}`];
  let body;
  try {
    body = res.json();
  } catch (e) {
    return ['body is not JSON'];
  }
  if (!body || !Array.isArray(body.result)) return ['no result array'];
  if (body.result.length !== nQueries) return [`result has ${body.result.length} lists for ${nQueries} queries`];
  const problems = [];
  for (let i = 0; i < body.result.length && problems.length < 3; i++) {
    const hits = body.result[i];
    if (!Array.isArray(hits)) {
      problems.push(`result[${i}] is not a list`);
      continue;
    }
    if (hits.length !== topk) problems.push(`result[${i}] has ${hits.length} items, want ${topk}`);
    let prev = Infinity;
    for (let j = 0; j < hits.length; j++) {
      const item = hits[j];
      const doc = withScores ? item && item.document : item;
      if (withScores) {
        if (!item || typeof item.score !== 'number' || !Number.isFinite(item.score)) {
          problems.push(`result[${i}][${j}].score is not a finite number`);
          break;
        }
        // Scores must not increase down the list (tiny slack for float ties).
        if (item.score > prev + 1e-6) {
          problems.push(`result[${i}] scores not descending at ${j}`);
          break;
        }
        prev = item.score;
      } else if (item && item.score !== undefined && item.document !== undefined) {
        problems.push(`result[${i}][${j}] wraps a document although return_scores is false`);
        break;
      }
      if (!doc || typeof doc.contents !== 'string' || doc.id === undefined) {
        problems.push(`result[${i}][${j}] document lacks id/contents`);
        break;
      }
      if (titleOf(doc.contents) === '') {
        problems.push(`result[${i}][${j}] contents has no title line`);
        break;
      }
    }
  }
  return problems;
}

// check() of one /retrieve answer; counts answered queries and bad answers. Returns true if valid.
export function checkAnswer(res, nQueries, tags = {}, topk = TOPK, withScores = true) {
  const problems = answerProblems(res, nQueries, topk, withScores);
  const ok = check(
    res,
    {
      'retrieve: status 200': (r) => r.status === 200,
      'retrieve: Search-R1 answer shape, topk items, scores descending': () => problems.length === 0,
    },
    tags,
  );
  if (ok) queriesAnswered.add(nQueries, tags);
  else if (res.status === 200) badAnswers.add(1, tags);
  if (!ok && __ENV.VERBOSE) console.warn(`bad answer: ${problems.join('; ')}`);
  return ok;
}

export function retryAfterValid(res) {
  const v = res.headers['Retry-After'];
  if (v === undefined || v === '') return false;
  // delay-seconds or an HTTP-date (RFC 9110 10.2.3)
  return /^\d+$/.test(v.trim()) || !Number.isNaN(Date.parse(v));
}

// Classifies a /retrieve response under overload: a valid 200, a proper refusal, or a failure.
// Every response feeds `refused`; failures feed `unexpected_responses` / `timeouts` / `transport_errors`.
export function classify(res, nQueries, tags = {}) {
  queriesSent.add(nQueries, tags);
  if (res.status === OVERLOAD_STATUS) {
    refused.add(1, tags);
    refusalDuration.add(res.timings.duration, tags);
    const hasRetryAfter = retryAfterValid(res);
    if (!hasRetryAfter) refusalNoRetryAfter.add(1, tags);
    check(res, { 'refusal: carries Retry-After': () => hasRetryAfter }, tags);
    return 'refused';
  }
  refused.add(0, tags);
  if (res.status === 200) {
    if (checkAnswer(res, nQueries, tags)) return 'ok';
    unexpected.add(1, tags);
    return 'bad';
  }
  if (res.status === 0) {
    if (res.error_code === 1050) timeouts.add(1, tags);
    else transportErrors.add(1, tags);
  }
  unexpected.add(1, tags);
  check(res, { 'retrieve: only 200 or the overload status': () => false }, tags);
  if (__ENV.VERBOSE) console.warn(`unexpected: status=${res.status} error=${res.error} body=${String(res.body).slice(0, 200)}`);
  return 'failed';
}

// ---------------------------------------------------------------------------------------------
// Server-side view through /metrics (works against any BASE_URL, e.g. a port-forwarded pod).
// Returns the sum over all series of each requested metric name (multi-worker servers expose one
// retriever_process_resident_memory_bytes series per pid), or null when absent/unreachable.
export function scrapeMetrics(names) {
  const res = http.get(`${BASE_URL}/metrics`, { tags: { name: 'GET /metrics', shape: 'monitor' }, timeout: '10s' });
  const out = {};
  for (const n of names) out[n] = null;
  if (res.status !== 200 || typeof res.body !== 'string') return out;
  for (const line of res.body.split('\n')) {
    if (line === '' || line[0] === '#') continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || !(m[1] in out)) continue;
    const v = Number(m[3]);
    if (Number.isFinite(v)) out[m[1]] = (out[m[1]] || 0) + v;
  }
  return out;
}

export const RSS_METRIC = 'retriever_process_resident_memory_bytes';

// ---------------------------------------------------------------------------------------------
// Text summary (our own; the usual one is a remote import) and handleSummary output.
function fmtMs(v) {
  if (v === undefined || v === null || Number.isNaN(v)) return '-';
  if (v >= 1000) return `${(v / 1000).toFixed(2)}s`;
  if (v >= 10) return `${v.toFixed(0)}ms`;
  return `${v.toFixed(2)}ms`;
}

export function fmtBytes(v) {
  if (v === undefined || v === null) return '-';
  return `${(v / 1048576).toFixed(1)} MiB`;
}

function fmtValues(metric, name = '') {
  const v = metric.values;
  if (/_bytes$/.test(name) && (metric.type === 'trend' || metric.type === 'gauge')) {
    return metric.type === 'gauge' ? fmtBytes(v.value) : ['min', 'avg', 'max'].map((k) => `${k}=${fmtBytes(v[k])}`).join(' ');
  }
  if (/_ratio$/.test(name) && metric.type === 'trend') {
    return ['min', 'avg', 'max'].map((k) => `${k}=${(100 * v[k]).toFixed(2)}%`).join(' ') + ` n=${v.count}`;
  }
  switch (metric.type) {
    case 'trend':
      if (metric.contains === 'time') {
        return ['avg', 'med', 'p(95)', 'p(99)', 'max'].map((k) => `${k}=${fmtMs(v[k])}`).join(' ') + ` n=${v.count}`;
      }
      return ['avg', 'min', 'max'].map((k) => `${k}=${Number(v[k]).toFixed(2)}`).join(' ') + ` n=${v.count}`;
    case 'rate':
      return `${(100 * v.rate).toFixed(2)}% (${v.passes}/${v.passes + v.fails})`;
    case 'counter':
      return `${v.count} (${v.rate.toFixed(1)}/s)`;
    case 'gauge':
      return `${v.value}`;
    default:
      return JSON.stringify(v);
  }
}

function collectChecks(group, out) {
  for (const c of group.checks || []) {
    const key = c.name;
    out[key] = out[key] || { passes: 0, fails: 0 };
    out[key].passes += c.passes;
    out[key].fails += c.fails;
  }
  for (const g of group.groups || []) collectChecks(g, out);
  return out;
}

const ALWAYS_TRUE = new Set(['count>=0', 'max>=0', 'rate>=0']);

// `extra` = lines the script wants on top (e.g. RSS start/end, refused share).
export function textSummary(name, data, extra = []) {
  const lines = [];
  const secs = (data.state.testRunDurationMs / 1000).toFixed(1);
  let failed = 0;
  lines.push('');
  lines.push(`=== retriever k6 ${name} against ${BASE_URL} (${secs}s) ===`);
  for (const l of extra) lines.push(`  ${l}`);

  const checks = collectChecks(data.root_group, {});
  if (Object.keys(checks).length) {
    lines.push('checks:');
    for (const [k, c] of Object.entries(checks)) {
      lines.push(`  ${c.fails === 0 ? 'ok  ' : 'FAIL'} ${k}: ${c.passes}/${c.passes + c.fails}`);
    }
  }

  const withThresholds = Object.keys(data.metrics).filter((k) => data.metrics[k].thresholds).sort();
  lines.push('thresholds:');
  for (const k of withThresholds) {
    const m = data.metrics[k];
    for (const [expr, t] of Object.entries(m.thresholds)) {
      if (!t.ok) failed++;
      // always-true thresholds only exist to keep a submetric in the summary data
      if (t.ok && ALWAYS_TRUE.has(expr)) continue;
      lines.push(`  ${t.ok ? 'ok  ' : 'FAIL'} ${k} ${expr}   [${fmtValues(m, k)}]`);
    }
  }

  const shown = ['http_reqs', 'iterations', 'dropped_iterations', 'queries_sent', 'queries_answered', 'vus_max'];
  lines.push('totals:');
  for (const k of shown) if (data.metrics[k] && !data.metrics[k].thresholds) lines.push(`  ${k}: ${fmtValues(data.metrics[k])}`);
  lines.push(failed ? `RESULT: FAIL (${failed} threshold(s) crossed)` : 'RESULT: PASS');
  lines.push('');
  return lines.join('\n');
}

// handleSummary helper: JSON into RESULTS_DIR/<name>.json, our text on stdout.
export function summaryOutputs(name, data, extra = []) {
  const out = { stdout: textSummary(name, data, extra) };
  out[`${RESULTS_DIR}/${name}.json`] = JSON.stringify(
    { script: name, base_url: BASE_URL, finished_at: new Date().toISOString(), extra, ...data },
    null,
    1,
  );
  return out;
}

// Per-shape view of a trend for `extra` lines.
export function trendLine(data, metric, label) {
  const m = data.metrics[metric];
  if (!m) return `${label}: no data`;
  return `${label}: ${fmtValues(m, metric)}`;
}
