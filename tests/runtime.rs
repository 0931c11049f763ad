//! `vgg::net::runtime` against the real ONNX Runtime library that `scripts/fetch-onnxruntime.sh`
//! installs (run `make setup` or the script first).
//!
//! The process environment is never modified here (tests share it across threads): the
//! `ORT_DYLIB_PATH` logic is exercised through `runtime::locate_with`, which takes the value as a
//! parameter.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::Tensor;
use ort::AsPointer;
use vgg::net::runtime::{self, RuntimeError, MIN_ORT_API, ORT_VERSION};

fn repo_cache_lib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(runtime::cache_relative_path())
}

#[test]
fn min_api_matches_ort_features() {
    // ort 2.0.0-rc.15 with no `api-NN` feature asks for API 17 (ONNX Runtime 1.17);
    // docs/onnxruntime.md states the supported range from this.
    assert_eq!(MIN_ORT_API, 17);
    assert_eq!(MIN_ORT_API, ort::sys::ORT_API_VERSION);
}

#[test]
fn info_reports_pinned_version_and_cpu_provider() {
    let info = runtime::info().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.version, ORT_VERSION);
    assert!(
        info.providers.iter().any(|p| p == "CPUExecutionProvider"),
        "providers: {:?}",
        info.providers
    );
    assert!(info.library.is_absolute(), "{}", info.library.display());
    assert!(info.library.is_file());
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["version"], ORT_VERSION);
}

#[test]
fn init_is_idempotent_across_threads() {
    let handles: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| runtime::init().map(|env| env.ptr() as usize)))
        .collect();
    let ptrs: Vec<usize> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let again = runtime::init().unwrap().ptr() as usize;
    assert!(ptrs.iter().all(|&p| p == again), "{ptrs:?} vs {again}");
    assert_eq!(runtime::info().unwrap().library, runtime::locate().unwrap());
}

#[test]
fn locate_finds_the_setup_cache_from_the_crate_root() {
    let roots = runtime::search_roots();
    assert!(roots.contains(&PathBuf::from(env!("CARGO_MANIFEST_DIR"))));
    let found = runtime::locate_with(None, &roots).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        found.ends_with(runtime::cache_relative_path()),
        "{}",
        found.display()
    );
    // An empty ORT_DYLIB_PATH counts as unset.
    let empty = runtime::locate_with(Some(OsStr::new("")), &roots).unwrap();
    assert_eq!(empty, found);
}

#[test]
fn locate_honours_an_existing_dylib_path() {
    let lib = repo_cache_lib();
    let found = runtime::locate_with(Some(lib.as_os_str()), &[]).unwrap();
    assert_eq!(found, lib);
    // A relative value is made absolute (against the current directory).
    let rel = runtime::locate_with(Some(OsStr::new("Cargo.toml")), &[]).unwrap();
    assert!(
        rel.is_absolute() && rel.ends_with("Cargo.toml"),
        "{}",
        rel.display()
    );
}

#[test]
fn locate_reports_a_dylib_path_that_points_nowhere() {
    let err = runtime::locate_with(
        Some(OsStr::new("/nonexistent/libonnxruntime.so")),
        &[PathBuf::from(env!("CARGO_MANIFEST_DIR"))],
    )
    .unwrap_err();
    assert!(
        matches!(err, RuntimeError::DylibPathMissing { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("ORT_DYLIB_PATH"), "{msg}");
    assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
}

#[test]
fn locate_reports_a_missing_cache_with_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let err = runtime::locate_with(None, &[empty.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
    assert!(msg.contains("make setup"), "{msg}");
    assert!(msg.contains("ORT_DYLIB_PATH"), "{msg}");
}

#[test]
fn probe_accepts_the_real_library() {
    assert_eq!(
        runtime::probe_library(&repo_cache_lib()).unwrap(),
        ORT_VERSION
    );
}

#[test]
fn probe_rejects_files_that_are_not_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();

    let text = dir.path().join("libonnxruntime.so");
    std::fs::write(&text, "not a library\n").unwrap();
    let err = runtime::probe_library(&text).unwrap_err();
    assert!(matches!(err, RuntimeError::Load { .. }), "{err:?}");
    assert!(err.to_string().contains("ELF"), "{err}");

    let err = runtime::probe_library(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");

    // An ELF file with no ELF body behind the header: dlopen refuses it, as an error.
    let truncated = dir.path().join("truncated.so");
    std::fs::write(&truncated, b"\x7fELF\x02\x01\x01\0").unwrap();
    let err = runtime::probe_library(&truncated).unwrap_err();
    assert!(matches!(err, RuntimeError::Load { .. }), "{err:?}");

    // A real shared library that is not ONNX Runtime.
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib64/libm.so.6",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.is_file());
    if let Some(libm) = libm {
        let err = runtime::probe_library(libm).unwrap_err();
        assert!(err.to_string().contains("OrtGetApiBase"), "{err}");
    }
}

/// A bad library file is an `Err`, not a panic or an abort, both from `runtime::init` (with
/// `ORT_DYLIB_PATH` pointing at a text file) and from `ort::init_from` itself (what `runtime`
/// relies on should its own checks let a bad file through). Loading is once per process, so this
/// runs in a fresh child process: the test binary itself, running the ignored test below, with
/// `ORT_DYLIB_PATH` set on the child only.
#[test]
fn bad_library_file_is_an_error_in_a_fresh_process() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("libonnxruntime.so");
    std::fs::write(&text, "not a library\n").unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_bad_library_file",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env(runtime::DYLIB_ENV, &text)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

const CHILD_ENV: &str = "VGG_RUNTIME_TEST_CHILD";

#[test]
#[ignore = "run in a child process by bad_library_file_is_an_error_in_a_fresh_process"]
fn child_bad_library_file() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return; // run by hand without the parent: nothing to check
    }
    let text = PathBuf::from(std::env::var_os(runtime::DYLIB_ENV).unwrap());

    // ort on its own, before anything is loaded in this process.
    let direct = std::panic::catch_unwind(|| ort::init_from(&text).map(|_| ()));
    let err = direct.expect("ort::init_from panicked").unwrap_err();
    assert!(err.to_string().contains("failed to load"), "{err}");

    // Through runtime: the same clear error on every call.
    let first = runtime::init().unwrap_err();
    assert!(matches!(first, RuntimeError::Load { .. }), "{first:?}");
    let msg = first.to_string();
    assert!(
        msg.contains("ELF") && msg.contains(&text.display().to_string()),
        "{msg}"
    );
    assert_eq!(runtime::init().unwrap_err().to_string(), msg);
    assert_eq!(runtime::info().unwrap_err().to_string(), msg);
}

/// Y = Relu(X) on float [1, 4], end to end through a real session.
#[test]
fn relu_model_runs_end_to_end() {
    let env = runtime::init().unwrap_or_else(|e| panic!("{e}"));
    let model = relu_model();
    let mut session = Session::builder(&env)
        .unwrap()
        .commit_from_memory(&model)
        .unwrap_or_else(|e| panic!("model rejected: {e}"));
    assert_eq!(session.inputs().len(), 1);
    assert_eq!(session.outputs().len(), 1);

    let x = Tensor::from_array(([1usize, 4], vec![-2.0_f32, -0.5, 0.0, 3.25])).unwrap();
    let outputs = session.run(ort::inputs!["X" => x]).unwrap();
    let (shape, y) = outputs["Y"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(&**shape, &[1, 4]);
    assert_eq!(y, &[0.0, 0.0, 0.0, 3.25]);
}

// --- a minimal ONNX ModelProto, hand-encoded -----------------------------------------------------
//
// Field numbers from onnx.proto (ONNX IR version 8):
//   ModelProto: ir_version=1, producer_name=2, graph=7, opset_import=8
//   OperatorSetIdProto: domain=1, version=2
//   GraphProto: node=1, name=2, input=11, output=12
//   NodeProto: input=1, output=2, name=3, op_type=4
//   ValueInfoProto: name=1, type=2
//   TypeProto: tensor_type=1; TypeProto.Tensor: elem_type=1, shape=2
//   TensorShapeProto: dim=1; TensorShapeProto.Dimension: dim_value=1
//   TensorProto.DataType FLOAT = 1

/// A protobuf message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire_type));
    }

    fn int(mut self, field: u32, v: u64) -> Self {
        self.key(field, 0);
        self.varint(v);
        self
    }

    fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn str(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }

    fn msg(self, field: u32, m: Msg) -> Self {
        self.bytes(field, &m.0)
    }
}

fn float_tensor_value(name: &str, dims: &[u64]) -> Msg {
    let shape = dims.iter().fold(Msg::default(), |shape, &d| {
        shape.msg(1, Msg::default().int(1, d))
    });
    let tensor_type = Msg::default().int(1, 1).msg(2, shape);
    Msg::default()
        .str(1, name)
        .msg(2, Msg::default().msg(1, tensor_type))
}

fn relu_model() -> Vec<u8> {
    let node = Msg::default()
        .str(1, "X")
        .str(2, "Y")
        .str(3, "relu")
        .str(4, "Relu");
    let graph = Msg::default()
        .msg(1, node)
        .str(2, "relu_graph")
        .msg(11, float_tensor_value("X", &[1, 4]))
        .msg(12, float_tensor_value("Y", &[1, 4]));
    let opset = Msg::default().str(1, "").int(2, 17);
    Msg::default()
        .int(1, 8)
        .str(2, "vgg-tests")
        .msg(7, graph)
        .msg(8, opset)
        .0
}

#[test]
fn protobuf_encoder_matches_known_bytes() {
    // Spot checks against the protobuf encoding rules.
    assert_eq!(Msg::default().int(1, 150).0, [0x08, 0x96, 0x01]);
    assert_eq!(Msg::default().str(2, "ab").0, [0x12, 0x02, b'a', b'b']);
    assert_eq!(Msg::default().int(11, 1).0, [0x58, 0x01]);
}
