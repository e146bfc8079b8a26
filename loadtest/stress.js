// stress.js: drive the server well past saturation and check that it sheds load the way verl's
// client can live with. Open-model traffic (ramping-arrival-rate) in both shapes rises from half the
// measured capacity to STRESS_FACTOR x capacity (5x by default), holds, then drops.
// Allowed answers: a valid 200, or a fast refusal with OVERLOAD_STATUS (503 default) + Retry-After.
// Anything else fails the run: other 4xx/5xx, malformed 200s, timeouts, connection errors.
// It reports the refused share, refusal latency, the p99 of admitted requests and peak server RSS
// (sampled from /metrics once a second by a `monitor` scenario).
//
//   CAPACITY_QPS=400 k6 run loadtest/stress.js
import http from 'k6/http';
import { sleep } from 'k6';
import { Trend } from 'k6/metrics';
import {
  BASE_URL,
  BATCH_SIZE,
  OVERLOAD_STATUS,
  RSS_METRIC,
  TREND_STATS,
  batchRequest,
  classify,
  durationSeconds,
  fmtBytes,
  num,
  perMinute,
  scrapeMetrics,
  singleRequest,
  summaryOutputs,
  trendLine,
} from './lib.js';

// Capacity of the target in queries/s (from `make capacity`); the default is the figure measured
// on the 2-core CI machine with the demo index, see README.md.
const CAPACITY = num('CAPACITY_QPS', 100);
const FACTOR = num('STRESS_FACTOR', 5);
const SINGLE_SHARE = num('SINGLE_SHARE', 0.5); // share of queries sent as 1-query calls
const RAMP = __ENV.STRESS_RAMP || '15s';
const HOLD = __ENV.STRESS_HOLD || '30s';
const WARM = __ENV.STRESS_WARM || '10s';

// calls per second (fractions allowed; the scenarios count per minute)
const singlePeak = CAPACITY * FACTOR * SINGLE_SHARE;
const batchPeak = (CAPACITY * FACTOR * (1 - SINGLE_SHARE)) / BATCH_SIZE;
const singleHalf = CAPACITY * 0.5 * SINGLE_SHARE;
const batchHalf = (CAPACITY * 0.5 * (1 - SINGLE_SHARE)) / BATCH_SIZE;

function stages(half, peak) {
  return [
    { target: perMinute(half), duration: WARM }, // below capacity: everything admitted
    { target: perMinute(peak), duration: RAMP }, // through saturation
    { target: perMinute(peak), duration: HOLD }, // FACTOR x capacity
    { target: 0, duration: '5s' },
  ];
}

const TOTAL_S = durationSeconds(WARM) + durationSeconds(RAMP) + durationSeconds(HOLD) + 5;

// A refusal must come back within milliseconds; admitted requests must keep a bounded p99.
const REFUSAL_P99 = num('REFUSAL_P99_MS', 250);
const ADMITTED_SINGLE_P99 = num('ADMITTED_SINGLE_P99_MS', 3000);
const ADMITTED_BATCH_P99 = num('ADMITTED_BATCH_P99_MS', 5000);

const serverRss = new Trend('server_rss_bytes');
const serverQueue = new Trend('server_queue_depth');
const serverInflight = new Trend('server_inflight_requests');

// Refusals are an expected answer here: http_req_failed counts only the rest.
http.setResponseCallback(http.expectedStatuses(200, OVERLOAD_STATUS));

const thresholds = {
  http_req_failed: ['rate==0'],
  checks: ['rate==1'],
  unexpected_responses: ['count<1'],
  timeouts: ['count<1'],
  transport_errors: ['count<1'],
  refusal_without_retry_after: ['count<1'],
  refusal_duration: [`p(99)<${REFUSAL_P99}`],
  'http_req_duration{shape:single,status:200}': [`p(99)<${ADMITTED_SINGLE_P99}`],
  'http_req_duration{shape:batch,status:200}': [`p(99)<${ADMITTED_BATCH_P99}`],
  // Proof that we got past saturation; a server that never refuses at 5x queues without bound.
  refused: [num('REQUIRE_REFUSALS', 1) ? 'rate>0' : 'rate>=0'],
  // Listed so the summary carries the per-shape shares.
  'refused{shape:single}': ['rate>=0'],
  'refused{shape:batch}': ['rate>=0'],
};
// Optional ceiling on peak server RSS (MiB), e.g. the pod's memory limit minus headroom.
if (num('RSS_MAX_MB', 0) > 0) thresholds.server_rss_bytes = [`max<${num('RSS_MAX_MB', 0) * 1048576}`];

export const options = {
  scenarios: {
    single: {
      executor: 'ramping-arrival-rate',
      exec: 'single',
      startRate: 60,
      timeUnit: '1m',
      stages: stages(singleHalf, singlePeak),
      preAllocatedVUs: Math.min(100, Math.ceil(singlePeak)),
      maxVUs: num('SINGLE_MAX_VUS', 600),
    },
    batch: {
      executor: 'ramping-arrival-rate',
      exec: 'batch',
      startRate: 60,
      timeUnit: '1m',
      stages: stages(batchHalf, batchPeak),
      preAllocatedVUs: Math.min(20, Math.ceil(batchPeak * 2)),
      maxVUs: num('BATCH_MAX_VUS', 150),
    },
    monitor: { executor: 'constant-vus', exec: 'monitor', vus: 1, duration: `${TOTAL_S}s` },
  },
  thresholds,
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  const r = http.get(`${BASE_URL}/health`, { tags: { name: 'GET /health' }, timeout: '10s' });
  if (r.status !== 200) throw new Error(`${BASE_URL}/health answered ${r.status}: is the server up and ready?`);
  const m = scrapeMetrics([RSS_METRIC]);
  return { rss_start: m[RSS_METRIC] };
}

export function single() {
  classify(singleRequest().res, 1, { shape: 'single' });
}

export function batch() {
  classify(batchRequest().res, BATCH_SIZE, { shape: 'batch' });
}

export function monitor() {
  const m = scrapeMetrics([RSS_METRIC, 'retriever_queue_depth', 'retriever_inflight_requests']);
  if (m[RSS_METRIC] !== null) serverRss.add(m[RSS_METRIC]);
  if (m.retriever_queue_depth !== null) serverQueue.add(m.retriever_queue_depth);
  if (m.retriever_inflight_requests !== null) serverInflight.add(m.retriever_inflight_requests);
  sleep(1);
}

export function handleSummary(data) {
  const v = (k, s) => (data.metrics[k] ? data.metrics[k].values[s] : undefined);
  const pct = (k) => (data.metrics[k] ? `${(100 * data.metrics[k].values.rate).toFixed(1)}%` : '-');
  const rssStart = data.setup_data ? data.setup_data.rss_start : null;
  return summaryOutputs('stress', data, [
    `capacity ${CAPACITY} queries/s x ${FACTOR} = peak ${singlePeak.toFixed(1)} single calls/s + ${batchPeak.toFixed(1)} batch calls/s x ${BATCH_SIZE}`,
    `stages: ${WARM} to half capacity, ${RAMP} ramp, ${HOLD} hold at peak, 5s down`,
    `refused share: all ${pct('refused')}, single ${pct('refused{shape:single}')}, batch ${pct('refused{shape:batch}')}`,
    trendLine(data, 'refusal_duration', 'refusal latency'),
    trendLine(data, 'http_req_duration{shape:single,status:200}', 'admitted single latency'),
    trendLine(data, 'http_req_duration{shape:batch,status:200}', 'admitted batch latency'),
    `queries sent ${v('queries_sent', 'count') || 0}, answered ${v('queries_answered', 'count') || 0} (${(v('queries_answered', 'rate') || 0).toFixed(1)}/s)`,
    `server RSS: start ${fmtBytes(rssStart)}, peak ${fmtBytes(v('server_rss_bytes', 'max'))}` +
      `; server queue depth max ${v('server_queue_depth', 'max') ?? '-'}, in-flight max ${v('server_inflight_requests', 'max') ?? '-'}`,
    `timeouts ${v('timeouts', 'count') || 0}, transport errors ${v('transport_errors', 'count') || 0}, unexpected ${v('unexpected_responses', 'count') || 0}, dropped iterations ${v('dropped_iterations', 'count') || 0}`,
  ]);
}
