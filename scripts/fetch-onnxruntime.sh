#!/usr/bin/env bash
# Fetch the official ONNX Runtime library that `vgg` loads at run time (see src/net/runtime.rs and
# docs/onnxruntime.md).
#
#   scripts/fetch-onnxruntime.sh         the CPU build   -> .cache/onnxruntime/1.31.1/
#   scripts/fetch-onnxruntime.sh --gpu   the CUDA build  -> .cache/onnxruntime-gpu/1.31.1/
#
# The library comes from the PyPI wheel (the only source reachable from the build machines): the
# wheel is downloaded with pip, its sha256 checked against the pin below, and only the libraries
# `vgg` loads are extracted into `.cache/<dir>/<version>/`, next to a `libonnxruntime.so`
# symlink. A stamp file records the verified checksum, so a second run exits at once. Progress
# goes to stderr; stdout gets one line, the library's path, so
# `ORT_DYLIB_PATH="$(scripts/fetch-onnxruntime.sh)"` works.
#
# On a machine without internet, give the wheel instead of downloading it: for the GPU build,
# `ORT_GPU_WHEEL=/path/to/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl`, or put
# the file into `.cache/onnxruntime-gpu/` (or its `wheels/`); for the CPU build, put it into
# `.cache/onnxruntime/wheels/`. Its checksum is checked all the same.
set -euo pipefail

usage() {
	sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

MODE="cpu"
for arg in "$@"; do
	case "${arg}" in
	--gpu) MODE="gpu" ;;
	--cpu) MODE="cpu" ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		printf 'fetch-onnxruntime: error: unknown argument %s (--gpu for the CUDA build, nothing for the CPU build)\n' "${arg}" >&2
		exit 2
		;;
	esac
done

# --- pins ---------------------------------------------------------------------------------------
ORT_VERSION="1.31.1"
ORT_PIP_PYTHON_VERSION="3.11"
ORT_PIP_PLATFORM="manylinux_2_28_x86_64"
# Where the libraries sit inside both wheels.
ORT_WHEEL_DIR="onnxruntime/capi"

# CPU build: PyPI `onnxruntime==1.31.1`.
CPU_PIP_PACKAGE="onnxruntime"
CPU_WHEEL="onnxruntime-${ORT_VERSION}-cp311-cp311-${ORT_PIP_PLATFORM}.whl"
CPU_WHEEL_SHA256="5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"
CPU_MEMBERS=("libonnxruntime.so.${ORT_VERSION}")

# CUDA build: PyPI `onnxruntime-gpu==1.31.1` (CUDA 13, cuDNN 9; ~256 MB). ONNX Runtime loads its
# provider libraries from the directory of libonnxruntime.so, so the three sit together. The CUDA,
# cuBLAS and cuDNN libraries they need are not in the wheel (see docs/onnxruntime.md).
GPU_PIP_PACKAGE="onnxruntime-gpu"
GPU_WHEEL="onnxruntime_gpu-${ORT_VERSION}-cp311-cp311-${ORT_PIP_PLATFORM}.whl"
GPU_WHEEL_SHA256="e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6"
GPU_MEMBERS=(
	"libonnxruntime.so.${ORT_VERSION}"
	"libonnxruntime_providers_shared.so"
	"libonnxruntime_providers_cuda.so"
)

# --- paths --------------------------------------------------------------------------------------
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${MODE}" == "gpu" ]]; then
	PIP_PACKAGE="${GPU_PIP_PACKAGE}"
	WHEEL="${GPU_WHEEL}"
	WHEEL_SHA256="${GPU_WHEEL_SHA256}"
	MEMBERS=("${GPU_MEMBERS[@]}")
	CACHE="${ROOT}/.cache/onnxruntime-gpu"
	GIVEN_WHEEL="${ORT_GPU_WHEEL:-}"
	BUILD="CUDA"
	# The stamp names the members too, so a cache from a run that extracted fewer is redone.
	STAMP_TEXT="wheel=${WHEEL} sha256=${WHEEL_SHA256} members=${MEMBERS[*]}"
else
	PIP_PACKAGE="${CPU_PIP_PACKAGE}"
	WHEEL="${CPU_WHEEL}"
	WHEEL_SHA256="${CPU_WHEEL_SHA256}"
	MEMBERS=("${CPU_MEMBERS[@]}")
	CACHE="${ROOT}/.cache/onnxruntime"
	GIVEN_WHEEL=""
	BUILD="CPU"
	STAMP_TEXT="wheel=${WHEEL} sha256=${WHEEL_SHA256}"
fi
WHEELS="${CACHE}/wheels"
DEST="${CACHE}/${ORT_VERSION}"
LIB_NAME="libonnxruntime.so.${ORT_VERSION}"
LINK_NAME="libonnxruntime.so"
STAMP_NAME=".verified"

log() { printf 'fetch-onnxruntime: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Fast path: already extracted from a verified wheel.
complete() {
	local m
	for m in "${MEMBERS[@]}"; do
		[[ -f "${DEST}/${m}" ]] || return 1
	done
	[[ -f "${DEST}/${STAMP_NAME}" && "$(cat "${DEST}/${STAMP_NAME}")" == "${STAMP_TEXT}" ]]
}
if complete; then
	if [[ ! -L "${DEST}/${LINK_NAME}" ]]; then
		ln -sfn "${LIB_NAME}" "${DEST}/${LINK_NAME}"
	fi
	printf '%s\n' "${DEST}/${LINK_NAME}"
	exit 0
fi

if [[ "$(uname -s)" != "Linux" || "$(uname -m)" != "x86_64" ]]; then
	die "the pinned wheel is for Linux x86_64, this is $(uname -s) $(uname -m); set ORT_DYLIB_PATH to a libonnxruntime.so instead (see docs/onnxruntime.md)"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is required (pip downloads the wheel, zipfile extracts it)"

sha256_of() {
	python3 - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())
PY
}

mkdir -p "${WHEELS}"
WORK="$(mktemp -d "${CACHE}/.tmp.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT

# 1. The wheel: the one given in ORT_GPU_WHEEL (never replaced by a download: a wrong file is an
#    error), else a verified copy in the cache, else a download.
WHEEL_PATH=""
if [[ -n "${GIVEN_WHEEL}" ]]; then
	[[ -f "${GIVEN_WHEEL}" ]] || die "ORT_GPU_WHEEL=${GIVEN_WHEEL}: no such file"
	got="$(sha256_of "${GIVEN_WHEEL}")"
	[[ "${got}" == "${WHEEL_SHA256}" ]] ||
		die "ORT_GPU_WHEEL=${GIVEN_WHEEL} has sha256 ${got}, the pinned ${WHEEL} has ${WHEEL_SHA256}"
	WHEEL_PATH="${GIVEN_WHEEL}"
	log "using ${WHEEL_PATH} (ORT_GPU_WHEEL, sha256 verified)"
else
	for candidate in "${WHEELS}/${WHEEL}" "${CACHE}/${WHEEL}"; do
		[[ -f "${candidate}" ]] || continue
		got="$(sha256_of "${candidate}")"
		if [[ "${got}" == "${WHEEL_SHA256}" ]]; then
			WHEEL_PATH="${candidate}"
			log "using ${WHEEL_PATH} (sha256 verified)"
			break
		fi
		log "ignoring ${candidate}: sha256 ${got}, expected ${WHEEL_SHA256}"
		[[ "${candidate}" == "${WHEELS}/${WHEEL}" ]] && rm -f "${candidate}"
	done
fi
if [[ -z "${WHEEL_PATH}" ]]; then
	log "downloading ${WHEEL} with pip"
	mkdir -p "${WORK}/download"
	hint="is PyPI reachable?"
	if [[ "${MODE}" == "gpu" ]]; then
		hint="${hint} Without internet, copy ${WHEEL} (sha256 ${WHEEL_SHA256}) to this machine and set ORT_GPU_WHEEL=/path/to/it, or put it into ${CACHE}/"
	fi
	python3 -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version "${ORT_PIP_PYTHON_VERSION}" --platform "${ORT_PIP_PLATFORM}" \
		"${PIP_PACKAGE}==${ORT_VERSION}" -d "${WORK}/download" >&2 ||
		die "pip could not download ${PIP_PACKAGE}==${ORT_VERSION} (${hint})"
	[[ -f "${WORK}/download/${WHEEL}" ]] ||
		die "pip did not produce ${WHEEL}; got: $(find "${WORK}/download" -mindepth 1 -maxdepth 1 -printf '%f ')"
	got="$(sha256_of "${WORK}/download/${WHEEL}")"
	if [[ "${got}" != "${WHEEL_SHA256}" ]]; then
		rm -f "${WORK}/download/${WHEEL}"
		die "sha256 mismatch for ${WHEEL}: expected ${WHEEL_SHA256}, got ${got}; the file was deleted"
	fi
	mv -f "${WORK}/download/${WHEEL}" "${WHEELS}/${WHEEL}"
	WHEEL_PATH="${WHEELS}/${WHEEL}"
fi

# 2. Extract the members into a fresh directory, stamp it, then move it into place whole, so an
#    interrupted run never leaves a half-written library where the loader looks.
STAGE="${WORK}/${ORT_VERSION}"
mkdir -p "${STAGE}"
python3 - "${WHEEL_PATH}" "${ORT_WHEEL_DIR}" "${STAGE}" "${MEMBERS[@]}" <<'PY' || die "could not extract ${MEMBERS[*]} from ${WHEEL_PATH}"
import os, shutil, sys, zipfile
wheel, folder, out, members = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    libs = sorted(n for n in names if n.startswith(folder + "/") and ".so" in n)
    for m in members:
        member = f"{folder}/{m}"
        if member not in names:
            sys.exit(f"{member} not in the wheel (its libraries: {libs})")
        target = os.path.join(out, m)
        with z.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(target, 0o755)
PY
ln -s "${LIB_NAME}" "${STAGE}/${LINK_NAME}"
printf '%s\n' "${STAMP_TEXT}" >"${STAGE}/${STAMP_NAME}"

rm -rf "${DEST}"
mv "${STAGE}" "${DEST}"
log "installed ONNX Runtime ${ORT_VERSION} (${BUILD}) into ${DEST}"
printf '%s\n' "${DEST}/${LINK_NAME}"
