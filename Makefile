# Two commands do all the set-up on a fresh machine:
#   make demo   prepare the embedded synthetic dataset, train a small VGG on it and evaluate it
#   make test   the whole test suite (formatting, lints, unit and integration tests)
SHELL := bash
CARGO ?= cargo
ORT_VERSION := 1.31.1
ORT_LIB := .cache/onnxruntime/$(ORT_VERSION)/libonnxruntime.so
VGG := target/release/vgg

.PHONY: all setup build demo test lint bench clean-demo

all: build

# ONNX Runtime from the pinned PyPI wheel (sha256-checked) into the git-ignored .cache/.
setup: $(ORT_LIB)
$(ORT_LIB): scripts/fetch-onnxruntime.sh
	bash scripts/fetch-onnxruntime.sh

build: setup
	$(CARGO) build --release --locked

demo: build
	$(VGG) generate synthetic-shapes
	$(VGG) prepare synthetic-shapes
	$(VGG) inspect synthetic-shapes
	$(VGG) verify synthetic-shapes
	$(VGG) preview pipelines/demo.toml --out runs/demo-preview.png --count 32
	$(VGG) bench loader pipelines/demo.toml --batches 10
	$(VGG) runtime
	$(VGG) model summary pipelines/demo.toml
	rm -rf runs/demo
	$(VGG) train pipelines/demo.toml --out runs/demo
	$(VGG) eval pipelines/demo.toml --checkpoint runs/demo/best.safetensors --protocol dense+multi-crop
	$(VGG) model export pipelines/demo.toml --dense --weights runs/demo/best.safetensors --out runs/demo/demo-dense.onnx

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test: setup lint
	$(CARGO) test --locked

bench: setup
	$(CARGO) bench --locked --bench prepare
	$(CARGO) bench --locked --bench loader
	$(CARGO) bench --locked --bench train_step

clean-demo:
	rm -rf data/synthetic-shapes shards/synthetic-shapes
