# The chart's values table (helm/retriever/README.md) and values.schema.json descriptions are
# generated from the `# --` comments in values.yaml by tools/chart_docs.py.
# k8s-tests/test_chart_docs.py fails when either is out of date: after adding or changing a value
# (or rebasing onto someone who did), run `make chart-docs` and commit what it changed.

.PHONY: chart-docs chart-docs-check

chart-docs: install ## regenerate the chart README's values table and the schema descriptions from values.yaml
	$(PY) tools/chart_docs.py

chart-docs-check: install ## fail when the values table or schema descriptions are out of date
	$(PY) tools/chart_docs.py --check
