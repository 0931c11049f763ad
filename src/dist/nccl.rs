//! NCCL for CUDA runs: the all-reduce of gradients that live on the GPUs.
//!
//! **Status: this path has not run on a GPU.** It builds everywhere (nothing CUDA is needed at
//! build time) and its error paths are tested on machines without a GPU; the calls into NCCL and
//! the CUDA driver follow their documented use but have not been exercised against real hardware.
//!
//! The gradients are ONNX Runtime's buffers, so this module works on raw device pointers: the
//! trainer asks [`Nccl::stream_ptr`] for the stream created here, hands it to ONNX Runtime's CUDA
//! provider as its compute stream (so the session's kernels and NCCL's reductions are ordered on
//! one stream), and calls [`Nccl::all_reduce_sum_f32_in_place`] on the gradient pointers,
//! between [`group_start`] and [`group_end`] to fuse many tensors into one launch.
//!
//! One process per GPU: rank 0 makes an id with [`unique_id`], hands it out with
//! [`super::Group::broadcast`], and every rank calls [`Nccl::init`] (which blocks until all ranks
//! have called it, so call it only after [`super::Group::connect`] succeeded). Several GPUs in one
//! process: [`Nccl::for_devices`].
//!
//! Libraries, all loaded at run time:
//! - the CUDA driver (`libcuda.so.1`) through `cudarc`'s driver bindings, for the device's
//!   primary context (the one ONNX Runtime uses too) and the stream;
//! - NCCL (`libnccl.so.2`) through this module's own table of the few functions it calls, with
//!   `cudarc`'s NCCL type definitions: `cudarc`'s NCCL loader does not look for `libnccl.so.2`,
//!   the only name pip's `nvidia-nccl-cu12`/`-cu13` wheels and the distributions' `libnccl2`
//!   packages install (it tries `libnccl.so` and `libnccl.so.<CUDA major>`), and it panics when
//!   the library is absent.
//!
//! Both libraries are probed with `libloading` before anything calls into them, so a missing one
//! is one [`DistError::Library`] sentence saying what to install; every call also runs under
//! `catch_unwind`, as `cudarc` panics on a missing library or symbol.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};

use super::DistError;

/// The size of NCCL's unique id, what rank 0 hands out to the others.
pub const UNIQUE_ID_BYTES: usize = 128;

/// The names NCCL is looked for under, before `cudarc`'s own candidates.
const NCCL_NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

const NCCL_HINT: &str = "install NCCL (pip install nvidia-nccl-cu13 or nvidia-nccl-cu12, or the \
    distribution's libnccl2 package) and make it visible through LD_LIBRARY_PATH";

const CUDA_HINT: &str = "it comes with the NVIDIA driver, so this machine has no NVIDIA driver \
    installed (in a container, pass the GPUs through: --gpus all with the NVIDIA container \
    toolkit); CUDA runs need one";

type GetUniqueId = unsafe extern "C" fn(*mut ncclUniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> c_int;
type CommInitAll = unsafe extern "C" fn(*mut ncclComm_t, c_int, *const c_int) -> c_int;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclRedOp_t,
    ncclComm_t,
    cudaStream_t,
) -> c_int;
type NoArgs = unsafe extern "C" fn() -> c_int;
type CommAbort = unsafe extern "C" fn(ncclComm_t) -> c_int;
type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
type GetLastError = unsafe extern "C" fn(ncclComm_t) -> *const c_char;
type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;

/// The NCCL functions this module calls, resolved once per process.
struct NcclLib {
    name: String,
    version: c_int,
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    comm_init_all: CommInitAll,
    all_reduce: AllReduce,
    group_start: NoArgs,
    group_end: NoArgs,
    comm_abort: CommAbort,
    get_error_string: GetErrorString,
    get_last_error: Option<GetLastError>,
    /// Keeps the functions above valid.
    _library: libloading::Library,
}

/// A library that is not there: (file name, hint).
type Missing = (String, String);

fn missing(missing: &Missing) -> DistError {
    DistError::Library {
        name: missing.0.clone(),
        hint: missing.1.clone(),
    }
}

/// What NCCL is and where it was loaded from, for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NcclInfo {
    /// The name it was loaded under, e.g. `libnccl.so.2`.
    pub library: String,
    /// e.g. `2.27.3`.
    pub version: String,
}

/// Loads NCCL (once) and says which one; the error says what to install.
pub fn library_info() -> Result<NcclInfo, DistError> {
    let lib = nccl()?;
    let v = lib.version;
    Ok(NcclInfo {
        library: lib.name.clone(),
        version: if v >= 20900 {
            format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
        } else {
            format!("{}.{}.{}", v / 1000, v / 100 % 10, v % 100)
        },
    })
}

fn nccl() -> Result<&'static NcclLib, DistError> {
    static NCCL: OnceLock<Result<NcclLib, Missing>> = OnceLock::new();
    NCCL.get_or_init(load_nccl).as_ref().map_err(missing)
}

/// The sentence for a failed `dlopen` (libloading's own is only "dlopen failed").
fn open_error(error: &libloading::Error) -> String {
    match error {
        libloading::Error::DlOpen { source } => source.to_string(),
        other => other.to_string(),
    }
}

fn candidates(names: &[&str], cudarc_name: &str) -> Vec<String> {
    let mut out: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    for name in cudarc::get_lib_name_candidates(cudarc_name) {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Opens the first of `names` that loads; otherwise `(names[0], hint)`, with the reason of any
/// candidate that exists but failed to load.
fn open_first(names: &[String], hint: &str) -> Result<(String, libloading::Library), Missing> {
    let mut broken = Vec::new();
    for name in names {
        // SAFETY: loading runs the library's initialisers; these are NVIDIA's libraries, which
        // the process is about to use.
        match unsafe { libloading::Library::new(name) } {
            Ok(library) => return Ok((name.clone(), library)),
            Err(e) => {
                let reason = open_error(&e);
                if !reason.contains("No such file") && !reason.contains("cannot open shared object")
                {
                    broken.push(reason);
                }
            }
        }
    }
    let looked = match names.len() {
        0..=3 => names.join(", "),
        n => format!("{}, {} and {} other names", names[0], names[1], n - 2),
    };
    let mut hint = format!("{hint} (looked for {looked})");
    if !broken.is_empty() {
        hint.push_str(&format!(
            "; found but could not load: {}",
            broken.join("; ")
        ));
    }
    Err((names[0].clone(), hint))
}

fn load_nccl() -> Result<NcclLib, Missing> {
    let (name, library) = open_first(&candidates(&NCCL_NAMES, "nccl"), NCCL_HINT)?;
    macro_rules! symbol {
        ($name:literal) => {
            // SAFETY: the type is the function's C signature in every NCCL 2.x release.
            match unsafe { library.get(concat!($name, "\0").as_bytes()) } {
                Ok(symbol) => *symbol,
                Err(_) => {
                    return Err((
                        name.clone(),
                        format!(
                            "{name} loaded but does not export {}, so it is not NCCL 2.x; {NCCL_HINT}",
                            $name
                        ),
                    ))
                }
            }
        };
    }
    let get_version: GetVersion = symbol!("ncclGetVersion");
    let get_unique_id = symbol!("ncclGetUniqueId");
    let comm_init_rank = symbol!("ncclCommInitRank");
    let comm_init_all = symbol!("ncclCommInitAll");
    let all_reduce = symbol!("ncclAllReduce");
    let group_start = symbol!("ncclGroupStart");
    let group_end = symbol!("ncclGroupEnd");
    let comm_abort = symbol!("ncclCommAbort");
    let get_error_string = symbol!("ncclGetErrorString");
    // Since NCCL 2.13.
    // SAFETY: as above.
    let get_last_error = unsafe { library.get::<GetLastError>(b"ncclGetLastError\0") }
        .ok()
        .map(|s| *s);
    let mut version = 0;
    // SAFETY: writes one int.
    unsafe { get_version(&mut version) };
    Ok(NcclLib {
        name,
        version,
        get_unique_id,
        comm_init_rank,
        comm_init_all,
        all_reduce,
        group_start,
        group_end,
        comm_abort,
        get_error_string,
        get_last_error,
        _library: library,
    })
}

/// Checks the CUDA driver library loads, under the names `cudarc` loads it by, so that
/// `cudarc`'s loader (which panics) finds it too.
fn cuda_driver() -> Result<(), DistError> {
    static CUDA: OnceLock<Result<libloading::Library, Missing>> = OnceLock::new();
    CUDA.get_or_init(|| {
        let mut names = candidates(&["libcuda.so.1"], "cuda");
        for name in cudarc::get_lib_name_candidates("nvcuda") {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        open_first(&names, CUDA_HINT).map(|(_, library)| library)
    })
    .as_ref()
    .map(|_| ())
    .map_err(missing)
}

/// Runs `f`, turning a panic (from the bindings) into [`DistError::Panic`].
fn guarded<T>(
    call: &'static str,
    f: impl FnOnce() -> Result<T, DistError>,
) -> Result<T, DistError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "no message".to_string());
        Err(DistError::Panic { call, message })
    })
}

/// An NCCL return code as a result, with NCCL's own words for it.
fn check(
    lib: &NcclLib,
    call: &'static str,
    code: c_int,
    comm: ncclComm_t,
) -> Result<(), DistError> {
    if code == 0 {
        return Ok(());
    }
    let text = |p: *const c_char| {
        // SAFETY: NCCL returns null or a NUL-terminated static string.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    // SAFETY: takes any code.
    let mut message = text(unsafe { (lib.get_error_string)(code) })
        .unwrap_or_else(|| "unknown error".to_string());
    message.push_str(&format!(" (ncclResult_t {code})"));
    if let Some(last) = lib.get_last_error {
        // SAFETY: null asks for the last error of any communicator.
        if let Some(detail) = text(unsafe { last(comm) }).filter(|s| !s.is_empty()) {
            message.push_str(&format!(": {detail}"));
        }
    }
    Err(DistError::Nccl { call, message })
}

fn cuda(call: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> DistError {
    move |e| DistError::Cuda {
        call,
        message: e.to_string(),
    }
}

fn to_int(what: &str, value: usize) -> Result<c_int, DistError> {
    c_int::try_from(value).map_err(|_| DistError::InvalidArgument {
        what: format!("{what} {value} is too large"),
    })
}

/// A new NCCL unique id (on rank 0), to hand to every rank's [`Nccl::init`].
pub fn unique_id() -> Result<[u8; UNIQUE_ID_BYTES], DistError> {
    guarded("ncclGetUniqueId", || {
        let lib = nccl()?;
        let mut id = ncclUniqueId {
            internal: [0; UNIQUE_ID_BYTES],
        };
        // SAFETY: writes the id.
        check(
            lib,
            "ncclGetUniqueId",
            unsafe { (lib.get_unique_id)(&mut id) },
            ptr::null_mut(),
        )?;
        Ok(id.internal.map(|c| c as u8))
    })
}

/// Starts a group of NCCL calls, launched together at [`group_end`] (fuses the all-reduces of
/// many tensors; needed around the calls on several communicators of one process).
pub fn group_start() -> Result<(), DistError> {
    guarded("ncclGroupStart", || {
        let lib = nccl()?;
        // SAFETY: no arguments.
        check(
            lib,
            "ncclGroupStart",
            unsafe { (lib.group_start)() },
            ptr::null_mut(),
        )
    })
}

/// Ends the group [`group_start`] opened, launching its calls.
pub fn group_end() -> Result<(), DistError> {
    guarded("ncclGroupEnd", || {
        let lib = nccl()?;
        // SAFETY: no arguments.
        check(
            lib,
            "ncclGroupEnd",
            unsafe { (lib.group_end)() },
            ptr::null_mut(),
        )
    })
}

/// One NCCL communicator on one GPU, with the stream its reductions run on.
pub struct Nccl {
    comm: ncclComm_t,
    stream: Arc<CudaStream>,
    device: usize,
    rank: usize,
    world: usize,
}

// SAFETY: an NCCL communicator may be used from any thread, one at a time (`Nccl` is not `Sync`);
// the stream is `Send` already.
unsafe impl Send for Nccl {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("device", &self.device)
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish_non_exhaustive()
    }
}

/// The primary context of `device` (ONNX Runtime's too), bound to this thread, and a new
/// non-blocking stream on it.
fn stream_on(device: usize) -> Result<Arc<CudaStream>, DistError> {
    let context = CudaContext::new(device).map_err(cuda("cuDevicePrimaryCtxRetain"))?;
    context.new_stream().map_err(cuda("cuStreamCreate"))
}

impl Nccl {
    /// Joins rank `rank` of `world` (one process per GPU) on GPU `device`, with the id rank 0
    /// made by [`unique_id`]. Blocks until every rank has called it.
    pub fn init(
        device: usize,
        rank: usize,
        world: usize,
        id: &[u8; UNIQUE_ID_BYTES],
    ) -> Result<Nccl, DistError> {
        if rank >= world {
            return Err(DistError::InvalidArgument {
                what: format!("rank {rank} of a world of {world}"),
            });
        }
        let (c_rank, c_world) = (to_int("rank", rank)?, to_int("world size", world)?);
        guarded("Nccl::init", || {
            cuda_driver()?;
            let lib = nccl()?;
            let stream = stream_on(device)?;
            stream
                .context()
                .bind_to_thread()
                .map_err(cuda("cuCtxSetCurrent"))?;
            let id = ncclUniqueId {
                internal: id.map(|b| b as c_char),
            };
            let mut comm: ncclComm_t = ptr::null_mut();
            // SAFETY: writes one communicator; NCCL uses the device of the current context.
            let code = unsafe { (lib.comm_init_rank)(&mut comm, c_world, id, c_rank) };
            check(lib, "ncclCommInitRank", code, comm)?;
            Ok(Nccl {
                comm,
                stream,
                device,
                rank,
                world,
            })
        })
    }

    /// One communicator per GPU of `devices`, all in this process (ranks in the order given).
    /// Calls on them must be issued between [`group_start`] and [`group_end`].
    pub fn for_devices(devices: &[usize]) -> Result<Vec<Nccl>, DistError> {
        if devices.is_empty() {
            return Err(DistError::InvalidArgument {
                what: "no devices".to_string(),
            });
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].contains(d) {
                return Err(DistError::InvalidArgument {
                    what: format!("device {d} is listed twice"),
                });
            }
        }
        let ordinals = devices
            .iter()
            .map(|&d| to_int("device", d))
            .collect::<Result<Vec<c_int>, _>>()?;
        let count = to_int("device count", devices.len())?;
        guarded("Nccl::for_devices", || {
            cuda_driver()?;
            let lib = nccl()?;
            let streams = devices
                .iter()
                .map(|&d| stream_on(d))
                .collect::<Result<Vec<_>, _>>()?;
            let mut comms: Vec<ncclComm_t> = vec![ptr::null_mut(); devices.len()];
            // SAFETY: writes one communicator per listed device.
            let code = unsafe { (lib.comm_init_all)(comms.as_mut_ptr(), count, ordinals.as_ptr()) };
            check(lib, "ncclCommInitAll", code, ptr::null_mut())?;
            Ok(comms
                .into_iter()
                .zip(streams)
                .zip(devices)
                .enumerate()
                .map(|(rank, ((comm, stream), &device))| Nccl {
                    comm,
                    stream,
                    device,
                    rank,
                    world: devices.len(),
                })
                .collect())
        })
    }

    /// This communicator's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The GPU it runs on.
    pub fn device(&self) -> usize {
        self.device
    }

    /// The raw `CUstream` the reductions run on, for ONNX Runtime's CUDA provider
    /// (`user_compute_stream`), so the session and NCCL order their work on one stream. Valid
    /// while this `Nccl` lives; do not destroy it.
    pub fn stream_ptr(&self) -> *mut c_void {
        self.stream.cu_stream() as *mut c_void
    }

    /// Sums `count` f32 at `ptr` over all ranks, in place, queued on [`Nccl::stream_ptr`]'s
    /// stream (returns before it has run: see [`Nccl::synchronize`]).
    ///
    /// # Safety
    /// `ptr` must point to `count` f32 in memory of this communicator's GPU, valid until the
    /// stream has run the reduction, and every rank must make the same call.
    pub unsafe fn all_reduce_sum_f32_in_place(
        &self,
        ptr: *mut f32,
        count: usize,
    ) -> Result<(), DistError> {
        guarded("ncclAllReduce", || {
            let lib = nccl()?;
            self.stream
                .context()
                .bind_to_thread()
                .map_err(cuda("cuCtxSetCurrent"))?;
            // SAFETY: the caller vouches for the buffer; the communicator and stream are ours.
            let code = unsafe {
                (lib.all_reduce)(
                    ptr as *const c_void,
                    ptr as *mut c_void,
                    count,
                    ncclDataType_t::ncclFloat32,
                    ncclRedOp_t::ncclSum,
                    self.comm,
                    self.stream.cu_stream() as cudaStream_t,
                )
            };
            check(lib, "ncclAllReduce", code, self.comm)
        })
    }

    /// Waits until the stream has run everything queued on it.
    pub fn synchronize(&self) -> Result<(), DistError> {
        guarded("cuStreamSynchronize", || {
            self.stream
                .synchronize()
                .map_err(cuda("cuStreamSynchronize"))
        })
    }
}

impl Drop for Nccl {
    /// Aborts the communicator rather than destroying it: `ncclCommDestroy` may wait for peers,
    /// and a peer that died would make the drop hang.
    fn drop(&mut self) {
        if let Ok(lib) = nccl() {
            let comm = self.comm;
            // SAFETY: the communicator is ours and not used again.
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe { (lib.comm_abort)(comm) }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether NCCL loads here (then the tests below have nothing to check).
    fn nccl_present() -> bool {
        nccl().is_ok()
    }

    #[test]
    fn unique_id_without_nccl_is_a_clear_error() {
        if nccl_present() {
            println!("skipped: NCCL is installed on this machine");
            return;
        }
        match unique_id() {
            Err(DistError::Library { name, hint }) => {
                assert_eq!(name, "libnccl.so.2");
                assert!(hint.contains("pip install nvidia-nccl-cu13"), "{hint}");
                assert!(hint.contains("LD_LIBRARY_PATH"), "{hint}");
                assert!(hint.contains("libnccl.so.2, libnccl.so"), "{hint}");
            }
            other => panic!("expected the missing-library error, got {other:?}"),
        }
        let text = unique_id().unwrap_err().to_string();
        println!("{text}");
        assert!(
            text.starts_with("libnccl.so.2 not found: install NCCL"),
            "{text}"
        );
        assert!(matches!(library_info(), Err(DistError::Library { .. })));
        assert!(matches!(group_start(), Err(DistError::Library { .. })));
    }

    #[test]
    fn init_without_a_gpu_is_a_clear_error() {
        if cuda_driver().is_ok() && nccl_present() {
            println!("skipped: the CUDA driver and NCCL are installed on this machine");
            return;
        }
        for result in [
            Nccl::init(0, 0, 1, &[0; UNIQUE_ID_BYTES]).map(|_| ()),
            Nccl::for_devices(&[0]).map(|_| ()),
        ] {
            match result {
                Err(DistError::Library { name, .. }) => {
                    assert!(name == "libcuda.so.1" || name == "libnccl.so.2", "{name}");
                }
                other => panic!("expected a missing-library error, got {other:?}"),
            }
        }
        if cuda_driver().is_err() {
            let text = Nccl::init(0, 0, 1, &[0; UNIQUE_ID_BYTES])
                .unwrap_err()
                .to_string();
            assert!(
                text.starts_with("libcuda.so.1 not found: it comes with the NVIDIA driver"),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_arguments_are_refused_before_loading_anything() {
        assert!(matches!(
            Nccl::init(0, 2, 2, &[0; UNIQUE_ID_BYTES]),
            Err(DistError::InvalidArgument { .. })
        ));
        assert!(matches!(
            Nccl::for_devices(&[]),
            Err(DistError::InvalidArgument { .. })
        ));
        let err = Nccl::for_devices(&[1, 1]).unwrap_err().to_string();
        assert_eq!(err, "invalid NCCL argument: device 1 is listed twice");
    }

    #[test]
    fn a_panic_in_the_bindings_becomes_an_error() {
        let err = guarded::<()>("cuInit", || {
            panic!("Unable to dynamically load the \"cuda\" shared library")
        });
        let text = err.unwrap_err().to_string();
        assert_eq!(
            text,
            "cuInit panicked: Unable to dynamically load the \"cuda\" shared library"
        );
    }
}
