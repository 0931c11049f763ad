#!/usr/bin/env bash
# Fetch the official ONNX Runtime CPU library that `vgg` loads at run time (see src/net/runtime.rs and
# docs/onnxruntime.md).
#
# The library comes from the PyPI wheel (the only source reachable from the build machines): the
# wheel is downloaded with pip, its sha256 checked against the pin below, and only
# `libonnxruntime.so.<version>` is extracted into `.cache/onnxruntime/<version>/`, next to a
# `libonnxruntime.so` symlink. A stamp file records the verified checksum, so a second run exits
# at once. Progress goes to stderr; stdout gets one line, the library's path, so
# `ORT_DYLIB_PATH="$(scripts/fetch-onnxruntime.sh)"` works.
set -euo pipefail

# --- pinned CPU build ---------------------------------------------------------------------------
ORT_VERSION="1.31.1"
ORT_PIP_PACKAGE="onnxruntime"
ORT_PIP_PYTHON_VERSION="3.11"
ORT_PIP_PLATFORM="manylinux_2_28_x86_64"
ORT_WHEEL="onnxruntime-${ORT_VERSION}-cp311-cp311-${ORT_PIP_PLATFORM}.whl"
ORT_WHEEL_SHA256="5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"
ORT_WHEEL_MEMBER="onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}"

# --- CUDA build: NOT wired in yet ---------------------------------------------------------------
# The `onnxruntime-gpu` wheel (CUDA 13, cuDNN 9, ~255 MB) carries libonnxruntime.so plus
# libonnxruntime_providers_cuda.so and libonnxruntime_providers_shared.so, which must sit in the
# same directory. A future `--gpu` flag would pin these and extract all three members; until then
# see docs/onnxruntime.md for the manual steps. The file name and checksum are left empty on
# purpose: pin them from a verified download, never from memory.
# ORT_GPU_PIP_PACKAGE="onnxruntime-gpu"
# ORT_GPU_WHEEL=""
# ORT_GPU_WHEEL_SHA256=""
# ORT_GPU_WHEEL_MEMBERS="libonnxruntime.so.${ORT_VERSION} libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so"

# --- paths --------------------------------------------------------------------------------------
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ROOT}/.cache/onnxruntime"
WHEELS="${CACHE}/wheels"
DEST="${CACHE}/${ORT_VERSION}"
LIB_NAME="libonnxruntime.so.${ORT_VERSION}"
LINK_NAME="libonnxruntime.so"
STAMP_NAME=".verified"
STAMP_TEXT="wheel=${ORT_WHEEL} sha256=${ORT_WHEEL_SHA256}"

log() { printf 'fetch-onnxruntime: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Fast path: already extracted from a verified wheel.
if [[ -f "${DEST}/${LIB_NAME}" && -f "${DEST}/${STAMP_NAME}" ]] &&
	[[ "$(cat "${DEST}/${STAMP_NAME}")" == "${STAMP_TEXT}" ]]; then
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

# 1. The wheel: reuse a verified copy, else download it.
WHEEL_PATH="${WHEELS}/${ORT_WHEEL}"
if [[ -f "${WHEEL_PATH}" && "$(sha256_of "${WHEEL_PATH}")" == "${ORT_WHEEL_SHA256}" ]]; then
	log "using ${WHEEL_PATH}"
else
	rm -f "${WHEEL_PATH}"
	log "downloading ${ORT_WHEEL} with pip"
	mkdir -p "${WORK}/download"
	python3 -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version "${ORT_PIP_PYTHON_VERSION}" --platform "${ORT_PIP_PLATFORM}" \
		"${ORT_PIP_PACKAGE}==${ORT_VERSION}" -d "${WORK}/download" >&2 ||
		die "pip could not download ${ORT_PIP_PACKAGE}==${ORT_VERSION} (is PyPI reachable?)"
	[[ -f "${WORK}/download/${ORT_WHEEL}" ]] ||
		die "pip did not produce ${ORT_WHEEL}; got: $(ls "${WORK}/download" | tr '\n' ' ')"
	got="$(sha256_of "${WORK}/download/${ORT_WHEEL}")"
	if [[ "${got}" != "${ORT_WHEEL_SHA256}" ]]; then
		rm -f "${WORK}/download/${ORT_WHEEL}"
		die "sha256 mismatch for ${ORT_WHEEL}: expected ${ORT_WHEEL_SHA256}, got ${got}; the file was deleted"
	fi
	mv -f "${WORK}/download/${ORT_WHEEL}" "${WHEEL_PATH}"
fi

# 2. Extract the one member into a fresh directory, stamp it, then move it into place whole, so an
#    interrupted run never leaves a half-written library where the loader looks.
STAGE="${WORK}/${ORT_VERSION}"
mkdir -p "${STAGE}"
python3 - "${WHEEL_PATH}" "${ORT_WHEEL_MEMBER}" "${STAGE}/${LIB_NAME}" <<'PY' || die "could not extract ${ORT_WHEEL_MEMBER} from ${WHEEL_PATH}"
import os, shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if os.path.basename(n).startswith("libonnxruntime.so.")]
    if member not in names:
        sys.exit(f"{member} not in wheel (libonnxruntime members: {names})")
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
os.chmod(out, 0o755)
PY
ln -s "${LIB_NAME}" "${STAGE}/${LINK_NAME}"
printf '%s\n' "${STAMP_TEXT}" >"${STAGE}/${STAMP_NAME}"

rm -rf "${DEST}"
mv "${STAGE}" "${DEST}"
log "installed ONNX Runtime ${ORT_VERSION} (CPU)"
printf '%s\n' "${DEST}/${LINK_NAME}"
