// capacity.js: a short closed-model ramp to measure what the target serves, per client shape.
// Steps of constant concurrency (CAP_STEP each), first 1-query calls, then 16-query calls; for each
// step it reports answered queries/s, refusals and latency. The capacity of a shape is its best
// step; the mix capacity is what load.js/stress.js need (CAPACITY_QPS):
//   1 / mix = SINGLE_SHARE / single + (1 - SINGLE_SHARE) / batch
// It has no pass/fail beyond "every answer valid"; `make capacity` runs it against the demo server.
//
//   k6 run loadtest/capacity.js
//   CAP_SINGLE_STEPS=1,16,64,128 CAP_BATCH_STEPS=1,4,8 k6 run loadtest/capacity.js
import { sleep } from 'k6';
import { Counter } from 'k6/metrics';
import {
  BATCH_SIZE,
  OVERLOAD_STATUS,
  TREND_STATS,
  batchRequest,
  checkAnswer,
  durationSeconds,
  num,
  singleRequest,
  summaryOutputs,
} from './lib.js';

const STEP = __ENV.CAP_STEP || '8s';
const GAP_S = 2;
const SINGLE_STEPS = (__ENV.CAP_SINGLE_STEPS || '1,8,32,96').split(',').map(Number);
const BATCH_STEPS = (__ENV.CAP_BATCH_STEPS || '1,2,4,8').split(',').map(Number);
const SINGLE_SHARE = num('SINGLE_SHARE', 0.5);
const stepRefused = new Counter('step_refused');

const scenarios = {};
const thresholds = { checks: ['rate>0.99'] };
const steps = [];
let start = 0;
for (const [shape, list] of [
  ['single', SINGLE_STEPS],
  ['batch', BATCH_STEPS],
]) {
  for (const vus of list) {
    const name = `${shape}_c${vus}`;
    scenarios[name] = {
      executor: 'constant-vus',
      exec: shape,
      vus,
      duration: STEP,
      startTime: `${start}s`,
      gracefulStop: `${GAP_S}s`,
      tags: { step: name },
    };
    // Thresholds that always pass: they make k6 keep the per-step submetrics for the summary.
    thresholds[`queries_answered{step:${name}}`] = ['count>=0'];
    thresholds[`step_refused{step:${name}}`] = ['count>=0'];
    thresholds[`http_req_duration{step:${name}}`] = ['max>=0'];
    steps.push({ name, shape, vus });
    start += durationSeconds(STEP) + GAP_S;
  }
}

export const options = { scenarios, thresholds, summaryTrendStats: TREND_STATS };

function record(res, n, shape) {
  if (res.status === OVERLOAD_STATUS) {
    // Past the server's admission limit: back off briefly instead of spinning on refusals.
    stepRefused.add(1);
    sleep(0.1);
  } else checkAnswer(res, n, { shape });
}

export function single() {
  record(singleRequest().res, 1, 'single');
}

export function batch() {
  record(batchRequest().res, BATCH_SIZE, 'batch');
}

export function handleSummary(data) {
  const secs = durationSeconds(STEP);
  const best = { single: 0, batch: 0 };
  const lines = [`step ${STEP} each; queries/s = answered queries / step time`];
  lines.push('step            VUs   queries/s   refused   p50       p95       p99');
  for (const s of steps) {
    const q = data.metrics[`queries_answered{step:${s.name}}`];
    const r = data.metrics[`step_refused{step:${s.name}}`];
    const d = data.metrics[`http_req_duration{step:${s.name}}`];
    const qps = q ? q.values.count / secs : 0;
    best[s.shape] = Math.max(best[s.shape], qps);
    const ms = (k) => (d && d.values[k] !== undefined ? `${d.values[k].toFixed(0)}ms` : '-');
    lines.push(
      `${s.name.padEnd(15)} ${String(s.vus).padStart(3)} ${qps.toFixed(1).padStart(11)} ${String(r ? r.values.count : 0).padStart(9)}   ` +
        `${ms('med').padEnd(9)} ${ms('p(95)').padEnd(9)} ${ms('p(99)')}`,
    );
  }
  const mix = best.single && best.batch ? 1 / (SINGLE_SHARE / best.single + (1 - SINGLE_SHARE) / best.batch) : 0;
  lines.push(`capacity: single ${best.single.toFixed(0)} queries/s, batch ${best.batch.toFixed(0)} queries/s, ` +
    `mix (${100 * SINGLE_SHARE}% of queries as single calls) ${mix.toFixed(0)} queries/s`);
  lines.push(`suggested: CAPACITY_QPS=${mix.toFixed(0)}; load at half: SINGLE_RATE=${((mix / 2) * SINGLE_SHARE).toFixed(0)} ` +
    `BATCH_RATE=${((mix / 2) * (1 - SINGLE_SHARE) / BATCH_SIZE).toFixed(1)}`);
  return summaryOutputs('capacity', data, lines);
}
