#!/usr/bin/env bash
# Checks the CUDA path of `vgg` on an NVIDIA GPU machine in one command, and prints a Markdown
# summary to paste into the README (also written to ./gpu-check-summary.md):
#
#   bash scripts/gpu-check.sh
#
# 1. the GPU, driver and CUDA version (nvidia-smi);
# 2. the CUDA 13, cuBLAS, cuRAND, cuFFT, cuDNN 9 and NCCL libraries of the `nvidia-*` pip packages a
#    CUDA 13 build of PyTorch installs (site-packages/nvidia/*/lib), put on LD_LIBRARY_PATH;
# 3. the pinned GPU build of ONNX Runtime (scripts/fetch-onnxruntime.sh --gpu), as ORT_DYLIB_PATH;
#    `vgg runtime` must list CUDAExecutionProvider;
# 4. the CUDA tests (tests/it/gpu.rs), one process each;
# 5. one epoch of `vgg train pipelines/demo.toml` on cuda, and again with two replicas on cuda:0;
# 6. `vgg bench train` of VGG-16 at 224x224 with the largest batch that fits (256, 128, ...), and
#    the PyTorch peer (benches/peers/torch_train_step.py) on the same GPU with the same batch;
# 7. the summary: each check PASS or FAIL with its figures.
#
# Every step has a time limit and a failing one does not stop the others; the exit status is 1
# when any check failed or could not run. The checks take about 5 minutes on an H100/H200 (at most
# GPU_CHECK_BUDGET seconds, 570 by default), after building the binaries if that is needed (a few
# minutes more with a Rust toolchain; none with prebuilt binaries).
#
# Settings (environment):
#   VGG=PATH            a prebuilt `vgg` binary (`cargo build --release --locked` gives
#                       target/release/vgg); without it the script builds one with cargo
#   VGG_TEST_BIN=PATH   a prebuilt integration-test binary: `cargo test --release --locked --test it
#                       --no-run` prints its path (target/release/deps/it-HASH); copy it together
#                       with VGG to run the checks where there is no Rust toolchain (run from a
#                       checkout of the same commit)
#   ORT_GPU_WHEEL=PATH  the pinned onnxruntime-gpu wheel, for a machine without internet (see
#                       scripts/fetch-onnxruntime.sh); ORT_DYLIB_PATH, when it names a library with
#                       libonnxruntime_providers_cuda.so beside it, is used as it is
#   PYTHON=python3      the Python whose site-packages hold torch and the nvidia-* packages
#   GPU_CHECK_BATCHES   batch sizes to try for VGG-16, largest first ("256 128 64 32 16")
#   GPU_CHECK_STEPS     timed steps per benchmark (10)
#   GPU_CHECK_BUDGET    seconds for all the checks after the build (570)
#   GPU_CHECK_WORK      where runs and logs go (default: a new directory under /tmp, kept)
set -uo pipefail

START_DIR="$(pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}" || exit 1

PY="${PYTHON:-python3}"
BATCHES="${GPU_CHECK_BATCHES:-256 128 64 32 16}"
STEPS="${GPU_CHECK_STEPS:-10}"
BUDGET="${GPU_CHECK_BUDGET:-570}"
WORK="${GPU_CHECK_WORK:-$(mktemp -d /tmp/vgg-gpu-check.XXXXXX)}"
LOGS="${WORK}/logs"
SUMMARY="${START_DIR}/gpu-check-summary.md"
mkdir -p "${LOGS}" || exit 1

say() { printf 'gpu-check: %s\n' "$*" >&2; }

# --- results ------------------------------------------------------------------------------------
R_NAME=()
R_STATUS=()
R_FIG=()
MEASURED=()
NOTES=()

# record NAME PASS|FAIL|NOT RUN FIGURES
record() {
	R_NAME+=("$1")
	R_STATUS+=("$2")
	R_FIG+=("$3")
	say "$2: $1${3:+ ($3)}"
}

# Shortens a message for a figure: ONNX Runtime's source location prefix goes.
clean() {
	sed -E 's#/onnxruntime_src/[^[]*\[ONNXRuntimeError\] : [0-9]+ : [A-Z_]+ : ##' | cut -c 1-300
}

# The last meaningful line of a log, shortened, for a FAIL's figures.
reason() {
	grep -v -E '^\s*$|^note: run with|RUST_BACKTRACE|^stack backtrace' "$1" 2>/dev/null |
		tail -n 1 | clean
}

# Shows the end of a failed step's log on stderr.
show_tail() {
	say "--- last lines of $1"
	tail -n 15 "$1" >&2
	say "---"
}

CHECK_START=""
remaining() {
	if [[ -z "${CHECK_START}" ]]; then
		echo 100000
	else
		echo $((BUDGET - (SECONDS - CHECK_START)))
	fi
}

# run_limited SECONDS LOG CMD...: runs CMD with stdout and stderr into LOG, within SECONDS and the
# remaining budget. Returns CMD's status, 124 on a timeout, 125 when no time was left to start.
LAST_LIMIT=0
run_limited() {
	local limit="$1" log="$2" left
	shift 2
	left="$(remaining)"
	if ((left - 5 < limit)); then
		limit=$((left - 5))
	fi
	LAST_LIMIT="${limit}"
	if ((limit < 15)); then
		printf 'not run: the time budget (GPU_CHECK_BUDGET=%s s) was spent\n' "${BUDGET}" >"${log}"
		return 125
	fi
	timeout -k 10 "${limit}" "$@" >"${log}" 2>&1
}

# status_of RC: sets ST to PASS, FAIL or NOT RUN, and WHY to a word on timeouts.
ST=""
WHY=""
status_of() {
	WHY=""
	case "$1" in
	0) ST=PASS ;;
	124 | 137)
		ST=FAIL
		WHY="timed out after ${LAST_LIMIT} s"
		;;
	125)
		ST="NOT RUN"
		WHY="time budget spent"
		;;
	*) ST=FAIL ;;
	esac
}

# json FILE EXPR: evaluates a Python expression over the JSON value `j` in FILE (the last value
# that starts a line, pretty-printed or not, so log lines around it do not matter); empty on any
# error.
json() {
	"${PY}" - "$1" "$2" 2>/dev/null <<'PY' || true
import json, math, sys
path, expr = sys.argv[1], sys.argv[2]
text = open(path, errors="replace").read()
decoder = json.JSONDecoder()
found, j, pos = False, None, 0
for line in text.splitlines(keepends=True):
    if line.startswith(("{", "[")):
        try:
            j = decoder.raw_decode(text, pos)[0]
            found = True
        except ValueError:
            pass
    pos += len(line)
if not found:
    sys.exit(1)
v = eval(expr, {"j": j, "math": math})
print(v if v is not None else "")
PY
}

# --- 1. the GPU ---------------------------------------------------------------------------------
GPU_NAME="unknown"
GPU_MEM=""
GPU_COUNT=0
DRIVER="unknown"
CUDA_DRIVER="unknown"
if command -v nvidia-smi >/dev/null 2>&1; then
	if timeout 60 nvidia-smi --query-gpu=name,driver_version,memory.total \
		--format=csv,noheader >"${LOGS}/nvidia-smi.log" 2>&1; then
		GPU_COUNT="$(grep -c . "${LOGS}/nvidia-smi.log")"
		IFS=',' read -r GPU_NAME DRIVER GPU_MEM <"${LOGS}/nvidia-smi.log"
		GPU_NAME="$(echo "${GPU_NAME}" | xargs)"
		DRIVER="$(echo "${DRIVER}" | xargs)"
		GPU_MEM="$(echo "${GPU_MEM}" | xargs)"
		CUDA_DRIVER="$(timeout 60 nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n 1)"
		record "GPU (nvidia-smi)" PASS "${GPU_COUNT} x ${GPU_NAME}, ${GPU_MEM}, driver ${DRIVER}, CUDA ${CUDA_DRIVER:-unknown}"
	else
		show_tail "${LOGS}/nvidia-smi.log"
		record "GPU (nvidia-smi)" FAIL "nvidia-smi failed: $(reason "${LOGS}/nvidia-smi.log")"
	fi
else
	record "GPU (nvidia-smi)" FAIL "nvidia-smi not found: no NVIDIA driver on this machine"
fi

# --- 2. Python, PyTorch and the CUDA libraries ---------------------------------------------------
TORCH="not found"
TORCH_CUDA=""
if command -v "${PY}" >/dev/null 2>&1; then
	if timeout 120 "${PY}" -c 'import torch
print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.is_available())' \
		>"${LOGS}/torch.log" 2>&1; then
		read -r tv tc tcudnn tavail <"${LOGS}/torch.log"
		TORCH="${tv} (CUDA ${tc}, cuDNN ${tcudnn}, sees a GPU: ${tavail})"
		TORCH_CUDA="${tc}"
	else
		TORCH="not importable: $(reason "${LOGS}/torch.log")"
	fi
else
	TORCH="no ${PY}"
fi

# The lib folders of the nvidia-* wheels (nvidia/cu13/lib for the CUDA 13 toolkit wheels,
# nvidia/cudnn/lib, nvidia/nccl/lib, ...) in every site-packages of PY, then torch/lib.
NV_DIRS=()
if command -v "${PY}" >/dev/null 2>&1; then
	mapfile -t NV_DIRS < <(timeout 60 "${PY}" - 2>"${LOGS}/cuda-libs-discovery.log" <<'PY'
import glob, importlib.util, os, sys
roots = list(sys.path)
try:
    import nvidia  # a namespace package spread over the site-packages folders
    roots = [os.path.dirname(p) for p in nvidia.__path__] + roots
except ImportError:
    pass
dirs = []
def add(d):
    d = os.path.realpath(d)
    if os.path.isdir(d) and d not in dirs:
        dirs.append(d)
for r in roots:
    for d in sorted(glob.glob(os.path.join(r or ".", "nvidia", "*", "lib"))):
        add(d)
spec = importlib.util.find_spec("torch")
if spec is not None and spec.submodule_search_locations:
    for p in spec.submodule_search_locations:
        add(os.path.join(p, "lib"))
print("\n".join(dirs))
PY
	)
fi
NV_LIB_COUNT=0
for d in "${NV_DIRS[@]}"; do
	[[ "${d}" == */nvidia/*/lib ]] && NV_LIB_COUNT=$((NV_LIB_COUNT + 1))
done
if ((${#NV_DIRS[@]} > 0)); then
	joined="$(
		IFS=:
		echo "${NV_DIRS[*]}"
	)"
	export LD_LIBRARY_PATH="${joined}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
fi

# Where a library can be found: the folders above, LD_LIBRARY_PATH, or the loader's cache.
find_lib() {
	local d search
	IFS=: read -r -a search <<<"${LD_LIBRARY_PATH:-}"
	for d in "${search[@]}"; do
		[[ -n "${d}" && -e "${d}/$1" ]] && {
			echo "${d}/$1"
			return 0
		}
	done
	if command -v ldconfig >/dev/null 2>&1; then
		ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n { print $NF; exit }' | grep . && return 0
	fi
	return 1
}

# soname and the pip package that installs it.
REQUIRED_LIBS=(
	"libcudart.so.13:nvidia-cuda-runtime 13.x"
	"libcublas.so.13:nvidia-cublas 13.x"
	"libcublasLt.so.13:nvidia-cublas 13.x"
	"libcurand.so.10:nvidia-curand 10.x (CUDA 13)"
	"libcufft.so.12:nvidia-cufft 12.x (CUDA 13)"
	"libcudnn.so.9:nvidia-cudnn-cu13"
	"libnccl.so.2:nvidia-nccl-cu13"
)
missing=()
for entry in "${REQUIRED_LIBS[@]}"; do
	lib="${entry%%:*}"
	find_lib "${lib}" >/dev/null || missing+=("${lib} [${entry#*:}]")
done
{
	echo "python: ${PY}"
	echo "folders:"
	printf '  %s\n' "${NV_DIRS[@]}"
	echo "missing: ${missing[*]:-none}"
} >"${LOGS}/cuda-libs.log"
if ((NV_LIB_COUNT == 0)); then
	record "CUDA libraries (pip nvidia-*)" FAIL \
		"no site-packages/nvidia/*/lib folder in the sys.path of ${PY}: install a CUDA 13 build of PyTorch (it brings the nvidia-* wheels) or the wheels named here, or set PYTHON to the Python that has them${missing[*]:+; missing: ${missing[*]}}"
elif ((${#missing[@]} > 0)); then
	record "CUDA libraries (pip nvidia-*)" FAIL "${NV_LIB_COUNT} nvidia lib folders on LD_LIBRARY_PATH, missing: ${missing[*]}"
else
	record "CUDA libraries (pip nvidia-*)" PASS "${NV_LIB_COUNT} nvidia lib folders on LD_LIBRARY_PATH; libcudart.so.13, libcublas(Lt).so.13, libcurand.so.10, libcufft.so.12, libcudnn.so.9, libnccl.so.2 found"
fi
if ! find_lib libnvrtc.so.13 >/dev/null; then
	NOTES+=("libnvrtc.so.13 [nvidia-cuda-nvrtc 13.x] was not found; ONNX Runtime's CUDA provider looks for it at run time")
fi
if ! find_lib libcuda.so.1 >/dev/null; then
	NOTES+=("libcuda.so.1 (the driver's CUDA library) is not in the loader's cache or on LD_LIBRARY_PATH")
fi
if [[ -n "${TORCH_CUDA}" && "${TORCH_CUDA}" != 13* ]]; then
	NOTES+=("this PyTorch is built for CUDA ${TORCH_CUDA}; the ONNX Runtime GPU build needs the CUDA 13 libraries")
fi

# --- 3. ONNX Runtime, GPU build -----------------------------------------------------------------
ORT_LIB=""
if [[ -n "${ORT_DYLIB_PATH:-}" && -f "$(dirname "${ORT_DYLIB_PATH}")/libonnxruntime_providers_cuda.so" ]]; then
	ORT_LIB="${ORT_DYLIB_PATH}"
	record "ONNX Runtime GPU build" PASS "ORT_DYLIB_PATH=${ORT_LIB} (given)"
elif timeout 600 bash scripts/fetch-onnxruntime.sh --gpu >"${LOGS}/fetch.out" 2>"${LOGS}/fetch.log"; then
	ORT_LIB="$(tail -n 1 "${LOGS}/fetch.out")"
	record "ONNX Runtime GPU build" PASS "${ORT_LIB#"${ROOT}"/} (onnxruntime-gpu 1.31.1, sha256 checked)"
else
	show_tail "${LOGS}/fetch.log"
	record "ONNX Runtime GPU build" FAIL "$(reason "${LOGS}/fetch.log")"
fi
if [[ -n "${ORT_LIB}" ]]; then
	export ORT_DYLIB_PATH="${ORT_LIB}"
	providers_lib="$(dirname "${ORT_LIB}")/libonnxruntime_providers_cuda.so"
	if command -v ldd >/dev/null 2>&1; then
		unresolved="$(ldd "${providers_lib}" 2>&1 | awk '/not found/ { print $1 }' | tr '\n' ' ')"
		if [[ -n "${unresolved}" ]]; then
			NOTES+=("ldd libonnxruntime_providers_cuda.so: not found: ${unresolved}")
		fi
	fi
fi

# --- 4. the binaries ----------------------------------------------------------------------------
HAVE_CARGO=0
command -v cargo >/dev/null 2>&1 && HAVE_CARGO=1
VGG_BIN=""
if [[ -n "${VGG:-}" ]]; then
	if [[ -x "${VGG}" ]]; then
		VGG_BIN="${VGG}"
		record "vgg binary" PASS "VGG=${VGG} (prebuilt)"
	else
		record "vgg binary" FAIL "VGG=${VGG} is not an executable file"
	fi
elif ((HAVE_CARGO)); then
	say "building target/release/vgg (cargo build --release --locked; log ${LOGS}/build.log)"
	if timeout 1800 cargo build --release --locked >"${LOGS}/build.log" 2>&1; then
		VGG_BIN="${ROOT}/target/release/vgg"
		record "vgg binary" PASS "cargo build --release --locked"
	else
		show_tail "${LOGS}/build.log"
		record "vgg binary" FAIL "cargo build --release failed: $(reason "${LOGS}/build.log")"
	fi
elif [[ -x target/release/vgg ]]; then
	VGG_BIN="${ROOT}/target/release/vgg"
	record "vgg binary" PASS "target/release/vgg (no cargo here, so not rebuilt)"
else
	record "vgg binary" FAIL "no cargo and no VGG=path/to/vgg"
fi

TEST_BIN=""
if [[ -n "${VGG_TEST_BIN:-}" ]]; then
	if [[ -x "${VGG_TEST_BIN}" ]]; then
		TEST_BIN="${VGG_TEST_BIN}"
		record "test binary" PASS "VGG_TEST_BIN=${VGG_TEST_BIN} (prebuilt)"
	else
		record "test binary" FAIL "VGG_TEST_BIN=${VGG_TEST_BIN} is not an executable file"
	fi
elif ((HAVE_CARGO)); then
	say "building the test binary (cargo test --release --locked --test it --no-run; log ${LOGS}/build-tests.log)"
	if timeout 1800 cargo test --release --locked --test it --no-run >"${LOGS}/build-tests.log" 2>&1; then
		TEST_BIN="$(sed -n 's/.*Executable .*(\(.*\)).*/\1/p' "${LOGS}/build-tests.log" | tail -n 1)"
		if [[ -n "${TEST_BIN}" && -x "${TEST_BIN}" ]]; then
			record "test binary" PASS "cargo test --release --locked --test it --no-run"
		else
			record "test binary" FAIL "cargo printed no test executable (see ${LOGS}/build-tests.log)"
			TEST_BIN=""
		fi
	else
		show_tail "${LOGS}/build-tests.log"
		record "test binary" FAIL "cargo test --no-run failed: $(reason "${LOGS}/build-tests.log")"
	fi
else
	record "test binary" FAIL "no cargo and no VGG_TEST_BIN=path/to/it-HASH"
fi

# The time budget counts from here.
CHECK_START="${SECONDS}"

# --- 5. vgg runtime -----------------------------------------------------------------------------
ORT_VERSION_SEEN=""
if [[ -n "${VGG_BIN}" ]]; then
	run_limited 60 "${LOGS}/runtime.log" "${VGG_BIN}" runtime --json
	status_of $?
	st="${ST}"
	providers="$(json "${LOGS}/runtime.log" '", ".join(j["providers"])')"
	ORT_VERSION_SEEN="$(json "${LOGS}/runtime.log" 'j["version"]')"
	if [[ "${st}" == PASS && "${providers}" != *CUDAExecutionProvider* ]]; then
		st=FAIL
		WHY="no CUDAExecutionProvider in: ${providers}"
	fi
	[[ "${st}" == PASS ]] || show_tail "${LOGS}/runtime.log"
	record "vgg runtime lists CUDA" "${st}" "${WHY:-ONNX Runtime ${ORT_VERSION_SEEN:-?}: ${providers:-$(reason "${LOGS}/runtime.log")}}"
else
	record "vgg runtime lists CUDA" "NOT RUN" "no vgg binary"
fi

# --- 6. the CUDA tests --------------------------------------------------------------------------
if [[ -n "${TEST_BIN}" ]]; then
	TESTS=()
	mapfile -t TESTS < <("${TEST_BIN}" --list gpu:: 2>/dev/null | sed -n 's/^\(gpu::[A-Za-z0-9_]*\): test$/\1/p')
	if ((${#TESTS[@]} == 0)); then
		record "CUDA tests" FAIL "the test binary lists no gpu:: test"
	fi
	for t in "${TESTS[@]}"; do
		limit=180
		[[ "${t}" == *vgg16* ]] && limit=300
		log="${LOGS}/test-${t#gpu::}.log"
		run_limited "${limit}" "${log}" env VGG_TEST_CUDA=1 RUST_BACKTRACE=0 \
			"${TEST_BIN}" --exact "${t}" --nocapture --test-threads 1
		status_of $?
		st="${ST}"
		if [[ "${st}" == PASS ]] && grep -q 'skipped:' "${log}"; then
			st=FAIL
			WHY="skipped: $(grep -m 1 -o 'skipped:.*' "${log}")"
		fi
		if [[ "${st}" == PASS ]] && ! grep -q '1 passed' "${log}"; then
			st=FAIL
			WHY="the test did not run"
		fi
		while IFS= read -r line; do
			MEASURED+=("${t#gpu::}: ${line#*measured: }")
		done < <(grep -o 'measured: .*' "${log}")
		if [[ "${st}" == FAIL ]]; then
			if grep -q 'panicked at' "${log}"; then
				say "--- ${t} failed (${log}):"
				grep -A 3 'panicked at' "${log}" >&2
			else
				show_tail "${log}"
			fi
			[[ -n "${WHY}" ]] || WHY="$(grep -m 1 -A 1 'panicked at' "${log}" | tail -n 1 | clean)"
		fi
		record "test ${t}" "${st}" "${WHY}"
	done
else
	record "CUDA tests" "NOT RUN" "no test binary"
fi

# --- 7. vgg train on the demo set ---------------------------------------------------------------
DATA_OK=0
if [[ -n "${VGG_BIN}" ]]; then
	run_limited 120 "${LOGS}/generate.log" "${VGG_BIN}" generate synthetic-shapes &&
		run_limited 180 "${LOGS}/prepare.log" "${VGG_BIN}" prepare synthetic-shapes
	status_of $?
	st="${ST}"
	if [[ "${st}" == PASS ]]; then
		DATA_OK=1
	else
		show_tail "${LOGS}/prepare.log"
		record "demo dataset (generate + prepare synthetic-shapes)" "${st}" "${WHY:-$(reason "${LOGS}/prepare.log")}"
	fi
fi
# train_check NAME OUT ARGS...
train_check() {
	local name="$1" out="$2" log
	shift 2
	log="${LOGS}/$(basename "${out}").log"
	if ((DATA_OK == 0)); then
		record "${name}" "NOT RUN" "no demo dataset"
		return
	fi
	rm -rf "${out}"
	run_limited 180 "${log}" "${VGG_BIN}" train pipelines/demo.toml --epochs 1 --out "${out}" --json "$@"
	status_of $?
	local st="${ST}"
	local fig
	fig="$(json "${log}" '"loss %.3f, train top-1 error %.1f%%, val top-1 error %.1f%%, %.0f images/s, %.1f s" % (j["last_epoch"]["train_loss"], 100 * j["last_epoch"]["train_top1_error"], 100 * (j["last_epoch"]["val_top1_error"] or float("nan")), j["last_epoch"]["images_per_sec"], j["last_epoch"]["seconds"])')"
	local loss
	loss="$(json "${log}" 'math.isfinite(j["last_epoch"]["train_loss"])')"
	if [[ "${st}" == PASS && "${loss}" != True ]]; then
		st=FAIL
		WHY="no finite training loss in the output"
	fi
	[[ "${st}" == PASS ]] || show_tail "${log}"
	record "${name}" "${st}" "${WHY:-${fig:-$(reason "${log}")}}"
}
if [[ -n "${VGG_BIN}" ]]; then
	train_check "vgg train demo, 1 epoch, --device cuda" "${WORK}/train-cuda" --device cuda
	train_check "vgg train demo, 1 epoch, --replicas 2 --device cuda:0" "${WORK}/train-cuda-2-replicas" \
		--device cuda:0 --replicas 2
else
	record "vgg train demo" "NOT RUN" "no vgg binary"
fi

# --- 8. VGG-16 throughput, vgg and PyTorch ------------------------------------------------------
OOM='out of memory|OutOfMemory|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation|Failed to allocate memory|BFCArena|bad_alloc'
BENCH_BATCH=""
BENCH_STEP=""
if [[ -n "${VGG_BIN}" && "${DATA_OK}" == 1 ]]; then
	tried=()
	for b in ${BATCHES}; do
		p="${WORK}/vgg16-b${b}.toml"
		# The paper's S = 256 recipe with D instead of A, on the synthetic set (its images are
		# rescaled to S = 256 and cropped to 224 like any other).
		sed -e 's/^name = .*/name = "gpu-check-vgg16"/' \
			-e 's/^dataset = .*/dataset = "synthetic-shapes"/' \
			-e 's/^config = "A"$/config = "D"/' \
			-e "s/^batch_size = .*/batch_size = ${b}/" pipelines/vgg-s256.toml >"${p}"
		if ! grep -q '^config = "D"$' "${p}" || ! grep -q "^batch_size = ${b}$" "${p}" ||
			! grep -q '^dataset = "synthetic-shapes"$' "${p}"; then
			record "vgg bench train VGG-16 224, cuda" FAIL "pipelines/vgg-s256.toml no longer has the lines this script edits (name, dataset, config, batch_size)"
			break
		fi
		log="${LOGS}/bench-vgg16-b${b}.log"
		run_limited 240 "${log}" "${VGG_BIN}" bench train "${p}" --device cuda --steps "${STEPS}" --json
		rc=$?
		if ((rc == 0)); then
			BENCH_BATCH="${b}"
			BENCH_STEP="$(json "${log}" '"%.1f" % j["step_images_per_sec"]')"
			fig="$(json "${log}" '"batch %d: step alone %.1f images/s, loader + step %.1f, loader alone %.0f (limited by the %s)" % (j["batch"], j["step_images_per_sec"], j["loop_images_per_sec"], j["loader_images_per_sec"], j["limited_by"])')"
			record "vgg bench train VGG-16 224, cuda" PASS "${fig}${tried[*]:+; did not fit: ${tried[*]}}"
			break
		fi
		if grep -q -E "${OOM}" "${log}"; then
			say "batch ${b} does not fit in GPU memory; trying a smaller one"
			tried+=("${b}")
			continue
		fi
		status_of "${rc}"
		st="${ST}"
		show_tail "${log}"
		record "vgg bench train VGG-16 224, cuda" "${st}" "batch ${b}: ${WHY:-$(reason "${log}")}"
		break
	done
	if [[ -z "${BENCH_BATCH}" && ${#tried[@]} -gt 0 && "${R_NAME[-1]}" != "vgg bench train VGG-16 224, cuda" ]]; then
		record "vgg bench train VGG-16 224, cuda" FAIL "no batch fits: ${tried[*]}"
	fi
else
	record "vgg bench train VGG-16 224, cuda" "NOT RUN" "no vgg binary or no demo dataset"
fi

if [[ -n "${BENCH_BATCH}" ]]; then
	for tf32 in on off; do
		# The second run brackets vgg's figure; it is left out rather than cut short.
		if [[ "${tf32}" == off ]] && (($(remaining) < 150)); then
			NOTES+=("the PyTorch run with TF32 off was left out: less than 150 s of the time budget remained")
			continue
		fi
		log="${LOGS}/torch-vgg16-b${BENCH_BATCH}-tf32-${tf32}.log"
		run_limited 180 "${log}" "${PY}" benches/peers/torch_train_step.py --device cuda \
			--config D --width 1 --input 224 --classes 1000 --batch "${BENCH_BATCH}" \
			--steps "${STEPS}" --tf32 "${tf32}" --json
		status_of $?
		st="${ST}"
		torch_ips="$(json "${log}" '"%.1f" % j["images_per_sec"]')"
		if [[ "${st}" == PASS && -n "${torch_ips}" ]]; then
			ratio="$("${PY}" -c "print('%.2f' % (${BENCH_STEP:-0} / ${torch_ips}))" 2>/dev/null)"
			record "PyTorch peer VGG-16 224, batch ${BENCH_BATCH}, TF32 ${tf32}" PASS \
				"${torch_ips} images/s; vgg step / PyTorch step = ${ratio:-?}"
		else
			[[ "${st}" == PASS ]] && st=FAIL
			show_tail "${log}"
			record "PyTorch peer VGG-16 224, batch ${BENCH_BATCH}, TF32 ${tf32}" "${st}" "${WHY:-$(reason "${log}")}"
		fi
	done
fi

# --- 9. the summary -----------------------------------------------------------------------------
cell() { printf '%s' "$*" | tr '\n' ' ' | sed 's/|/\\|/g'; }
failed=0
for st in "${R_STATUS[@]}"; do
	[[ "${st}" == PASS ]] || failed=$((failed + 1))
done
commit="$(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git -C "${ROOT}" diff --quiet HEAD 2>/dev/null; then
	commit="${commit} (with local changes)"
fi
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)"
{
	echo "### GPU check: ${GPU_NAME}"
	echo
	echo "\`bash scripts/gpu-check.sh\` at commit ${commit}, $(date -u '+%Y-%m-%d %H:%M UTC'): $((${#R_STATUS[@]} - failed)) of ${#R_STATUS[@]} checks passed."
	echo
	echo "| | |"
	echo "|---|---|"
	echo "| GPU | $(cell "${GPU_COUNT} x ${GPU_NAME}${GPU_MEM:+, ${GPU_MEM}}") |"
	echo "| driver, CUDA (driver API) | $(cell "${DRIVER}, ${CUDA_DRIVER:-unknown}") |"
	echo "| CPU | $(cell "${cpu:-unknown}, $(nproc 2>/dev/null || echo '?') cores") |"
	echo "| ONNX Runtime | $(cell "${ORT_VERSION_SEEN:-?}, ${ORT_LIB:-not installed}") |"
	echo "| PyTorch | $(cell "${TORCH}") |"
	echo
	echo "| check | result | figures |"
	echo "|---|---|---|"
	for i in "${!R_NAME[@]}"; do
		echo "| $(cell "${R_NAME[i]}") | **${R_STATUS[i]}** | $(cell "${R_FIG[i]}") |"
	done
	if ((${#MEASURED[@]} > 0)); then
		echo
		echo "Measured by the CUDA tests (tests/it/gpu.rs):"
		echo
		for m in "${MEASURED[@]}"; do
			echo "- $(cell "${m}")"
		done
	fi
	if ((${#NOTES[@]} > 0)); then
		echo
		echo "Notes:"
		echo
		for n in "${NOTES[@]}"; do
			echo "- $(cell "${n}")"
		done
	fi
	echo
	echo "vgg's sessions use the CUDA provider's default TF32 setting (the tests that compare with the CPU turn TF32 off); the PyTorch peer ran with cudnn.benchmark on, TF32 as stated. Logs: ${LOGS}."
} >"${WORK}/summary.md"

cp "${WORK}/summary.md" "${SUMMARY}" 2>/dev/null || say "could not write ${SUMMARY}"
echo
cat "${WORK}/summary.md"
echo
say "summary written to ${SUMMARY}; logs and runs in ${WORK}"
if ((failed > 0)); then
	say "${failed} check(s) did not pass"
	exit 1
fi
exit 0
