// Steady single-query traffic while the test sends SIGTERM to the server. Every request is
// recorded by k6's JSON output; the pytest side classifies them (see tests/test_shutdown.py).
import http from 'k6/http';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 20),
      timeUnit: '1s',
      duration: __ENV.DURATION || '8s',
      preAllocatedVUs: 20,
      maxVUs: 40,
    },
  },
  // Errors are expected once the listener closes; the test judges them, not k6.
  thresholds: {},
};

export default function () {
  http.post(
    `${BASE_URL}/retrieve`,
    JSON.stringify({ queries: [`history of jazz ${__ITER % 50}`], topk: 3, return_scores: true }),
    { headers: { 'Content-Type': 'application/json' }, timeout: '20s' },
  );
}
