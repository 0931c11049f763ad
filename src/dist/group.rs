//! The process group: a TCP rendezvous through rank 0, and the host collectives on it.
//!
//! [`Group::connect`] is the bootstrap every multi-process run needs, CPU or CUDA: rank 0 listens
//! on `MASTER_PORT`, the other ranks connect (retrying until the timeout, as rank 0 may start
//! later) and introduce themselves with their rank, world size and [`Fingerprint`]; rank 0 refuses
//! any disagreement, with the same sentence on both sides, and gives the go-ahead once all ranks
//! are in. CUDA runs then use the group only to hand out NCCL's unique id ([`Group::broadcast`])
//! and for the odd barrier; gradients go through NCCL ([`super::nccl`]).
//!
//! The host all-reduce ([`Group::all_reduce_sum_f32`] and the f64/i64 versions) is for CPU runs
//! and tests: a star through rank 0, which receives every rank's buffer, sums in rank order
//! (`acc = x0; acc += x1; acc += x2; ...`, the order of [`sum_in_rank_order`], which in-process
//! replicas use too) and sends the sum back, so every rank holds the same bits. Buffers travel in
//! [`CHUNK_BYTES`] chunks, a few in flight per rank, so memory stays bounded and sending overlaps
//! summing.
//!
//! Nothing waits forever: every read and write after the rendezvous has the group's timeout (the
//! ranks other than 0 wait up to twice that for rank 0, so that rank 0's verdict about a slow rank
//! reaches them first), a peer that dies or stalls is named in the error, rank 0 passes its
//! verdict on to the other ranks, and a failed group refuses further use.

use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::time::{Duration, Instant};

use super::{secs, DistError, Launch, Launcher};

/// The size of the pieces a host all-reduce is streamed in.
pub const CHUNK_BYTES: usize = 1 << 20;

/// How many chunks a rank other than 0 sends ahead of the sums it has received.
const WINDOW: usize = 4;

/// The first bytes of every introduction, so a stray connection is told apart from a rank.
const MAGIC: [u8; 8] = *b"vggdist\0";

/// Bumped whenever the bytes on the wire change; ranks speaking different versions are refused.
const PROTOCOL_VERSION: u32 = 1;

/// The largest [`Group::broadcast`] payload accepted.
const MAX_BROADCAST_BYTES: u64 = 1 << 30;

/// Limits on an introduction, so garbage cannot make rank 0 allocate much.
const MAX_FINGERPRINT_ITEMS: u32 = 256;
const MAX_STRING_BYTES: u32 = 64 << 10;

/// Frames rank 0 sends.
const FRAME_GO: u8 = b'G';
const FRAME_DATA: u8 = b'D';
const FRAME_DONE: u8 = b'.';
const FRAME_ABORT: u8 = b'!';

/// Operations, as a rank announces them to rank 0.
const OP_ALL_REDUCE: u8 = 1;
const OP_BROADCAST: u8 = 2;
const OP_BARRIER: u8 = 3;

const RENDEZVOUS: &str = "rendezvous";
const ALL_REDUCE: &str = "all-reduce";
const BROADCAST: &str = "broadcast";
const BARRIER: &str = "barrier";

/// What the ranks of one job must have in common: named values such as ("code version", ...),
/// ("pipeline", sha256 of the pipeline file), ("dataset", ...). The trainer fills it; rank 0
/// refuses any rank whose fingerprint differs from its own, naming the item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub items: Vec<(String, String)>,
}

impl Fingerprint {
    /// An empty fingerprint (every rank agrees with it).
    pub fn new() -> Fingerprint {
        Fingerprint::default()
    }

    /// Adds an item.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Fingerprint {
        self.items.push((name.into(), value.into()));
        self
    }

    /// The differences of `theirs` (rank `rank`'s) from `self` (rank 0's), one sentence each.
    fn differences(&self, theirs: &Fingerprint, rank: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (name, ours) in &self.items {
            match theirs.items.iter().find(|(n, _)| n == name) {
                None => out.push(format!(
                    "rank {rank} has no {name} (rank 0's is {})",
                    abbreviate(ours, ours)
                )),
                Some((_, value)) if value != ours => out.push(format!(
                    "rank {rank}'s {name} differs from rank 0's ({} vs {})",
                    abbreviate(value, ours),
                    abbreviate(ours, value)
                )),
                Some(_) => {}
            }
        }
        for (name, value) in &theirs.items {
            if !self.items.iter().any(|(n, _)| n == name) {
                out.push(format!(
                    "rank {rank} has a {name} ({}) that rank 0 lacks",
                    abbreviate(value, value)
                ));
            }
        }
        out
    }
}

/// `value` shortened for a message, around where it first differs from `other`.
fn abbreviate(value: &str, other: &str) -> String {
    const KEEP: usize = 12;
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 2 * KEEP {
        return value.to_string();
    }
    let first_difference = value
        .chars()
        .zip(other.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let start = first_difference.saturating_sub(4).min(chars.len() - KEEP);
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.extend(&chars[start..start + KEEP]);
    if start + KEEP < chars.len() {
        out.push('…');
    }
    out
}

/// The element types the host all-reduce sums: `f32`, `f64` and `i64` (which wraps on overflow).
pub trait Summable: Copy + Send + Sync + 'static {
    /// Bytes per element on the wire (little-endian).
    const SIZE: usize;
    /// The name the messages use.
    const NAME: &'static str;
    /// Zero.
    const ZERO: Self;
    /// The type's code in an operation's announcement.
    const CODE: u8;
    /// `self + other`.
    fn add(self, other: Self) -> Self;
    /// Appends the little-endian bytes.
    fn put(self, out: &mut Vec<u8>);
    /// Reads one element from `Self::SIZE` little-endian bytes.
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! summable {
    ($t:ty, $code:expr, $zero:expr, $add:expr) => {
        impl Summable for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            const NAME: &'static str = stringify!($t);
            const ZERO: Self = $zero;
            const CODE: u8 = $code;
            #[inline]
            fn add(self, other: Self) -> Self {
                $add(self, other)
            }
            #[inline]
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            #[inline]
            fn get(bytes: &[u8]) -> Self {
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(bytes);
                <$t>::from_le_bytes(raw)
            }
        }
    };
}

summable!(f32, 1, 0.0, |a: f32, b: f32| a + b);
summable!(f64, 2, 0.0, |a: f64, b: f64| a + b);
summable!(i64, 3, 0, |a: i64, b: i64| a.wrapping_add(b));

/// `acc[i] = acc[i] + x[i]`: one step of [`sum_in_rank_order`], for code that adds its parts one
/// at a time (copy rank 0's part into `acc`, then call this for ranks 1, 2, ... in order).
///
/// # Panics
/// If the lengths differ.
pub fn accumulate<T: Summable>(acc: &mut [T], x: &[T]) {
    use rayon::prelude::*;
    assert_eq!(acc.len(), x.len(), "accumulate: parts of different lengths");
    // Element-wise, so splitting the work over threads gives the same bits.
    const CHUNK: usize = 1 << 16;
    acc.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(a, b)| {
            for (a, &b) in a.iter_mut().zip(b) {
                *a = a.add(b);
            }
        });
}

/// The sum of `parts` in rank order, element by element: `out = parts[0]; out += parts[1]; ...`.
/// This is the order the host all-reduce sums in, so in-process replicas that use it get the
/// same bits as processes that all-reduce. No parts gives zeros.
///
/// # Panics
/// If a part's length differs from `out`'s.
pub fn sum_in_rank_order<T: Summable>(parts: &[&[T]], out: &mut [T]) {
    let Some((first, rest)) = parts.split_first() else {
        out.fill(T::ZERO);
        return;
    };
    assert_eq!(
        first.len(),
        out.len(),
        "sum_in_rank_order: parts of different lengths"
    );
    out.copy_from_slice(first);
    for part in rest {
        accumulate(out, part);
    }
}

/// `acc[i] += element i of bytes`, exactly as [`accumulate`] adds.
fn accumulate_bytes<T: Summable>(acc: &mut [T], bytes: &[u8]) {
    for (a, b) in acc.iter_mut().zip(bytes.chunks_exact(T::SIZE)) {
        *a = a.add(T::get(b));
    }
}

fn decode_into<T: Summable>(out: &mut [T], bytes: &[u8]) {
    for (a, b) in out.iter_mut().zip(bytes.chunks_exact(T::SIZE)) {
        *a = T::get(b);
    }
}

fn encode<T: Summable>(values: &[T], out: &mut Vec<u8>) {
    out.reserve(values.len() * T::SIZE);
    for &v in values {
        v.put(out);
    }
}

/// What a rank announces to rank 0 at the start of every operation; rank 0 checks all ranks
/// announce the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    op: u8,
    dtype: u8,
    seq: u64,
    count: u64,
}

impl Header {
    const BYTES: usize = 24;

    fn to_bytes(self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[0] = self.op;
        out[1] = self.dtype;
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.count.to_le_bytes());
        out
    }

    fn from_bytes(b: &[u8; Self::BYTES]) -> Header {
        Header {
            op: b[0],
            dtype: b[1],
            seq: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            count: u64::from_le_bytes(b[16..24].try_into().unwrap()),
        }
    }

    fn describe(&self) -> String {
        let what = match self.op {
            OP_ALL_REDUCE => {
                let dtype = match self.dtype {
                    1 => "f32",
                    2 => "f64",
                    3 => "i64",
                    _ => "values of an unknown type",
                };
                format!("an all-reduce of {} {dtype}", self.count)
            }
            OP_BROADCAST => "a broadcast".to_string(),
            OP_BARRIER => "a barrier".to_string(),
            other => format!("unknown operation {other}"),
        };
        format!("{what} (operation #{})", self.seq)
    }
}

/// How this process is connected.
enum Role {
    /// A world of one: every operation is a no-op.
    Alone,
    /// Rank 0: one stream per other rank, `peers[i]` being rank `i + 1`.
    Root { peers: Vec<TcpStream> },
    /// Any other rank: the stream to rank 0.
    Member { root: TcpStream },
}

/// A connected process group (see the module docs). Operations must be called in the same order
/// on every rank; a failed operation leaves the group unusable ([`DistError::Broken`]).
pub struct Group {
    rank: usize,
    world: usize,
    timeout: Duration,
    role: Role,
    seq: u64,
    broken: Option<String>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// A group of one process, on which every operation is a no-op.
    pub fn single() -> Group {
        Group {
            rank: 0,
            world: 1,
            timeout: Duration::ZERO,
            role: Role::Alone,
            seq: 0,
            broken: None,
        }
    }

    /// Connects this process to the others of `launch` (see the module docs): rank 0 listens on
    /// `launch.master_port` (on all IPv4 addresses, or all IPv6 ones when `master_addr` is an
    /// IPv6 address) and waits up to `timeout` for every other rank; the others connect to
    /// `launch.address()`, retrying until `timeout`. Every rank's `fingerprint` must equal rank
    /// 0's. `timeout` also bounds every wait of the operations afterwards.
    pub fn connect(
        launch: &Launch,
        fingerprint: &Fingerprint,
        timeout: Duration,
    ) -> Result<Group, DistError> {
        if launch.world == 0 || launch.rank >= launch.world {
            return Err(DistError::InvalidLaunch {
                what: format!("rank {} of a world of {}", launch.rank, launch.world),
            });
        }
        if timeout.is_zero() {
            return Err(DistError::InvalidLaunch {
                what: "the timeout is zero".to_string(),
            });
        }
        let role = match (launch.world, launch.rank) {
            (1, _) => Role::Alone,
            (_, 0) => Role::Root {
                peers: rendezvous_root(launch, fingerprint, timeout)?,
            },
            _ => Role::Member {
                root: rendezvous_member(launch, fingerprint, timeout)?,
            },
        };
        Ok(Group {
            rank: launch.rank,
            world: launch.world,
            timeout,
            role,
            seq: 0,
            broken: None,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Sends rank 0's `bytes` to every rank: on return every rank's `bytes` holds rank 0's
    /// (other ranks' contents are replaced). Used to hand out NCCL's unique id; at most 1 GiB.
    pub fn broadcast(&mut self, bytes: &mut Vec<u8>) -> Result<(), DistError> {
        if self.rank == 0 && bytes.len() as u64 > MAX_BROADCAST_BYTES {
            return Err(DistError::InvalidLaunch {
                what: format!(
                    "a broadcast of {} bytes is over the limit of {MAX_BROADCAST_BYTES}",
                    bytes.len()
                ),
            });
        }
        let header = self.header(OP_BROADCAST, 0, 0);
        let timeout = self.timeout;
        self.run(BROADCAST, |role| match role {
            Role::Alone => Ok(()),
            Role::Root { peers } => {
                gather_headers(peers, header, BROADCAST, timeout)?;
                let mut frame = Vec::with_capacity(9 + bytes.len());
                frame.push(FRAME_DATA);
                frame.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                frame.extend_from_slice(bytes);
                for (i, peer) in peers.iter_mut().enumerate() {
                    send(peer, &frame, i + 1, BROADCAST, timeout)?;
                }
                Ok(())
            }
            Role::Member { root } => {
                send(root, &header.to_bytes(), 0, BROADCAST, timeout)?;
                expect_frame(root, FRAME_DATA, BROADCAST, timeout)?;
                let mut len = [0u8; 8];
                receive(root, &mut len, 0, BROADCAST, timeout)?;
                let len = u64::from_le_bytes(len);
                if len > MAX_BROADCAST_BYTES {
                    return Err(DistError::Protocol {
                        rank: 0,
                        during: BROADCAST,
                        what: format!(
                            "announced {len} bytes, over the limit of {MAX_BROADCAST_BYTES}"
                        ),
                    });
                }
                bytes.clear();
                bytes.resize(len as usize, 0);
                receive(root, bytes, 0, BROADCAST, timeout)
            }
        })
    }

    /// Sums `data` over all ranks, in place; every rank ends with the same bits (see the module
    /// docs for the order). Every rank must pass the same length.
    pub fn all_reduce_sum_f32(&mut self, data: &mut [f32]) -> Result<(), DistError> {
        self.all_reduce(data)
    }

    /// [`Group::all_reduce_sum_f32`] for `f64`.
    pub fn all_reduce_sum_f64(&mut self, data: &mut [f64]) -> Result<(), DistError> {
        self.all_reduce(data)
    }

    /// [`Group::all_reduce_sum_f32`] for `i64` (counts; wraps on overflow).
    pub fn all_reduce_sum_i64(&mut self, data: &mut [i64]) -> Result<(), DistError> {
        self.all_reduce(data)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self) -> Result<(), DistError> {
        let header = self.header(OP_BARRIER, 0, 0);
        let timeout = self.timeout;
        self.run(BARRIER, |role| match role {
            Role::Alone => Ok(()),
            Role::Root { peers } => {
                gather_headers(peers, header, BARRIER, timeout)?;
                for (i, peer) in peers.iter_mut().enumerate() {
                    send(peer, &[FRAME_DONE], i + 1, BARRIER, timeout)?;
                }
                Ok(())
            }
            Role::Member { root } => {
                send(root, &header.to_bytes(), 0, BARRIER, timeout)?;
                expect_frame(root, FRAME_DONE, BARRIER, timeout)
            }
        })
    }

    fn all_reduce<T: Summable>(&mut self, data: &mut [T]) -> Result<(), DistError> {
        let header = self.header(OP_ALL_REDUCE, T::CODE, data.len() as u64);
        let timeout = self.timeout;
        self.run(ALL_REDUCE, |role| match role {
            Role::Alone => Ok(()),
            Role::Root { peers } => {
                gather_headers(peers, header, ALL_REDUCE, timeout)?;
                all_reduce_root(peers, data, timeout)
            }
            Role::Member { root } => {
                send(root, &header.to_bytes(), 0, ALL_REDUCE, timeout)?;
                all_reduce_member(root, data, timeout)
            }
        })
    }

    fn header(&self, op: u8, dtype: u8, count: u64) -> Header {
        Header {
            op,
            dtype,
            // The number `run` gives this operation.
            seq: self.seq + 1,
            count,
        }
    }

    /// Runs one operation: refuses a broken group, counts the operation, and on failure passes
    /// the verdict on (rank 0 to everyone still listening) and marks the group broken.
    fn run(
        &mut self,
        during: &'static str,
        op: impl FnOnce(&mut Role) -> Result<(), DistError>,
    ) -> Result<(), DistError> {
        if let Some(reason) = &self.broken {
            return Err(DistError::Broken {
                reason: reason.clone(),
            });
        }
        self.seq += 1;
        let result = op(&mut self.role);
        if let Err(err) = &result {
            let reason = err.to_string();
            match &mut self.role {
                Role::Alone => {}
                Role::Root { peers } => abort_peers(peers, &reason, err.peer(), self.timeout),
                Role::Member { root } => {
                    let _ = root.shutdown(Shutdown::Both);
                }
            }
            tracing::warn!(rank = self.rank, "{during} failed: {reason}");
            self.broken = Some(reason);
        }
        result
    }
}

/// Rank 0's side of the rendezvous: the streams to ranks 1..world, in rank order.
fn rendezvous_root(
    launch: &Launch,
    fingerprint: &Fingerprint,
    timeout: Duration,
) -> Result<Vec<TcpStream>, DistError> {
    let unspecified = match launch
        .master_addr
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        Ok(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let bind = SocketAddr::new(unspecified, launch.master_port);
    let listener = TcpListener::bind(bind)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| DistError::Listen {
            addr: bind.to_string(),
            port: launch.master_port,
            source,
        })?;
    tracing::info!(
        "rank 0 listening on {bind} for {} more ranks",
        launch.world - 1
    );
    let start = Instant::now();
    let deadline = start + timeout;
    let mut peers: Vec<Option<(TcpStream, SocketAddr)>> = (1..launch.world).map(|_| None).collect();
    let mut joined = 0;
    let fail = |peers: &mut Vec<Option<(TcpStream, SocketAddr)>>, err: DistError| {
        let reason = err.to_string();
        let mut connected: Vec<TcpStream> = peers
            .iter_mut()
            .filter_map(|p| p.take())
            .map(|(s, _)| s)
            .collect();
        abort_peers(&mut connected, &reason, None, timeout);
        err
    };
    while joined < launch.world - 1 {
        let (mut stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                let now = Instant::now();
                if now >= deadline {
                    let missing: Vec<usize> = peers
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.is_none())
                        .map(|(i, _)| i + 1)
                        .collect();
                    let err = DistError::RanksMissing {
                        waited: secs(timeout),
                        missing: rank_list(&missing),
                        world: launch.world,
                        addr: launch.address(),
                        hint: match launch.launcher {
                            Launcher::Slurm => " (under Slurm, start every task with srun)",
                            Launcher::Torchrun => "",
                        },
                    };
                    return Err(fail(&mut peers, err));
                }
                std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
                continue;
            }
            Err(e) => {
                // A connection that went away before it was accepted, and the like.
                tracing::warn!("rank 0: accepting a connection failed: {e}");
                continue;
            }
        };
        let hello = match read_hello(&mut stream, deadline) {
            Ok(Some(hello)) => hello,
            Ok(None) => {
                tracing::warn!("rank 0: ignored a connection from {from} that is not a vgg rank");
                continue;
            }
            Err(e) => {
                tracing::warn!(
                    "rank 0: a connection from {from} failed before it said who it is: {e}"
                );
                continue;
            }
        };
        let refusal = if hello.version != PROTOCOL_VERSION {
            Some(format!(
                "the process at {from} speaks protocol {}, rank 0 speaks {PROTOCOL_VERSION}; are all ranks the same vgg build?",
                hello.version
            ))
        } else if hello.world != launch.world as u64 {
            Some(format!(
                "rank {} was started with a world of {} processes, rank 0 with {}",
                hello.rank, hello.world, launch.world
            ))
        } else if hello.rank == 0 || hello.rank >= launch.world as u64 {
            Some(format!(
                "a process at {from} says it is rank {}, but only ranks 1..{} can join rank 0 (check RANK / SLURM_PROCID)",
                hello.rank,
                launch.world - 1
            ))
        } else if let Some((_, first)) = &peers[hello.rank as usize - 1] {
            Some(format!(
                "rank {} joined twice, from {first} and from {from} (check RANK / SLURM_PROCID)",
                hello.rank
            ))
        } else {
            let differences = fingerprint.differences(&hello.fingerprint, hello.rank as usize);
            (!differences.is_empty()).then(|| differences.join("; "))
        };
        if let Some(reason) = refusal {
            abort_peers(std::slice::from_mut(&mut stream), &reason, None, timeout);
            return Err(fail(&mut peers, DistError::Refused { reason }));
        }
        tracing::debug!("rank {} joined from {from}", hello.rank);
        peers[hello.rank as usize - 1] = Some((stream, from));
        joined += 1;
    }
    let mut peers: Vec<TcpStream> = peers
        .into_iter()
        .map(|p| p.expect("all joined").0)
        .collect();
    for (i, peer) in peers.iter_mut().enumerate() {
        let sent = peer
            .set_read_timeout(Some(timeout))
            .and_then(|()| peer.set_write_timeout(Some(timeout)))
            .and_then(|()| peer.write_all(&[FRAME_GO]));
        if let Err(e) = sent {
            let err = io_error(e, i + 1, RENDEZVOUS, timeout);
            abort_peers(&mut peers, &err.to_string(), Some(i + 1), timeout);
            return Err(err);
        }
    }
    tracing::info!("rank 0: all {} ranks joined", launch.world);
    Ok(peers)
}

/// A rank's introduction.
struct Hello {
    version: u32,
    rank: u64,
    world: u64,
    fingerprint: Fingerprint,
}

fn hello_bytes(launch: &Launch, fingerprint: &Fingerprint) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&(launch.rank as u64).to_le_bytes());
    out.extend_from_slice(&(launch.world as u64).to_le_bytes());
    out.extend_from_slice(&(fingerprint.items.len() as u32).to_le_bytes());
    for (name, value) in &fingerprint.items {
        put_string(&mut out, name);
        put_string(&mut out, value);
    }
    out
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(MAX_STRING_BYTES as usize)];
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads an introduction; `Ok(None)` for a connection that is not a vgg rank (wrong magic).
fn read_hello(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<Hello>> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let left = deadline.saturating_duration_since(Instant::now());
    stream.set_read_timeout(Some(left.max(Duration::from_millis(100))))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut magic = [0u8; 8];
    stream.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Ok(None);
    }
    let mut version = [0u8; 4];
    stream.read_exact(&mut version)?;
    let version = u32::from_le_bytes(version);
    if version != PROTOCOL_VERSION {
        // Whatever follows may be laid out differently; the version alone decides.
        return Ok(Some(Hello {
            version,
            rank: 0,
            world: 0,
            fingerprint: Fingerprint::new(),
        }));
    }
    let rank = read_u64(stream)?;
    let world = read_u64(stream)?;
    let count = read_u32(stream)?;
    if count > MAX_FINGERPRINT_ITEMS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{count} fingerprint items"),
        ));
    }
    let mut fingerprint = Fingerprint::new();
    for _ in 0..count {
        let name = read_string(stream)?;
        let value = read_string(stream)?;
        fingerprint.items.push((name, value));
    }
    Ok(Some(Hello {
        version,
        rank,
        world,
        fingerprint,
    }))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> io::Result<String> {
    let len = read_u32(r)?;
    if len > MAX_STRING_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a string of {len} bytes"),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A rank's side of the rendezvous: connect to rank 0 (retrying until the timeout), introduce
/// this rank and wait for the go-ahead.
fn rendezvous_member(
    launch: &Launch,
    fingerprint: &Fingerprint,
    timeout: Duration,
) -> Result<TcpStream, DistError> {
    let host = launch.master_addr.trim_matches(|c| c == '[' || c == ']');
    let start = Instant::now();
    let deadline = start + timeout;
    let mut pause = Duration::from_millis(20);
    let mut last = "no attempt".to_string();
    let mut stream = 'connect: loop {
        match (host, launch.master_port).to_socket_addrs() {
            Ok(addrs) => {
                for addr in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let attempt = left.clamp(Duration::from_millis(10), Duration::from_secs(2));
                    match TcpStream::connect_timeout(&addr, attempt) {
                        Ok(stream) => break 'connect stream,
                        Err(e) => last = format!("{addr}: {e}"),
                    }
                }
            }
            Err(e) => last = format!("cannot resolve {host}: {e}"),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(DistError::Unreachable {
                rank: launch.rank,
                addr: launch.address(),
                waited: secs(timeout),
                last,
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(500));
    };
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.set_read_timeout(Some(member_wait(timeout))))
        .and_then(|()| stream.write_all(&hello_bytes(launch, fingerprint)));
    if let Err(e) = setup {
        return Err(io_error(e, 0, RENDEZVOUS, member_wait(timeout)));
    }
    // Rank 0 may wait its whole timeout for the last rank, from when it started, which can be up
    // to `timeout` after this rank started: the go-ahead may take up to twice the timeout.
    expect_frame(&mut stream, FRAME_GO, RENDEZVOUS, timeout).inspect_err(|_| {
        let _ = stream.shutdown(Shutdown::Both);
    })?;
    Ok(stream)
}

/// How long a rank other than 0 waits for rank 0: twice the timeout, so that rank 0, which waits
/// `timeout` for the slowest rank, reports that rank first.
fn member_wait(timeout: Duration) -> Duration {
    timeout.saturating_mul(2)
}

/// Rank 0 reads every rank's announcement of the operation and checks they match its own.
fn gather_headers(
    peers: &mut [TcpStream],
    ours: Header,
    during: &'static str,
    timeout: Duration,
) -> Result<(), DistError> {
    for (i, peer) in peers.iter_mut().enumerate() {
        let mut raw = [0u8; Header::BYTES];
        receive(peer, &mut raw, i + 1, during, timeout)?;
        let theirs = Header::from_bytes(&raw);
        if theirs != ours {
            return Err(DistError::Mismatch {
                during,
                reason: format!(
                    "rank {} called {} while rank 0 called {}",
                    i + 1,
                    theirs.describe(),
                    ours.describe()
                ),
            });
        }
    }
    Ok(())
}

/// Rank 0's all-reduce: per chunk, add every rank's part in rank order onto its own, then send
/// the sum to everyone.
fn all_reduce_root<T: Summable>(
    peers: &mut [TcpStream],
    data: &mut [T],
    timeout: Duration,
) -> Result<(), DistError> {
    let per_chunk = CHUNK_BYTES / T::SIZE;
    let mut incoming = vec![0u8; data.len().min(per_chunk) * T::SIZE];
    let mut frame = Vec::with_capacity(1 + incoming.len());
    for chunk in data.chunks_mut(per_chunk) {
        let bytes = &mut incoming[..chunk.len() * T::SIZE];
        for (i, peer) in peers.iter_mut().enumerate() {
            receive(peer, bytes, i + 1, ALL_REDUCE, timeout)?;
            accumulate_bytes(chunk, bytes);
        }
        frame.clear();
        frame.push(FRAME_DATA);
        encode(chunk, &mut frame);
        for (i, peer) in peers.iter_mut().enumerate() {
            send(peer, &frame, i + 1, ALL_REDUCE, timeout)?;
        }
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        send(peer, &[FRAME_DONE], i + 1, ALL_REDUCE, timeout)?;
    }
    Ok(())
}

/// Another rank's all-reduce: a writer thread streams this rank's chunks, up to [`WINDOW`] ahead
/// of the sums this thread reads back into `data`.
fn all_reduce_member<T: Summable>(
    root: &mut TcpStream,
    data: &mut [T],
    timeout: Duration,
) -> Result<(), DistError> {
    let per_chunk = CHUNK_BYTES / T::SIZE;
    let chunks = data.len().div_ceil(per_chunk);
    let mut writer_stream = root.try_clone().map_err(|source| DistError::Io {
        rank: 0,
        during: ALL_REDUCE,
        source,
    })?;
    let encoded = |k: usize, data: &[T]| {
        let part = &data[k * per_chunk..((k + 1) * per_chunk).min(data.len())];
        let mut buf = Vec::with_capacity(part.len() * T::SIZE);
        encode(part, &mut buf);
        buf
    };
    std::thread::scope(|scope| {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(WINDOW);
        let writer = scope.spawn(move || -> io::Result<()> {
            for buf in rx {
                writer_stream.write_all(&buf)?;
            }
            Ok(())
        });
        // `Ok(false)`: the writer is gone (its error says why).
        let mut receive_sums = || -> Result<bool, DistError> {
            for k in 0..chunks.min(WINDOW) {
                if tx.send(encoded(k, data)).is_err() {
                    return Ok(false);
                }
            }
            let mut incoming = vec![0u8; data.len().min(per_chunk) * T::SIZE];
            for k in 0..chunks {
                expect_frame(root, FRAME_DATA, ALL_REDUCE, timeout)?;
                let end = ((k + 1) * per_chunk).min(data.len());
                let part = &mut data[k * per_chunk..end];
                let bytes = &mut incoming[..part.len() * T::SIZE];
                receive(root, bytes, 0, ALL_REDUCE, member_wait(timeout))?;
                decode_into(part, bytes);
                if k + WINDOW < chunks && tx.send(encoded(k + WINDOW, data)).is_err() {
                    return Ok(false);
                }
            }
            expect_frame(root, FRAME_DONE, ALL_REDUCE, timeout)?;
            Ok(true)
        };
        let result = receive_sums();
        drop(tx);
        if !matches!(result, Ok(true)) {
            // Unblock the writer if it is stuck on a full socket.
            let _ = root.shutdown(Shutdown::Both);
        }
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the all-reduce writer thread panicked")));
        match (result, written) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(io_error(e, 0, ALL_REDUCE, timeout)),
            (Ok(true), Ok(())) => Ok(()),
            (Ok(false), Ok(())) => Err(DistError::PeerClosed {
                rank: 0,
                during: ALL_REDUCE,
            }),
        }
    })
}

/// Reads the next frame's tag from rank 0 and checks it is `expected`; an abort frame becomes
/// [`DistError::Aborted`] with rank 0's reason.
fn expect_frame(
    root: &mut TcpStream,
    expected: u8,
    during: &'static str,
    timeout: Duration,
) -> Result<(), DistError> {
    let wait = member_wait(timeout);
    let mut tag = [0u8; 1];
    receive(root, &mut tag, 0, during, wait)?;
    match tag[0] {
        t if t == expected => Ok(()),
        FRAME_ABORT => {
            let reason = read_string(root).map_err(|e| io_error(e, 0, during, wait))?;
            Err(DistError::Aborted { during, reason })
        }
        other => Err(DistError::Protocol {
            rank: 0,
            during,
            what: format!(
                "sent {:?} where {:?} was expected (is another program listening on MASTER_PORT?)",
                other as char, expected as char
            ),
        }),
    }
}

/// Rank 0 tells every peer still listening why it stops (skipping `skip`, whose stream may be
/// mid-frame), then lets them hang up: it stops writing and reads what they still send until they
/// close, briefly, so closing its sockets does not reset a connection before the verdict is read.
fn abort_peers(peers: &mut [TcpStream], reason: &str, skip: Option<usize>, timeout: Duration) {
    let mut frame = vec![FRAME_ABORT];
    put_string(&mut frame, reason);
    for (i, peer) in peers.iter_mut().enumerate() {
        if skip != Some(i + 1) {
            let _ = peer.set_write_timeout(Some(timeout.min(Duration::from_secs(2))));
            let _ = peer.write_all(&frame);
        }
        let _ = peer.shutdown(Shutdown::Write);
    }
    let drain_for = timeout.min(Duration::from_secs(2));
    let mut scratch = vec![0u8; 64 << 10];
    for peer in peers.iter_mut() {
        let until = Instant::now() + drain_for;
        let _ = peer.set_read_timeout(Some(drain_for.max(Duration::from_millis(1))));
        while Instant::now() < until {
            match peer.read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = peer.shutdown(Shutdown::Both);
    }
}

fn send(
    stream: &mut TcpStream,
    bytes: &[u8],
    rank: usize,
    during: &'static str,
    timeout: Duration,
) -> Result<(), DistError> {
    stream
        .write_all(bytes)
        .map_err(|e| io_error(e, rank, during, timeout))
}

/// Reads exactly `buf.len()` bytes from `rank`, waiting at most `wait` for each piece.
fn receive(
    stream: &mut TcpStream,
    buf: &mut [u8],
    rank: usize,
    during: &'static str,
    wait: Duration,
) -> Result<(), DistError> {
    stream
        .set_read_timeout(Some(wait))
        .and_then(|()| stream.read_exact(buf))
        .map_err(|e| io_error(e, rank, during, wait))
}

/// A socket error as the sentence that names the peer.
fn io_error(e: io::Error, rank: usize, during: &'static str, wait: Duration) -> DistError {
    use io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
            DistError::PeerClosed { rank, during }
        }
        WouldBlock | TimedOut => DistError::PeerStalled {
            rank,
            during,
            waited: secs(wait),
        },
        _ => DistError::Io {
            rank,
            during,
            source: e,
        },
    }
}

/// "rank 2" / "ranks 2, 3".
fn rank_list(ranks: &[usize]) -> String {
    let list: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
    match ranks.len() {
        1 => format!("rank {}", list[0]),
        _ => format!("ranks {}", list.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// A port nobody listens on right now (bind port 0, read it, let it go).
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn launch(rank: usize, world: usize, port: u16) -> Launch {
        Launch {
            rank,
            world,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            launcher: Launcher::Torchrun,
        }
    }

    fn fingerprint() -> Fingerprint {
        Fingerprint::new()
            .with("code version", "0.1.0")
            .with(
                "pipeline",
                "3f2a9c01d8e7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa0000",
            )
            .with("dataset", "imagenet-train-1281167")
    }

    /// Runs `body(group)` on `world` threads, one per rank, each with its own group; returns the
    /// results in rank order. `prints` picks each rank's fingerprint.
    fn on_ranks<R: Send + 'static>(
        world: usize,
        timeout: Duration,
        prints: impl Fn(usize) -> Fingerprint,
        body: impl Fn(usize, Result<Group, DistError>) -> R + Send + Sync + Clone + 'static,
    ) -> Vec<R> {
        let port = free_port();
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let print = prints(rank);
                let body = body.clone();
                thread::spawn(move || {
                    body(
                        rank,
                        Group::connect(&launch(rank, world, port), &print, timeout),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Values whose sum depends on the order of the additions, per rank.
    fn rank_values(rank: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let scale = [1.0e8f32, 1.0, -1.0e8][rank % 3];
                scale * (1.0 + (i % 97) as f32 * 0.013) + (rank * i % 13) as f32 * 0.1
            })
            .collect()
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn sum_in_rank_order_adds_left_to_right() {
        let (a, b, c) = ([1.0e8f32], [-1.0e8f32], [1.0f32]);
        let mut out = [0.0f32];
        sum_in_rank_order(&[&a, &b, &c], &mut out);
        // (1e8 - 1e8) + 1 == 1, while 1e8 + (-1e8 + 1) == 0 in f32 (-1e8 + 1 rounds back to
        // -1e8), so this pins the order.
        assert_eq!(out[0], 1.0);
        assert_eq!(1.0e8f32 + (-1.0e8f32 + 1.0), 0.0);
        let mut acc = a;
        accumulate(&mut acc, &b);
        accumulate(&mut acc, &c);
        assert_eq!(acc, out);
        let mut zeros = [5.0f64; 3];
        sum_in_rank_order::<f64>(&[], &mut zeros);
        assert_eq!(zeros, [0.0; 3]);
    }

    #[test]
    fn three_ranks_broadcast_all_reduce_and_barrier() {
        let len = 1000;
        let results = on_ranks(
            3,
            Duration::from_secs(20),
            |_| fingerprint(),
            move |rank, group| {
                let mut group = group.unwrap();
                assert_eq!((group.rank(), group.world()), (rank, 3));
                let mut id = if rank == 0 {
                    (0..128).map(|i| i as u8).collect()
                } else {
                    vec![9u8; 3]
                };
                group.broadcast(&mut id).unwrap();
                let mut data = rank_values(rank, len);
                group.all_reduce_sum_f32(&mut data).unwrap();
                let mut counts = [rank as i64 + 1, -(rank as i64)];
                group.all_reduce_sum_i64(&mut counts).unwrap();
                let mut losses = [0.1f64 * (rank + 1) as f64];
                group.all_reduce_sum_f64(&mut losses).unwrap();
                let mut empty: [f32; 0] = [];
                group.all_reduce_sum_f32(&mut empty).unwrap();
                group.barrier().unwrap();
                (id, bits(&data), counts, losses[0].to_bits())
            },
        );
        let parts: Vec<Vec<f32>> = (0..3).map(|r| rank_values(r, len)).collect();
        let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        let mut expected = vec![0.0; len];
        sum_in_rank_order(&refs, &mut expected);
        let expected_loss = (0.1f64 * 1.0 + 0.1 * 2.0) + 0.1 * 3.0;
        for (rank, (id, sum, counts, loss)) in results.iter().enumerate() {
            assert_eq!(
                *id,
                (0..128).map(|i| i as u8).collect::<Vec<u8>>(),
                "rank {rank}"
            );
            assert_eq!(*sum, bits(&expected), "rank {rank}");
            assert_eq!(*counts, [6, -3], "rank {rank}");
            assert_eq!(*loss, expected_loss.to_bits(), "rank {rank}");
        }
    }

    #[test]
    fn an_all_reduce_over_several_chunks_is_identical_everywhere() {
        let len = CHUNK_BYTES / 4 * 2 + 12345;
        let results = on_ranks(
            3,
            Duration::from_secs(30),
            |_| fingerprint(),
            move |rank, group| {
                let mut group = group.unwrap();
                let mut data = rank_values(rank, len);
                group.all_reduce_sum_f32(&mut data).unwrap();
                // A second one on the same group, to check the stream stays in step.
                let mut again = rank_values(rank, len);
                group.all_reduce_sum_f32(&mut again).unwrap();
                assert_eq!(bits(&data), bits(&again));
                bits(&data)
            },
        );
        let parts: Vec<Vec<f32>> = (0..3).map(|r| rank_values(r, len)).collect();
        let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        let mut expected = vec![0.0; len];
        sum_in_rank_order(&refs, &mut expected);
        for (rank, sum) in results.iter().enumerate() {
            assert!(*sum == bits(&expected), "rank {rank}'s sum differs");
        }
    }

    #[test]
    fn a_world_of_one_needs_no_sockets() {
        let mut group =
            Group::connect(&launch(0, 1, 1), &fingerprint(), Duration::from_secs(1)).unwrap();
        let mut data = [1.5f32, -2.0];
        group.all_reduce_sum_f32(&mut data).unwrap();
        assert_eq!(data, [1.5, -2.0]);
        let mut bytes = vec![1, 2, 3];
        group.broadcast(&mut bytes).unwrap();
        assert_eq!(bytes, [1, 2, 3]);
        group.barrier().unwrap();
        assert_eq!(Group::single().world(), 1);
    }

    #[test]
    fn a_different_fingerprint_is_refused_on_both_sides() {
        let results = on_ranks(
            2,
            Duration::from_secs(20),
            |rank| {
                if rank == 1 {
                    let mut print = fingerprint();
                    print.items[1].1 =
                        "91bc5e0f00000000000000000000000000000000000000000000000000000000".into();
                    print
                } else {
                    fingerprint()
                }
            },
            |_, group| group.map(|_| ()).map_err(|e| e.to_string()),
        );
        let rank0 = results[0].as_ref().unwrap_err();
        assert!(
            rank0.contains("rank 1's pipeline differs from rank 0's"),
            "{rank0}"
        );
        assert!(rank0.contains("91bc") && rank0.contains("3f2a"), "{rank0}");
        let rank1 = results[1].as_ref().unwrap_err();
        assert!(
            rank1.starts_with("rank 0 stopped the rendezvous"),
            "{rank1}"
        );
        assert!(
            rank1.contains("rank 1's pipeline differs from rank 0's"),
            "{rank1}"
        );
        assert!(
            rank1.ends_with(rank0.trim_start_matches("rank 0 refused the rendezvous: ")),
            "{rank1}"
        );
    }

    #[test]
    fn a_different_world_size_is_refused() {
        let port = free_port();
        let root = thread::spawn(move || {
            Group::connect(&launch(0, 2, port), &fingerprint(), Duration::from_secs(20)).map(|_| ())
        });
        let other = Group::connect(&launch(1, 3, port), &fingerprint(), Duration::from_secs(20));
        let other = other.unwrap_err().to_string();
        let root = root.join().unwrap().unwrap_err().to_string();
        for e in [&root, &other] {
            assert!(
                e.contains("rank 1 was started with a world of 3 processes, rank 0 with 2"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_missing_rank_makes_rank_0_fail_with_the_ranks_it_waited_for() {
        // A world of 4 in which only ranks 0 and 1 start.
        let port = free_port();
        let joined = thread::spawn(move || {
            Group::connect(&launch(1, 4, port), &fingerprint(), Duration::from_secs(1)).map(|_| ())
        });
        let root = Group::connect(&launch(0, 4, port), &fingerprint(), Duration::from_secs(1));
        let root = root.unwrap_err().to_string();
        assert!(
            root.starts_with(&format!(
                "rank 0 waited 1 s for ranks 2, 3 of 4 at 127.0.0.1:{port}; did they start?"
            )),
            "{root}"
        );
        let joined = joined.join().unwrap().unwrap_err().to_string();
        assert_eq!(joined, format!("rank 0 stopped the rendezvous: {root}"));
    }

    #[test]
    fn an_unreachable_rank_0_is_named() {
        let port = free_port();
        let err = Group::connect(
            &launch(2, 3, port),
            &fingerprint(),
            Duration::from_millis(300),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "rank 2 could not reach rank 0 at 127.0.0.1:{port} within 0.3 s"
            )),
            "{text}"
        );
    }

    #[test]
    fn a_rank_that_drops_out_mid_all_reduce_is_named_by_the_others() {
        let len = CHUNK_BYTES / 4 * 3;
        let results = on_ranks(
            3,
            Duration::from_secs(20),
            |_| fingerprint(),
            move |rank, group| {
                let mut group = group.unwrap();
                let mut data = rank_values(rank, len);
                if rank == 2 {
                    // Announce the all-reduce, send one chunk of three, and vanish.
                    let Role::Member { root } = &mut group.role else {
                        unreachable!()
                    };
                    let header = Header {
                        op: OP_ALL_REDUCE,
                        dtype: f32::CODE,
                        seq: 1,
                        count: len as u64,
                    };
                    root.write_all(&header.to_bytes()).unwrap();
                    let mut first = Vec::new();
                    encode(&data[..CHUNK_BYTES / 4], &mut first);
                    root.write_all(&first).unwrap();
                    root.shutdown(Shutdown::Both).unwrap();
                    return None;
                }
                let err = group.all_reduce_sum_f32(&mut data).unwrap_err().to_string();
                // The group refuses further use, with the same reason.
                let again = group.barrier().unwrap_err().to_string();
                assert!(
                    again.starts_with("the process group already failed"),
                    "{again}"
                );
                Some(err)
            },
        );
        let rank0 = results[0].as_ref().unwrap();
        assert_eq!(
            rank0,
            "rank 2 closed its connection during all-reduce (did it crash?)"
        );
        let rank1 = results[1].as_ref().unwrap();
        assert_eq!(
            rank1,
            "rank 0 stopped the all-reduce: rank 2 closed its connection during all-reduce (did it crash?)"
        );
    }

    #[test]
    fn different_lengths_or_operations_are_refused() {
        let results = on_ranks(
            3,
            Duration::from_secs(20),
            |_| fingerprint(),
            |rank, group| {
                let mut group = group.unwrap();
                if rank == 2 {
                    group.barrier().unwrap_err().to_string()
                } else {
                    let mut data = vec![1.0f32; 10 + rank];
                    group.all_reduce_sum_f32(&mut data).unwrap_err().to_string()
                }
            },
        );
        assert_eq!(
            results[0],
            "the ranks disagree in all-reduce: rank 1 called an all-reduce of 11 f32 (operation #1) while rank 0 called an all-reduce of 10 f32 (operation #1)"
        );
        for e in &results[1..] {
            assert!(e.starts_with("rank 0 stopped the "), "{e}");
            assert!(e.contains("rank 1 called an all-reduce of 11 f32"), "{e}");
        }
    }

    #[test]
    fn a_stalled_rank_is_named() {
        let results = on_ranks(
            2,
            Duration::from_millis(500),
            |_| fingerprint(),
            |rank, group| {
                let mut group = group.unwrap();
                if rank == 1 {
                    // Joins, then never calls the barrier; keeps its socket open until rank 0 gives up.
                    let Role::Member { root } = &mut group.role else {
                        unreachable!()
                    };
                    let mut tag = [0u8; 1];
                    root.set_read_timeout(Some(Duration::from_secs(20)))
                        .unwrap();
                    let _ = root.read(&mut tag);
                    return String::new();
                }
                group.barrier().unwrap_err().to_string()
            },
        );
        assert!(
            results[0].starts_with("rank 1 sent nothing for 0.5 s during barrier"),
            "{}",
            results[0]
        );
    }

    #[test]
    fn long_values_are_shortened_around_the_difference() {
        assert_eq!(abbreviate("short", "other"), "short");
        let a = "3f2a9c01d8e7b6a5f4e3d2c1b0a99887766554433221100";
        let b = "91bc9c01d8e7b6a5f4e3d2c1b0a99887766554433221100";
        assert_eq!(abbreviate(a, b), "3f2a9c01d8e7…");
        let c = "/data/imagenet/shards/train-000123-of-001024.vggshard";
        let d = "/data/imagenet/shards/train-000124-of-001024.vggshard";
        assert_eq!(abbreviate(c, d), "…00123-of-001…");
    }

    /// The environment variable that makes [`child_process`] act as one rank.
    const CHILD_ENV: &str = "VGG_DIST_TEST_CHILD";

    /// One rank of [`two_processes_rendezvous_over_loopback`]: reads its place from the
    /// launcher variables, all-reduces and prints the result. Only meaningful as that test's
    /// child process, hence ignored.
    #[test]
    #[ignore = "child process of two_processes_rendezvous_over_loopback"]
    fn child_process() {
        if std::env::var_os(CHILD_ENV).is_none() {
            println!("not a child of two_processes_rendezvous_over_loopback: nothing to do");
            return;
        }
        let launch = Launch::from_env().unwrap().expect("launcher variables");
        let mut group = Group::connect(&launch, &fingerprint(), Duration::from_secs(20)).unwrap();
        let mut data: Vec<f32> = rank_values(launch.rank, 100);
        group.all_reduce_sum_f32(&mut data).unwrap();
        let mut id = if launch.rank == 0 {
            b"nccl-id".to_vec()
        } else {
            Vec::new()
        };
        group.broadcast(&mut id).unwrap();
        group.barrier().unwrap();
        println!(
            "RESULT rank={} world={} launcher={} id={} sum={:?}",
            launch.rank,
            launch.world,
            launch.launcher,
            String::from_utf8_lossy(&id),
            bits(&data)
        );
    }

    #[test]
    fn two_processes_rendezvous_over_loopback() {
        let exe = std::env::current_exe().unwrap();
        let port = free_port().to_string();
        let launcher_vars = [
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "MASTER_ADDR",
            "MASTER_PORT",
            "SLURM_PROCID",
            "SLURM_NTASKS",
            "SLURM_LOCALID",
            "SLURM_NODELIST",
            "SLURM_STEP_NODELIST",
            "SLURM_JOB_NODELIST",
        ];
        let spawn = |vars: &[(&str, &str)]| {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args([
                "--exact",
                "dist::group::tests::child_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ]);
            for var in launcher_vars {
                cmd.env_remove(var);
            }
            cmd.env(CHILD_ENV, "1").envs(vars.iter().copied());
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        };
        // Rank 1 first, through Slurm's variables and host list: it has to wait for rank 0.
        let slurm = spawn(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NODELIST", "localhost"),
            ("MASTER_PORT", &port),
        ]);
        let torchrun = spawn(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", &port),
        ]);
        let outputs: Vec<String> = [torchrun, slurm]
            .into_iter()
            .map(|child| {
                let out = child.wait_with_output().unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success(),
                    "child failed: {}\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                // libtest prints "test ... " before the test's own output, on the same line.
                let line = stdout
                    .lines()
                    .find_map(|l| l.find("RESULT ").map(|at| &l[at..]))
                    .unwrap_or_else(|| panic!("no RESULT line in {stdout}"));
                line.to_string()
            })
            .collect();
        let mut expected = vec![0.0f32; 100];
        sum_in_rank_order(&[&rank_values(0, 100), &rank_values(1, 100)], &mut expected);
        let sum = format!("sum={:?}", bits(&expected));
        assert_eq!(
            outputs[0],
            format!("RESULT rank=0 world=2 launcher=torchrun id=nccl-id {sum}")
        );
        assert_eq!(
            outputs[1],
            format!("RESULT rank=1 world=2 launcher=Slurm id=nccl-id {sum}")
        );
    }
}
