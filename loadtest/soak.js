// soak.js: steady traffic in both shapes for a bounded time (SOAK_DURATION, 10m by default) at the
// load.js rates; memory must stay flat. A `monitor` scenario reads the server's RSS from /metrics
// (retriever_process_resident_memory_bytes, summed over worker pids) every few seconds: the first
// sample after SOAK_WARMUP is the baseline, and `rss_growth_ratio` (RSS / baseline - 1) must stay
// under RSS_GROWTH_MAX. RSS at setup (idle) and teardown (end) and the server's own query counter
// are reported too. `make soak` also samples the server process's RSS from /proc.
//
//   SOAK_DURATION=30m k6 run loadtest/soak.js
import http from 'k6/http';
import { sleep } from 'k6';
import { Gauge, Trend } from 'k6/metrics';
import {
  BASE_URL,
  BATCH_SIZE,
  RSS_METRIC,
  TREND_STATS,
  batchRequest,
  checkAnswer,
  durationSeconds,
  fmtBytes,
  num,
  perMinute,
  queriesSent,
  scrapeMetrics,
  singleRequest,
  summaryOutputs,
  trendLine,
} from './lib.js';

const DURATION = __ENV.SOAK_DURATION || '10m';
const WARMUP_S = num('SOAK_WARMUP_S', 60);
const SAMPLE_S = num('SOAK_SAMPLE_S', 5);
const SINGLE_RATE = num('SINGLE_RATE', 20);
const BATCH_RATE = num('BATCH_RATE', 1);
const SINGLE_VUS = Math.max(20, Math.ceil(SINGLE_RATE * 5));
const BATCH_VUS = Math.max(5, Math.ceil(BATCH_RATE * 5));
const RSS_GROWTH_MAX = num('RSS_GROWTH_MAX', 0.1);
if (durationSeconds(DURATION) < WARMUP_S + 3 * SAMPLE_S) {
  // Fewer samples would leave rss_growth_ratio empty, and an empty trend passes its threshold.
  throw new Error(`SOAK_DURATION=${DURATION} leaves no RSS samples after SOAK_WARMUP_S=${WARMUP_S}s; lengthen it`);
}

const rssGrowth = new Trend('rss_growth_ratio');
const serverRss = new Trend('server_rss_bytes');
const rssEnd = new Gauge('server_rss_end_bytes');
const serverQueriesEnd = new Gauge('server_queries_total_end');

export const options = {
  scenarios: {
    single: {
      executor: 'constant-arrival-rate',
      exec: 'single',
      rate: perMinute(SINGLE_RATE),
      timeUnit: '1m',
      duration: DURATION,
      preAllocatedVUs: SINGLE_VUS,
      maxVUs: SINGLE_VUS,
    },
    batch: {
      executor: 'constant-arrival-rate',
      exec: 'batch',
      rate: perMinute(BATCH_RATE),
      timeUnit: '1m',
      duration: DURATION,
      preAllocatedVUs: BATCH_VUS,
      maxVUs: BATCH_VUS,
    },
    monitor: { executor: 'constant-vus', exec: 'monitor', vus: 1, duration: DURATION },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    'http_req_duration{shape:single}': [`p(95)<${num('SINGLE_P95_MS', 500)}`, `p(99)<${num('SINGLE_P99_MS', 1000)}`],
    'http_req_duration{shape:batch}': [`p(95)<${num('BATCH_P95_MS', 1000)}`, `p(99)<${num('BATCH_P99_MS', 2000)}`],
    dropped_iterations: [`count<=${num('MAX_DROPPED', 0)}`],
    rss_growth_ratio: [`max<${RSS_GROWTH_MAX}`],
  },
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  const r = http.get(`${BASE_URL}/health`, { tags: { name: 'GET /health' }, timeout: '10s' });
  if (r.status !== 200) throw new Error(`${BASE_URL}/health answered ${r.status}: is the server up and ready?`);
  const m = scrapeMetrics([RSS_METRIC, 'retriever_queries_total']);
  if (m[RSS_METRIC] === null) throw new Error(`${BASE_URL}/metrics has no ${RSS_METRIC}: cannot judge memory`);
  return { rss_start: m[RSS_METRIC], queries_start: m.retriever_queries_total, t0: Date.now() };
}

export function single() {
  const { res } = singleRequest();
  queriesSent.add(1, { shape: 'single' });
  checkAnswer(res, 1, { shape: 'single' });
}

export function batch() {
  const { res } = batchRequest();
  queriesSent.add(BATCH_SIZE, { shape: 'batch' });
  checkAnswer(res, BATCH_SIZE, { shape: 'batch' });
}

let baseline = null; // per VU; the monitor scenario has one VU
export function monitor(setupData) {
  const rss = scrapeMetrics([RSS_METRIC])[RSS_METRIC];
  if (rss !== null) {
    serverRss.add(rss);
    if ((Date.now() - setupData.t0) / 1000 >= WARMUP_S) {
      if (baseline === null) baseline = rss;
      rssGrowth.add(rss / baseline - 1);
    }
  }
  sleep(SAMPLE_S);
}

export function teardown() {
  const m = scrapeMetrics([RSS_METRIC, 'retriever_queries_total']);
  if (m[RSS_METRIC] !== null) rssEnd.add(m[RSS_METRIC]);
  if (m.retriever_queries_total !== null) serverQueriesEnd.add(m.retriever_queries_total);
}

export function handleSummary(data) {
  const v = (k, s) => (data.metrics[k] ? data.metrics[k].values[s] : undefined);
  const sd = data.setup_data || {};
  const growth = v('rss_growth_ratio', 'max');
  const qEnd = v('server_queries_total_end', 'value');
  return summaryOutputs('soak', data, [
    `offered: ${SINGLE_RATE} single calls/s + ${BATCH_RATE} batch calls/s x ${BATCH_SIZE} for ${DURATION}`,
    `server RSS: start (idle) ${fmtBytes(sd.rss_start)}, min ${fmtBytes(v('server_rss_bytes', 'min'))}, ` +
      `max ${fmtBytes(v('server_rss_bytes', 'max'))}, end ${fmtBytes(v('server_rss_end_bytes', 'value'))}`,
    `RSS growth after ${WARMUP_S}s warm-up: max ${growth === undefined ? '-' : (100 * growth).toFixed(2) + '%'} (limit ${100 * RSS_GROWTH_MAX}%)`,
    `requests ${v('http_reqs', 'count')}, queries sent ${v('queries_sent', 'count') || 0}, answered ${v('queries_answered', 'count') || 0}` +
      (qEnd !== undefined && sd.queries_start !== null ? `, server counted ${qEnd - sd.queries_start}` : ''),
    trendLine(data, 'http_req_duration{shape:single}', 'single latency'),
    trendLine(data, 'http_req_duration{shape:batch}', 'batch latency'),
  ]);
}
