// Short, bounded k6 traffic for the k6 dashboard test: pushed to the test Prometheus through k6's
// remote-write output (see obs_harness.run_k6). Loopback only; BASE_URL is set by the harness.
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
const QUERIES = ['epic poem by john milton', 'painting by georges seurat', 'capital city of france'];

export const options = {
  scenarios: {
    single: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.OBS_K6_RATE || 3),
      timeUnit: '1s',
      duration: __ENV.OBS_K6_DURATION || '6s',
      preAllocatedVUs: 2,
      maxVUs: 4,
      gracefulStop: '10s',
    },
  },
};

export default function () {
  const params = { headers: { 'content-type': 'application/json' }, timeout: '20s' };
  const i = exec.scenario.iterationInTest; // across all VUs (__ITER counts per VU)
  if (i % 4 === 1) {
    // a request the server must refuse (topk over the limit): shows up as a failed k6 request
    const bad = http.post(`${BASE_URL}/retrieve`, JSON.stringify({ queries: ['x'], topk: 100000 }),
      Object.assign({ tags: { name: 'retrieve-bad-topk' } }, params));
    check(bad, { 'bad topk refused with 422': (r) => r.status === 422 });
    return;
  }
  const body = JSON.stringify({ queries: [QUERIES[i % QUERIES.length]], topk: 3, return_scores: true });
  const res = http.post(`${BASE_URL}/retrieve`, body, Object.assign({ tags: { name: 'retrieve' } }, params));
  check(res, { 'answered or refused for overload': (r) => r.status === 200 || r.status === 503 });
}
