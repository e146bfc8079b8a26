"""templates/dashboards-configmap.yaml: one ConfigMap per chart dashboard, labelled for Grafana."""

from __future__ import annotations

from pathlib import Path

from chart_helpers import CHART, FULLNAME, ci, render


def test_one_dashboard_configmap_per_chart_dashboard() -> None:
    r = render([ci("monitoring")])
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    cms = r.all("ConfigMap")
    assert len(cms) == len(files)
    by_key = {next(iter(cm["data"])): cm for cm in cms}
    for f in files:
        cm = by_key[f.name]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Retrieval"}
        assert cm["data"][f.name] == f.read_text()  # byte for byte


def test_dashboard_configmaps_from_files(chart_copy: Path) -> None:
    dash = chart_copy / "files" / "dashboards"
    for f in dash.glob("*.json"):
        f.unlink()
    (dash / "Retriever_Overview.json").write_text('{"uid": "a", "title": "A <&> é"}\n')
    (dash / "capacity.json").write_text('{"uid": "b", "title": "B"}')
    cms = render([ci("monitoring")], chart=chart_copy).all("ConfigMap")
    names = sorted(cm["metadata"]["name"] for cm in cms)
    assert names == [f"{FULLNAME}-dashboard-capacity", f"{FULLNAME}-dashboard-retriever-overview"]
    data = {k: v for cm in cms for k, v in cm["data"].items()}
    assert data == {
        "Retriever_Overview.json": '{"uid": "a", "title": "A <&> é"}\n',
        "capacity.json": '{"uid": "b", "title": "B"}',
    }
    assert all(cm["metadata"]["labels"]["grafana_dashboard"] == "1" for cm in cms)
