// load.js: the SLO gate. Open-model traffic (constant-arrival-rate: requests arrive at a fixed rate
// whether or not the server keeps up, as a trainer's workers do) in both client shapes at once:
//   single: verl's search tool, many concurrent 1-query calls (SINGLE_RATE calls/s)
//   batch:  Search-R1's rollout step, fewer 16-query calls (BATCH_RATE calls/s)
// Default rates are about half of the capacity measured on the 2-core CI machine with the demo
// index (see README.md); against a real node pass rates from `make capacity` there.
//
//   k6 run loadtest/load.js
//   BASE_URL=http://127.0.0.1:18000 SINGLE_RATE=40 BATCH_RATE=2 DURATION=2m k6 run loadtest/load.js
import http from 'k6/http';
import {
  BASE_URL,
  BATCH_SIZE,
  TREND_STATS,
  batchRequest,
  checkAnswer,
  num,
  perMinute,
  queriesSent,
  singleRequest,
  summaryOutputs,
  trendLine,
} from './lib.js';

const DURATION = __ENV.DURATION || '30s';
const SINGLE_RATE = num('SINGLE_RATE', 20);
const BATCH_RATE = num('BATCH_RATE', 1);
const SINGLE_VUS = Math.max(20, Math.ceil(SINGLE_RATE * 5));
const BATCH_VUS = Math.max(5, Math.ceil(BATCH_RATE * 5));
// Latency SLOs per shape (ms); see README.md for how they were chosen.
const SINGLE_P95 = num('SINGLE_P95_MS', 500);
const SINGLE_P99 = num('SINGLE_P99_MS', 1000);
const BATCH_P95 = num('BATCH_P95_MS', 1000);
const BATCH_P99 = num('BATCH_P99_MS', 2000);

export const options = {
  scenarios: {
    single: {
      executor: 'constant-arrival-rate',
      exec: 'single',
      rate: perMinute(SINGLE_RATE),
      timeUnit: '1m',
      duration: DURATION,
      // VUs are cheap: enough for 5 s of backlog, all allocated up front, so a dropped iteration
      // means the server fell 5 s behind, not that k6 was slow to start a VU.
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
  },
  thresholds: {
    // At half capacity nothing may fail: no refusals, no 5xx, no timeouts (1% slack for a
    // disturbed shared runner is all we allow).
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    'http_req_duration{shape:single}': [`p(95)<${SINGLE_P95}`, `p(99)<${SINGLE_P99}`],
    'http_req_duration{shape:batch}': [`p(95)<${BATCH_P95}`, `p(99)<${BATCH_P99}`],
    // Iterations k6 could not start because every VU was still waiting: the server fell behind.
    dropped_iterations: [`count<=${num('MAX_DROPPED', 0)}`],
  },
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  const r = http.get(`${BASE_URL}/health`, { tags: { name: 'GET /health' }, timeout: '10s' });
  if (r.status !== 200) throw new Error(`${BASE_URL}/health answered ${r.status}: is the server up and ready?`);
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

export function handleSummary(data) {
  const offered = SINGLE_RATE + BATCH_RATE * BATCH_SIZE;
  return summaryOutputs('load', data, [
    `offered: ${SINGLE_RATE} single calls/s + ${BATCH_RATE} batch calls/s x ${BATCH_SIZE} = ${offered} queries/s for ${DURATION}`,
    trendLine(data, 'http_req_duration{shape:single}', 'single latency'),
    trendLine(data, 'http_req_duration{shape:batch}', 'batch latency'),
  ]);
}
