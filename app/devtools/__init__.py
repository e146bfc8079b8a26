"""Development harness shared by tests/, bench/, loadtest/ and k8s-tests/ (not used by the server).

- `app.devtools.server`: `retriever serve` as a child process on a free loopback port, readiness
  waits with a bound and the log's tail in every failure, stop by PID;
- `app.devtools.prometheus`: a real Prometheus (the Debian package) on loopback;
- `app.devtools.observability`: the dashboards' live scenario (service + Prometheus + bounded load);
- `app.procstat` (runtime, the metrics use it): memory and CPU of a process tree from /proc.

It lives inside `app` so that the editable install (`make install`) makes it importable from every
folder and script without `sys.path` edits. It needs nothing beyond the runtime dependencies.
"""
