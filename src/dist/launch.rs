//! Which process this is in a data-parallel job, read from the launcher's environment.
//!
//! The trainer runs one process per GPU. The processes are started by torchrun or by Slurm's
//! `srun`, which tell each one its rank, the number of processes and where rank 0 is through
//! environment variables; [`Launch::from_env`] reads them once, checks they agree and says which
//! variable is wrong when they do not. No launcher variables (or a world of one) is a plain
//! single-process run: `Ok(None)`.

use std::fmt;

use super::DistError;

/// The port rank 0 listens on when `MASTER_PORT` is not set (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// The most hosts a Slurm host list may expand to (a guard against `node[1-99999999]`).
const MAX_HOSTS: usize = 1 << 16;

/// Who started the processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `torchrun` (or anything that sets `RANK`, `WORLD_SIZE`, ... the same way).
    Torchrun,
    /// Slurm's `srun`, one task per GPU.
    Slurm,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "Slurm",
        })
    }
}

/// This process's place in a multi-process job.
///
/// Read from the environment by [`Launch::from_env`]:
///
/// - **torchrun** (any of `RANK`, `WORLD_SIZE` set): `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
///   `MASTER_ADDR`, `MASTER_PORT` (default 29500).
/// - **Slurm** (`SLURM_PROCID` and `SLURM_NTASKS` set, i.e. a task started by `srun`):
///   `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; rank 0's address is `MASTER_ADDR` if set,
///   else the first host of the step's node list (`SLURM_STEP_NODELIST`, else `SLURM_NODELIST`,
///   else `SLURM_JOB_NODELIST`, in Slurm's compressed form such as `gpu[01-04,07]`), which is
///   where Slurm's default distributions place task 0; set `MASTER_ADDR` otherwise. The port is
///   `MASTER_PORT` or 29500. Two jobs sharing a node with the default port collide, so Slurm
///   users should set a port per job in the batch script, e.g.
///   `export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))`.
///
///   Note that a batch script itself runs as task 0 of the whole allocation (`SLURM_PROCID=0`,
///   `SLURM_NTASKS=<all tasks>`): start the trainer with `srun`, or rank 0 waits for ranks that
///   never come (and says so when its timeout ends).
///
/// torchrun's variables win when both sets are present (torchrun started inside an `srun` task).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank, `0..world`.
    pub rank: usize,
    /// The number of processes.
    pub world: usize,
    /// This process's rank on its node: the GPU it uses.
    pub local_rank: usize,
    /// Where rank 0 listens (host name or IP address).
    pub master_addr: String,
    /// The port rank 0 listens on.
    pub master_port: u16,
    /// Who started the processes.
    pub launcher: Launcher,
}

impl Launch {
    /// Reads the launcher variables from the process environment; `Ok(None)` for a
    /// single-process run (no launcher variables, or a world of one).
    pub fn from_env() -> Result<Option<Launch>, DistError> {
        Self::from_vars(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// [`Launch::from_env`] with the variables looked up through `get`, so the rules can be tested
    /// without touching the process environment. Empty values count as unset.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, DistError> {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if var("RANK").is_some() || var("WORLD_SIZE").is_some() {
            torchrun(&var)
        } else if var("SLURM_PROCID").is_some() && var("SLURM_NTASKS").is_some() {
            slurm(&var)
        } else {
            Ok(None)
        }
    }

    /// `host:port` of rank 0 (an IPv6 address in brackets), as the messages print it.
    pub fn address(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }
}

fn torchrun(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>, DistError> {
    let world = match var("WORLD_SIZE") {
        Some(value) => world_size("WORLD_SIZE", value)?,
        None => {
            return Err(DistError::MissingVar {
                var: "WORLD_SIZE",
                why: "RANK is set (torchrun sets both)".to_string(),
            })
        }
    };
    let rank = rank_var(var, "RANK", world, "WORLD_SIZE")?;
    let local_rank = rank_var(var, "LOCAL_RANK", world, "WORLD_SIZE")?;
    if world == 1 {
        return Ok(None);
    }
    let master_addr = var("MASTER_ADDR").ok_or_else(|| DistError::MissingVar {
        var: "MASTER_ADDR",
        why: format!("WORLD_SIZE={world} needs rank 0's address (torchrun sets it)"),
    })?;
    Ok(Some(Launch {
        rank,
        world,
        local_rank,
        master_addr,
        master_port: port(var)?,
        launcher: Launcher::Torchrun,
    }))
}

fn slurm(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>, DistError> {
    let world = world_size("SLURM_NTASKS", var("SLURM_NTASKS").unwrap_or_default())?;
    let rank = rank_var(var, "SLURM_PROCID", world, "SLURM_NTASKS")?;
    let local_rank = rank_var(var, "SLURM_LOCALID", world, "SLURM_NTASKS")?;
    if world == 1 {
        return Ok(None);
    }
    let master_addr = match var("MASTER_ADDR") {
        Some(addr) => addr,
        None => {
            let (name, list) = [
                "SLURM_STEP_NODELIST",
                "SLURM_NODELIST",
                "SLURM_JOB_NODELIST",
            ]
            .into_iter()
            .find_map(|name| var(name).map(|list| (name, list)))
            .ok_or_else(|| DistError::MissingVar {
                var: "MASTER_ADDR",
                why: format!(
                    "SLURM_NTASKS={world} needs rank 0's address and there is no \
                         SLURM_STEP_NODELIST, SLURM_NODELIST or SLURM_JOB_NODELIST to take it from"
                ),
            })?;
            first_host(&list).map_err(|problem| DistError::BadVar {
                var: name.to_string(),
                value: list.clone(),
                problem,
            })?
        }
    };
    Ok(Some(Launch {
        rank,
        world,
        local_rank,
        master_addr,
        master_port: port(var)?,
        launcher: Launcher::Slurm,
    }))
}

fn number(name: &str, value: &str) -> Result<usize, DistError> {
    value.parse::<usize>().map_err(|_| DistError::BadVar {
        var: name.to_string(),
        value: value.to_string(),
        problem: "is not a whole number".to_string(),
    })
}

fn world_size(name: &str, value: String) -> Result<usize, DistError> {
    let world = number(name, &value)?;
    if world == 0 {
        return Err(DistError::BadVar {
            var: name.to_string(),
            value,
            problem: "is not a number of processes (it must be at least 1)".to_string(),
        });
    }
    Ok(world)
}

/// A rank-like variable (`RANK`, `LOCAL_RANK`, ...): required when the world has more than one
/// process (0 otherwise), and below the world size.
fn rank_var(
    var: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    world: usize,
    world_name: &str,
) -> Result<usize, DistError> {
    let Some(value) = var(name) else {
        if world == 1 {
            return Ok(0);
        }
        return Err(DistError::MissingVar {
            var: name,
            why: format!("{world_name}={world} says this is a {world}-process job"),
        });
    };
    let rank = number(name, &value)?;
    if rank >= world {
        return Err(DistError::BadVar {
            var: name.to_string(),
            value,
            problem: format!("is not below {world_name}={world}"),
        });
    }
    Ok(rank)
}

fn port(var: &dyn Fn(&str) -> Option<String>) -> Result<u16, DistError> {
    let Some(value) = var("MASTER_PORT") else {
        return Ok(DEFAULT_MASTER_PORT);
    };
    match value.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(DistError::BadVar {
            var: "MASTER_PORT".to_string(),
            value,
            problem: "is not a TCP port (1-65535)".to_string(),
        }),
    }
}

/// The first host of a Slurm host list (`node[01-04,07]` -> `node01`), after checking the whole
/// list parses.
pub(crate) fn first_host(list: &str) -> Result<String, String> {
    expand_hostlist(list)?
        .into_iter()
        .next()
        .ok_or_else(|| "is an empty host list".to_string())
}

/// Expands a Slurm host list in Slurm's compressed form: comma-separated entries, each a name
/// with bracketed ranges (`gpu-a[1-2],gpu-b3`, `n[001-003]-ib`, `r[1-2]n[01-02]`), zero padding
/// kept as written.
pub(crate) fn expand_hostlist(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for entry in split_top_level(list)? {
        if entry.is_empty() {
            return Err("has an empty entry between commas".to_string());
        }
        hosts.extend(expand_entry(entry)?);
        if hosts.len() > MAX_HOSTS {
            return Err(format!("expands to more than {MAX_HOSTS} hosts"));
        }
    }
    Ok(hosts)
}

/// Splits at the commas outside brackets, checking the brackets pair up.
fn split_top_level(list: &str) -> Result<Vec<&str>, String> {
    let mut entries = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err("has a '[' inside brackets".to_string()),
            ']' if depth == 1 => depth = 0,
            ']' => return Err("has a ']' without a '['".to_string()),
            ',' if depth == 0 => {
                entries.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("has a '[' that is never closed".to_string());
    }
    entries.push(list[start..].trim());
    Ok(entries)
}

/// One entry: literal text and bracket groups, expanded left to right.
fn expand_entry(entry: &str) -> Result<Vec<String>, String> {
    let mut names = vec![String::new()];
    let mut rest = entry;
    while !rest.is_empty() {
        if let Some(inner_start) = rest.strip_prefix('[') {
            // The brackets were checked to pair up, so there is a ']'.
            let end = inner_start.find(']').unwrap_or(inner_start.len());
            let alternatives = expand_ranges(&inner_start[..end])?;
            if names.len().saturating_mul(alternatives.len()) > MAX_HOSTS {
                return Err(format!("expands to more than {MAX_HOSTS} hosts"));
            }
            names = names
                .iter()
                .flat_map(|name| alternatives.iter().map(move |alt| format!("{name}{alt}")))
                .collect();
            rest = inner_start.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find('[').unwrap_or(rest.len());
            for name in &mut names {
                name.push_str(&rest[..end]);
            }
            rest = &rest[end..];
        }
    }
    Ok(names)
}

/// The inside of one bracket group: `01-04,07` -> 01, 02, 03, 04, 07.
fn expand_ranges(inner: &str) -> Result<Vec<String>, String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut out = Vec::new();
    for item in inner.split(',').map(str::trim) {
        match item.split_once('-') {
            Some((lo, hi)) if digits(lo) && digits(hi) => {
                let too_big = || format!("has a range [{item}] with numbers too large");
                let (a, b) = (
                    lo.parse::<u64>().map_err(|_| too_big())?,
                    hi.parse::<u64>().map_err(|_| too_big())?,
                );
                if b < a {
                    return Err(format!("has a range [{item}] that runs backwards"));
                }
                if b - a >= MAX_HOSTS as u64 {
                    return Err(format!("expands to more than {MAX_HOSTS} hosts"));
                }
                let width = lo.len();
                out.extend((a..=b).map(|n| format!("{n:0width$}")));
            }
            None if digits(item) => out.push(item.to_string()),
            _ => {
                return Err(format!(
                    "has [{inner}], whose item {item:?} is neither a number nor a range"
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, DistError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|name| map.get(name).cloned())
    }

    fn error(vars: &[(&str, &str)]) -> String {
        match launch(vars) {
            Ok(l) => panic!("expected an error, got {l:?}"),
            Err(e) => e.to_string(),
        }
    }

    const TORCHRUN: &[(&str, &str)] = &[
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("MASTER_ADDR", "10.0.0.7"),
        ("MASTER_PORT", "29400"),
    ];

    const SLURM: &[(&str, &str)] = &[
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NODELIST", "gpu-a[07-08],gpu-b3"),
    ];

    #[test]
    fn torchrun_variables_give_rank_world_and_address() {
        let l = launch(TORCHRUN).unwrap().unwrap();
        assert_eq!(
            l,
            Launch {
                rank: 3,
                world: 4,
                local_rank: 1,
                master_addr: "10.0.0.7".into(),
                master_port: 29400,
                launcher: Launcher::Torchrun,
            }
        );
        assert_eq!(l.address(), "10.0.0.7:29400");
    }

    #[test]
    fn torchrun_port_defaults_to_29500() {
        let vars: Vec<_> = TORCHRUN
            .iter()
            .copied()
            .filter(|(k, _)| *k != "MASTER_PORT")
            .collect();
        assert_eq!(launch(&vars).unwrap().unwrap().master_port, 29500);
    }

    #[test]
    fn no_launcher_or_a_world_of_one_is_a_single_process() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(
            launch(&[("HOME", "/root"), ("LOCAL_RANK", "0")]).unwrap(),
            None
        );
        assert_eq!(launch(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap(), None);
        // torchrun with one process needs no address.
        assert_eq!(launch(&[("WORLD_SIZE", "1")]).unwrap(), None);
        assert_eq!(
            launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(),
            None
        );
        // A batch step without --ntasks: SLURM_PROCID but no SLURM_NTASKS.
        assert_eq!(
            launch(&[("SLURM_PROCID", "0"), ("SLURM_JOB_ID", "77")]).unwrap(),
            None
        );
        // Empty values count as unset.
        assert_eq!(launch(&[("RANK", " "), ("WORLD_SIZE", "")]).unwrap(), None);
    }

    #[test]
    fn slurm_variables_take_the_first_host_of_the_nodelist() {
        let l = launch(SLURM).unwrap().unwrap();
        assert_eq!(
            l,
            Launch {
                rank: 5,
                world: 8,
                local_rank: 1,
                master_addr: "gpu-a07".into(),
                master_port: DEFAULT_MASTER_PORT,
                launcher: Launcher::Slurm,
            }
        );
        for (list, first) in [
            ("node01", "node01"),
            ("node[01-04,07]", "node01"),
            ("gpu-a[1-2],gpu-b3", "gpu-a1"),
            ("n[001-003]-ib", "n001-ib"),
        ] {
            let mut vars = SLURM.to_vec();
            vars.retain(|(k, _)| *k != "SLURM_NODELIST");
            vars.push(("SLURM_NODELIST", list));
            assert_eq!(launch(&vars).unwrap().unwrap().master_addr, first, "{list}");
        }
    }

    #[test]
    fn slurm_prefers_master_addr_then_the_step_nodelist() {
        let mut vars = SLURM.to_vec();
        vars.push(("SLURM_STEP_NODELIST", "step[3-4]"));
        assert_eq!(launch(&vars).unwrap().unwrap().master_addr, "step3");
        vars.push(("MASTER_ADDR", "head.example"));
        vars.push(("MASTER_PORT", "31000"));
        let l = launch(&vars).unwrap().unwrap();
        assert_eq!(
            (l.master_addr.as_str(), l.master_port),
            ("head.example", 31000)
        );
        // Only the job's list: used too.
        let vars = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_NODELIST", "job7"),
        ];
        assert_eq!(launch(&vars).unwrap().unwrap().master_addr, "job7");
    }

    #[test]
    fn torchrun_variables_win_over_slurm() {
        let mut vars = SLURM.to_vec();
        vars.extend_from_slice(TORCHRUN);
        let l = launch(&vars).unwrap().unwrap();
        assert_eq!(l.launcher, Launcher::Torchrun);
        assert_eq!((l.rank, l.world, l.local_rank), (3, 4, 1));
        assert_eq!(l.master_addr, "10.0.0.7");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let with = |base: &[(&'static str, &'static str)], k: &'static str, v: &'static str| {
            let mut vars: Vec<_> = base.iter().copied().filter(|(n, _)| *n != k).collect();
            vars.push((k, v));
            vars
        };
        let e = error(&with(TORCHRUN, "RANK", "4"));
        assert!(
            e.contains("RANK=\"4\"") && e.contains("WORLD_SIZE=4"),
            "{e}"
        );
        let e = error(&with(TORCHRUN, "RANK", "three"));
        assert!(e.contains("RANK=\"three\" is not a whole number"), "{e}");
        let e = error(&with(TORCHRUN, "LOCAL_RANK", "9"));
        assert!(e.starts_with("LOCAL_RANK="), "{e}");
        let e = error(&with(TORCHRUN, "WORLD_SIZE", "0"));
        assert!(e.starts_with("WORLD_SIZE=\"0\""), "{e}");
        let e = error(&with(TORCHRUN, "MASTER_PORT", "70000"));
        assert!(
            e.starts_with("MASTER_PORT=\"70000\" is not a TCP port"),
            "{e}"
        );
        let no_addr: Vec<_> = TORCHRUN
            .iter()
            .copied()
            .filter(|(k, _)| *k != "MASTER_ADDR")
            .collect();
        let e = error(&no_addr);
        assert!(
            e.starts_with("MASTER_ADDR is not set") && e.contains("WORLD_SIZE=4"),
            "{e}"
        );
        let e = error(&[("RANK", "0")]);
        assert!(e.starts_with("WORLD_SIZE is not set"), "{e}");
        let e = error(&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
        assert!(e.starts_with("RANK is not set"), "{e}");

        let e = error(&with(SLURM, "SLURM_PROCID", "8"));
        assert!(
            e.contains("SLURM_PROCID=\"8\"") && e.contains("SLURM_NTASKS=8"),
            "{e}"
        );
        let e = error(&with(SLURM, "SLURM_NTASKS", "many"));
        assert!(e.starts_with("SLURM_NTASKS=\"many\""), "{e}");
        let no_local: Vec<_> = SLURM
            .iter()
            .copied()
            .filter(|(k, _)| *k != "SLURM_LOCALID")
            .collect();
        assert!(error(&no_local).starts_with("SLURM_LOCALID is not set"));
        let e = error(&with(SLURM, "SLURM_NODELIST", "gpu[01-"));
        assert!(e.starts_with("SLURM_NODELIST=\"gpu[01-\""), "{e}");
        let no_list: Vec<_> = SLURM
            .iter()
            .copied()
            .filter(|(k, _)| *k != "SLURM_NODELIST")
            .collect();
        let e = error(&no_list);
        assert!(
            e.starts_with("MASTER_ADDR is not set") && e.contains("SLURM_NODELIST"),
            "{e}"
        );
    }

    #[test]
    fn host_lists_expand_like_slurm() {
        let expand = |list: &str| expand_hostlist(list).unwrap();
        assert_eq!(expand("node01"), ["node01"]);
        assert_eq!(
            expand("node[01-04,07]"),
            ["node01", "node02", "node03", "node04", "node07"]
        );
        assert_eq!(expand("gpu-a[1-2],gpu-b3"), ["gpu-a1", "gpu-a2", "gpu-b3"]);
        assert_eq!(expand("n[001-003]-ib"), ["n001-ib", "n002-ib", "n003-ib"]);
        assert_eq!(expand("n[8-10]"), ["n8", "n9", "n10"]);
        assert_eq!(expand("r[1-2]n[1,3]"), ["r1n1", "r1n3", "r2n1", "r2n3"]);
        assert_eq!(expand("a, b[2]"), ["a", "b2"]);
    }

    #[test]
    fn malformed_host_lists_are_refused() {
        for list in [
            "",
            "node[01",
            "node01]",
            "n[[1]]",
            "n[a-b]",
            "n[3-1]",
            "a,,b",
            "n[1-]",
            "n[]",
            "n[1-99999999]",
        ] {
            assert!(expand_hostlist(list).is_err(), "{list:?} was accepted");
        }
    }
}
