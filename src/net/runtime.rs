//! ONNX Runtime, found and loaded at run time.
//!
//! `vgg` does not link ONNX Runtime: the `ort` crate is built with `load-dynamic`, and the library
//! itself (`libonnxruntime.so`, the official CPU build pinned in `scripts/fetch-onnxruntime.sh`)
//! is fetched by the set-up into `.cache/onnxruntime/<version>/`. Every command that needs the
//! runtime (training, evaluation, reporting) goes through this module, so the library is located
//! and loaded in one place, once per process, and a missing or broken library is one clear
//! sentence ([`RuntimeError`]) instead of a panic deep inside `ort`.
//!
//! So: call [`init`] before any other `ort` API (otherwise `ort` loads a library on its own, from
//! `ORT_DYLIB_PATH` or the system search path, and panics if there is none), and build sessions
//! with the environment it returns (`ort` allows one environment per process; never call
//! `ort::init()` elsewhere).
//!
//! Where the library is looked for, in order (see [`locate`] and `docs/onnxruntime.md`):
//! 1. `ORT_DYLIB_PATH`, if set and non-empty (an error if it names nothing);
//! 2. `.cache/onnxruntime/<ORT_VERSION>/libonnxruntime.so` under the current directory and its
//!    ancestors, the executable's directory and its ancestors, and the crate's source directory.
//!
//! Before `ort` sees a file, [`init`] checks it is a regular file with an ELF header, `dlopen`s it
//! with `libloading` (`RTLD_NOW`, so missing dependencies show up here), finds `OrtGetApiBase`
//! and reads the version it reports, refusing anything older than [`MIN_ORT_API`]. Only then is
//! `ort::init_from` called, under `catch_unwind`, so even an unexpected panic inside `ort` comes
//! back as an `Err`. (`ort` rc.15 itself returns an error rather than panicking when `dlopen`
//! fails; the checks here give a better message and cover the cases where it would panic, e.g. a
//! null `OrtGetApiBase`.)

use std::ffi::{c_char, c_int, CStr, OsStr};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ort::environment::Environment;
use serde::Serialize;

/// The ONNX Runtime version the set-up (`scripts/fetch-onnxruntime.sh`) installs.
pub const ORT_VERSION: &str = "1.31.1";

/// The lowest ONNX Runtime C API version the crate's `ort` features need; API version `N` is
/// ONNX Runtime `1.N`. `ort` 2.0.0-rc.15 asks for API 17 unless an `api-NN` feature raises it, and
/// `Cargo.toml` enables none, so this is 17 (ONNX Runtime 1.17 or newer).
pub const MIN_ORT_API: u32 = ort::MINOR_VERSION;

/// The environment variable that overrides where the library is looked for (the same one `ort`
/// reads on its own).
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The library's file name in the set-up's cache (a symlink to `libonnxruntime.so.<version>`).
const LIB_NAME: &str = "libonnxruntime.so";

/// Why ONNX Runtime is not usable. Every message is one sentence that says what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found (looked in {searched}); run `make setup` (or scripts/fetch-onnxruntime.sh), or set ORT_DYLIB_PATH to a libonnxruntime.so")]
    NotFound { searched: String },
    #[error("ORT_DYLIB_PATH is set to {path}, which does not exist; point it at a libonnxruntime.so, or unset it to use the copy `make setup` installs")]
    DylibPathMissing { path: PathBuf },
    #[error("ONNX Runtime failed to load {path}: {reason}; run `make setup` for the pinned {version} build, or point ORT_DYLIB_PATH at a working libonnxruntime.so", version = ORT_VERSION)]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime at {path} is version {version}, but this build needs 1.{min_api} or newer; run `make setup` for the pinned {pinned} build, or point ORT_DYLIB_PATH at a newer libonnxruntime.so", pinned = ORT_VERSION)]
    Unsupported {
        path: PathBuf,
        version: String,
        min_api: u32,
    },
    #[error("ONNX Runtime loaded from {path}, but creating its environment failed: {source}")]
    Environment {
        path: PathBuf,
        #[source]
        source: Arc<ort::Error>,
    },
    #[error("ONNX Runtime call {call} failed: {source}")]
    Api {
        call: &'static str,
        #[source]
        source: Arc<ort::Error>,
    },
}

/// What was loaded, as reported by the library itself.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeInfo {
    /// The file that was loaded.
    pub library: PathBuf,
    /// The version the library reports (`OrtGetApiBase()->GetVersionString()`), e.g. `1.31.1`.
    pub version: String,
    /// The execution providers the library was built with, as `GetAvailableProviders` lists them
    /// (e.g. `CPUExecutionProvider`); available does not mean usable (CUDA still needs its libraries).
    pub providers: Vec<String>,
}

/// The loaded runtime, kept for the life of the process (`ort` allows one environment per process).
struct Loaded {
    environment: Environment,
    info: RuntimeInfo,
}

static RUNTIME: OnceLock<Result<Loaded, RuntimeError>> = OnceLock::new();

/// The set-up's copy of the library, relative to the repository root.
pub fn cache_relative_path() -> PathBuf {
    Path::new(".cache")
        .join("onnxruntime")
        .join(ORT_VERSION)
        .join(LIB_NAME)
}

/// Where the library is: `ORT_DYLIB_PATH` if set (an error if it points nowhere), else the
/// set-up's cache `.cache/onnxruntime/<ORT_VERSION>/libonnxruntime.so` searched relative to the
/// current directory and its ancestors, the executable's directory and its ancestors (so
/// `target/release/vgg` finds the repository root), and the crate's source directory.
pub fn locate() -> Result<PathBuf, RuntimeError> {
    let env = std::env::var_os(DYLIB_ENV);
    locate_with(env.as_deref(), &search_roots())
}

/// [`locate`] with the value of `ORT_DYLIB_PATH` and the directories to search passed in, so the
/// logic can be tested without touching the process environment.
#[doc(hidden)]
pub fn locate_with(dylib_path: Option<&OsStr>, roots: &[PathBuf]) -> Result<PathBuf, RuntimeError> {
    if let Some(value) = dylib_path.filter(|v| !v.is_empty()) {
        let path = absolute(Path::new(value));
        return if path.exists() {
            Ok(path)
        } else {
            Err(RuntimeError::DylibPathMissing { path })
        };
    }
    let relative = cache_relative_path();
    if let Some(found) = roots
        .iter()
        .map(|root| root.join(&relative))
        .find(|candidate| candidate.is_file())
    {
        return Ok(found);
    }
    let dirs: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Err(RuntimeError::NotFound {
        searched: format!("{} under {}", relative.display(), dirs.join(", ")),
    })
}

/// The directories [`locate`] searches for the set-up's cache, in order, without repeats.
#[doc(hidden)]
pub fn search_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    let mut push = |dir: &Path| {
        if !roots.iter().any(|r| r == dir) {
            roots.push(dir.to_path_buf());
        }
    };
    if let Ok(cwd) = std::env::current_dir() {
        cwd.ancestors().for_each(&mut push);
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        exe_dir.ancestors().for_each(&mut push);
    }
    push(Path::new(env!("CARGO_MANIFEST_DIR")));
    roots
}

/// Loads the library once per process and returns the `ort` environment to build sessions with
/// (`ort::session::Session::builder(&env)`). Thread-safe and idempotent: the first call does the
/// work, later calls return the same environment (a cheap `Arc` clone) or the same error.
pub fn init() -> Result<Environment, RuntimeError> {
    loaded().map(|l| l.environment.clone())
}

/// Loads the library if need be (see [`init`]) and reports what was loaded.
pub fn info() -> Result<RuntimeInfo, RuntimeError> {
    loaded().map(|l| l.info.clone())
}

fn loaded() -> Result<&'static Loaded, RuntimeError> {
    RUNTIME
        .get_or_init(|| locate().and_then(|path| load(&path)))
        .as_ref()
        .map_err(Clone::clone)
}

fn load(path: &Path) -> Result<Loaded, RuntimeError> {
    let version = probe_library(path)?;
    let environment = init_ort(path)?;
    let providers = available_providers()?;
    Ok(Loaded {
        environment,
        info: RuntimeInfo {
            library: path.to_path_buf(),
            version,
            providers,
        },
    })
}

/// Checks that `path` is an ONNX Runtime library this build can use, without handing it to `ort`:
/// a regular file with an ELF header, that `dlopen` accepts, that exports `OrtGetApiBase` and
/// reports a version of at least `1.<MIN_ORT_API>`. Returns that version. The library stays
/// loaded on success (the process is about to use it).
#[doc(hidden)]
pub fn probe_library(path: &Path) -> Result<String, RuntimeError> {
    let load_err = |reason: String| RuntimeError::Load {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| load_err(e.to_string()))?;
    if !meta.is_file() {
        return Err(load_err("it is not a regular file".to_string()));
    }
    check_header(path).map_err(load_err)?;
    let Some(version) = dl::version_of(path).map_err(load_err)? else {
        // No `dlopen` here: `ort::init_from` still refuses a library older than MIN_ORT_API.
        return Ok("unknown".to_string());
    };
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(minor) if version.starts_with("1.") && minor >= MIN_ORT_API => Ok(version),
        _ => Err(RuntimeError::Unsupported {
            path: path.to_path_buf(),
            version,
            min_api: MIN_ORT_API,
        }),
    }
}

/// The first bytes of a shared library on this platform.
#[cfg(target_os = "linux")]
fn check_header(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut magic = Vec::with_capacity(4);
    std::fs::File::open(path)
        .and_then(|f| f.take(4).read_to_end(&mut magic))
        .map_err(|e| format!("cannot read it ({e})"))?;
    if magic == b"\x7fELF" {
        Ok(())
    } else {
        Err("it is not a shared library (no ELF header)".to_string())
    }
}

#[cfg(not(target_os = "linux"))]
fn check_header(_path: &Path) -> Result<(), String> {
    Ok(())
}

/// Hands the (probed) library to `ort` and builds the process's environment; a panic inside
/// `ort` becomes an error.
fn init_ort(path: &Path) -> Result<Environment, RuntimeError> {
    let attempt = panic::catch_unwind(AssertUnwindSafe(|| {
        let builder = ort::init_from(path).map_err(|e| RuntimeError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        builder
            .with_name("vgg")
            .with_telemetry(false)
            .build()
            .map_err(|e| RuntimeError::Environment {
                path: path.to_path_buf(),
                source: Arc::new(e),
            })
    }));
    attempt.unwrap_or_else(|payload| {
        Err(RuntimeError::Load {
            path: path.to_path_buf(),
            reason: format!("ort panicked: {}", panic_message(payload.as_ref())),
        })
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// `GetAvailableProviders`, which `ort` only uses internally. Call only after [`init_ort`]
/// succeeded (`ort::api()` would otherwise try to load a library on its own and panic).
fn available_providers() -> Result<Vec<String>, RuntimeError> {
    let api = ort::api();
    let mut list: *mut *mut c_char = std::ptr::null_mut();
    let mut len: c_int = 0;
    // SAFETY: both out-pointers are valid; the status is owned by `result_from_status`.
    unsafe { ort::Error::result_from_status((api.GetAvailableProviders)(&mut list, &mut len)) }
        .map_err(|e| RuntimeError::Api {
            call: "GetAvailableProviders",
            source: Arc::new(e),
        })?;
    if list.is_null() {
        return Ok(Vec::new());
    }
    let count = usize::try_from(len).unwrap_or(0);
    let names = (0..count)
        .map(|i| {
            // SAFETY: ONNX Runtime returned `len` valid, NUL-terminated strings at `list`.
            unsafe { CStr::from_ptr(*list.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // SAFETY: `list`/`len` are exactly what `GetAvailableProviders` returned; released once.
    // Releasing cannot fail in practice; ignoring an error here only leaks a few bytes.
    let _ = unsafe { ort::Error::result_from_status((api.ReleaseAvailableProviders)(list, len)) };
    Ok(names)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The `dlopen` probe, through `libloading` (the crate `ort` loads the library with; `ort` keeps
/// its handle private, so the probe opens its own).
#[cfg(unix)]
mod dl {
    use std::ffi::CStr;
    use std::path::Path;

    use libloading::os::unix::{Library, Symbol, RTLD_NOW};

    type GetApiBase = unsafe extern "system" fn() -> *const ort::sys::OrtApiBase;

    /// Opens the library and returns the version it reports. Once `OrtGetApiBase` is found the
    /// handle is kept open for good (`ort` opens the same file next, and the process keeps it
    /// loaded); a library without it is closed again.
    pub(super) fn version_of(path: &Path) -> Result<Option<String>, String> {
        // SAFETY: loading runs the library's initialisers; this is the library the process is
        // about to use anyway (the same file goes to `ort` next), checked above to be an ELF file.
        let library = unsafe { Library::open(Some(path), RTLD_NOW) }.map_err(|e| open_error(&e))?;
        // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
        let symbol: Symbol<GetApiBase> = match unsafe { library.get(b"OrtGetApiBase\0") } {
            Ok(symbol) => symbol,
            // Dropping `library` closes the handle, which nothing else uses.
            Err(_) => {
                return Err(
                    "it does not export OrtGetApiBase, so it is not ONNX Runtime".to_string(),
                )
            }
        };
        // Keep the library loaded for the life of the process: `symbol` and the strings it
        // returns point into it.
        let _handle = library.into_raw();
        // SAFETY: the returned struct and version string are static data of the library, which
        // stays loaded.
        unsafe {
            let base = symbol();
            if base.is_null() {
                return Err("OrtGetApiBase returned null".to_string());
            }
            let version = ((*base).GetVersionString)();
            if version.is_null() {
                return Err("GetVersionString returned null".to_string());
            }
            Ok(Some(CStr::from_ptr(version).to_string_lossy().into_owned()))
        }
    }

    /// The sentence for a failed `dlopen`: the system's `dlerror` message, as `libloading` keeps
    /// it in the error's source (its own `Display` is only "dlopen failed").
    pub(super) fn open_error(error: &libloading::Error) -> String {
        match error {
            libloading::Error::DlOpen { source } => source.to_string(),
            libloading::Error::InteriorZeroElements => "its path contains a NUL byte".to_string(),
            _ => "dlopen failed".to_string(),
        }
    }
}

/// Without `dlopen`, leave the checks to `ort::init_from` (which refuses libraries older than
/// [`MIN_ORT_API`]); the version is then not known.
#[cfg(not(unix))]
mod dl {
    pub(super) fn version_of(_path: &std::path::Path) -> Result<Option<String>, String> {
        Ok(None)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_failed_dlopen_reports_the_systems_reason() {
        let dir = tempfile::tempdir().unwrap();
        // An ELF header with nothing behind it: past `check_header`, refused by `dlopen`.
        let truncated = dir.path().join("truncated.so");
        std::fs::write(&truncated, b"\x7fELF\x02\x01\x01\0").unwrap();
        let reason = dl::version_of(&truncated).unwrap_err();
        // libloading's own text for this error is only "dlopen failed"; the reason is dlerror's.
        assert_ne!(reason, "dlopen failed");
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(reason.contains("truncated.so"), "{reason}");
        let err = probe_library(&truncated).unwrap_err();
        assert!(
            matches!(&err, RuntimeError::Load { reason: r, .. } if *r == reason),
            "{err:?}"
        );
    }

    #[test]
    fn dlopen_errors_without_a_system_reason_keep_their_sentences() {
        assert_eq!(
            dl::open_error(&libloading::Error::DlOpenUnknown),
            "dlopen failed"
        );
        assert_eq!(
            dl::open_error(&libloading::Error::InteriorZeroElements),
            "its path contains a NUL byte"
        );
    }
}
