// smoke.js: seconds-long CI gate. Walks the HTTP contract once (health, metrics, both answer formats,
// topk defaults, a malformed request, a small relevance probe), then sends a few seconds of light
// traffic in both client shapes. Any failed check or request fails the run.
//
//   k6 run loadtest/smoke.js                       # against http://127.0.0.1:8000
//   BASE_URL=http://127.0.0.1:18000 RELEVANCE_MIN=0.6 k6 run loadtest/smoke.js
import http from 'k6/http';
import { check, group } from 'k6';
import { Rate } from 'k6/metrics';
import {
  BASE_URL,
  BATCH_SIZE,
  LABELLED,
  RSS_METRIC,
  TREND_STATS,
  batchRequest,
  checkAnswer,
  num,
  perMinute,
  postRetrieve,
  randomQueries,
  retrieveBody,
  scrapeMetrics,
  singleRequest,
  summaryOutputs,
  titleOf,
} from './lib.js';

const DURATION = __ENV.SMOKE_DURATION || '5s';
// hit@topk over the labelled queries. 0 (the default) only reports it: against the demo index
// (`make load-test`) the Makefile sets 0.6; against another corpus the labels mean nothing.
const RELEVANCE_MIN = num('RELEVANCE_MIN', 0);
const relevanceHit = new Rate('relevance_hit');

const thresholds = {
  checks: ['rate==1'],
  http_req_failed: ['rate==0'],
  // loose: this gate catches a hung server, load.js judges a slow one
  'http_req_duration{shape:single}': ['p(95)<2000'],
  'http_req_duration{shape:batch}': ['p(95)<4000'],
};
if (RELEVANCE_MIN > 0) thresholds.relevance_hit = [`rate>=${RELEVANCE_MIN}`];

export const options = {
  scenarios: {
    contract: { executor: 'per-vu-iterations', vus: 1, iterations: 1, exec: 'contract', maxDuration: '60s' },
    single: {
      executor: 'constant-arrival-rate',
      exec: 'single',
      rate: perMinute(num('SMOKE_SINGLE_RATE', 5)),
      timeUnit: '1m',
      duration: DURATION,
      preAllocatedVUs: 5,
      maxVUs: 20,
    },
    batch: {
      executor: 'constant-arrival-rate',
      exec: 'batch',
      rate: perMinute(num('SMOKE_BATCH_RATE', 0.5)),
      timeUnit: '1m',
      duration: DURATION,
      preAllocatedVUs: 2,
      maxVUs: 5,
    },
  },
  thresholds,
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  const r = http.get(`${BASE_URL}/health`, { tags: { name: 'GET /health' }, timeout: '10s' });
  if (r.status !== 200) throw new Error(`${BASE_URL}/health answered ${r.status}: is the server up and ready?`);
}

function jsonOf(res) {
  try {
    return res.json();
  } catch (e) {
    return null;
  }
}

export function contract() {
  group('endpoints', () => {
    const health = http.get(`${BASE_URL}/health`, { tags: { name: 'GET /health' } });
    check(health, {
      'health: 200 ready': (r) => r.status === 200 && (jsonOf(r) || {}).status === 'ready',
    });
    const livez = http.get(`${BASE_URL}/livez`, { tags: { name: 'GET /livez' } });
    check(livez, { 'livez: 200': (r) => r.status === 200 });
    const info = http.get(`${BASE_URL}/info`, { tags: { name: 'GET /info' } });
    check(info, { 'info: 200 JSON': (r) => r.status === 200 && jsonOf(r) !== null });
    const m = scrapeMetrics(['retriever_ready', RSS_METRIC, 'retriever_queries_total']);
    check(m, {
      'metrics: retriever_ready 1': (x) => x.retriever_ready === 1,
      [`metrics: ${RSS_METRIC} present`]: (x) => x[RSS_METRIC] > 0,
      'metrics: retriever_queries_total present': (x) => x.retriever_queries_total !== null,
    });
  });

  group('retrieve formats', () => {
    const tags = { shape: 'contract' };
    const one = randomQueries(1);
    checkAnswer(postRetrieve(retrieveBody(one, 3, true), { tags }), 1, tags, 3, true);
    const many = randomQueries(BATCH_SIZE);
    checkAnswer(postRetrieve(retrieveBody(many, 3, true), { tags, timeout: '60s' }), BATCH_SIZE, tags, 3, true);
    // Search-R1's own server answers 500 here; ours must return rows only.
    checkAnswer(postRetrieve(retrieveBody(one, 3, false), { tags }), 1, tags, 3, false);
    // return_scores omitted -> false -> rows only
    checkAnswer(postRetrieve({ queries: one, topk: 3 }, { tags }), 1, tags, 3, false);
    // topk null / 0 -> the server default, 3
    checkAnswer(postRetrieve({ queries: one, topk: null, return_scores: true }, { tags }), 1, tags, 3, true);
    checkAnswer(postRetrieve({ queries: one, topk: 0, return_scores: true }, { tags }), 1, tags, 3, true);
    checkAnswer(postRetrieve(retrieveBody(one, 5, true), { tags }), 1, tags, 5, true);
  });

  group('malformed request', () => {
    const bad = postRetrieve({ topk: 3 }, { tags: { shape: 'contract' }, expected: [{ min: 400, max: 499 }] });
    check(bad, { 'retrieve: missing queries -> 4xx, not 5xx': (r) => r.status >= 400 && r.status < 500 });
    const notJson = postRetrieve('{"queries": [', { tags: { shape: 'contract' }, expected: [{ min: 400, max: 499 }] });
    check(notJson, { 'retrieve: broken JSON -> 4xx, not 5xx': (r) => r.status >= 400 && r.status < 500 });
  });

  group('relevance', () => {
    // hit@3 of the labelled queries (their article among the top 3), in Search-R1-sized batches.
    const tags = { shape: 'contract' };
    for (let start = 0; start < LABELLED.length; start += BATCH_SIZE) {
      const items = [];
      for (let i = start; i < Math.min(start + BATCH_SIZE, LABELLED.length); i++) items.push(LABELLED[i]);
      const res = postRetrieve(retrieveBody(items.map((x) => x.q), 3, true), { tags, timeout: '60s' });
      if (!checkAnswer(res, items.length, tags, 3, true)) continue;
      const result = res.json().result;
      items.forEach((x, i) => {
        relevanceHit.add(result[i].some((hit) => titleOf(hit.document.contents) === x.title));
      });
    }
  });
}

export function single() {
  const { res } = singleRequest();
  checkAnswer(res, 1, { shape: 'single' });
}

export function batch() {
  const { res } = batchRequest();
  checkAnswer(res, BATCH_SIZE, { shape: 'batch' });
}

export function handleSummary(data) {
  const extra = [];
  const rel = data.metrics.relevance_hit;
  if (rel) extra.push(`relevance hit@3 on ${rel.values.passes + rel.values.fails} labelled queries: ${(100 * rel.values.rate).toFixed(1)}%`);
  return summaryOutputs('smoke', data, extra);
}
